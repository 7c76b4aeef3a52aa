"""The post-deploy watch (`watch:`) against FakeOps: CPU, memory and error lines per build over virtual
time, in canary-auto's holds (canary against stable), after promote-canary (against the previous stable's
figures, failure: the previous build back through the canary) and after blue-green's switch (failure:
switch back)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.analysis.watch import Side, SlotFigures, judge_watch
from pipeline_steps.config.objects import WatchPolicy
from pipeline_steps.deploy.fake import FakeOps, turns_unhealthy
from pipeline_steps.deploy.history import HistoryLog
from pipeline_steps.deploy.rollout import DeployRequest, Rollout
from tests.unit.test_deploy_types_fast import NEW, OLD, Said, deploy, live_world, make_config, statuses

WATCH = {"cpu_max_percent": 80, "memory_max_percent": 75, "error_pattern": "ERROR|Exception",
         "max_error_lines_increase": 5, "interval": "5s"}


def watched_world(tmp: Path, rollback: str = "immediate", **watch: Any) -> FakeOps:
    config = make_config(tmp, canary={"steps": [10, 40], "pause": "30s", "check_interval": "1s", "probe": 0,
                                      "rollback": rollback}, watch={**WATCH, **watch})
    return live_world(config)


def weights_set(fake: FakeOps) -> list[float]:
    return [c[1] for c in fake.calls if c[0] == "weights"]


def test_the_config_carries_the_watch(tmp_path: Path) -> None:
    w = watched_world(tmp_path, duration="1m").config.watch
    assert w.enabled and w.cpu_max_percent == 80 and w.memory_max_percent == 75
    assert w.error_pattern == "ERROR|Exception" and w.max_error_lines_increase == 5
    assert w.duration == 60.0 and w.interval == 5.0
    (tmp_path / "x").mkdir()
    assert not make_config(tmp_path / "x").watch.enabled  # no section: no watch


@pytest.mark.parametrize("bad", [{"cpu_max_percent": 0}, {"memory_max_percent": 120},
                                 {"max_error_lines_increase": -1}, {"interval": "0s"},
                                 {"error_pattern": "ERROR("}, {"duration": "8d"}, {"every": "1s"}])
def test_bad_watch_settings_are_refused_with_their_path(tmp_path: Path, bad: dict[str, Any]) -> None:
    from pipeline_steps.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, watch=bad)
    assert f"watch.{next(iter(bad))}" in caught.value.message


def test_a_canary_logging_errors_with_green_health_is_rolled_back(tmp_path: Path) -> None:
    fake = watched_world(tmp_path)
    fake.error_rate[NEW] = 30.0  # lines per minute; stable logs none, health stays green
    outcome, said, _ = deploy(fake, "canary-auto", services=("web",), report=str(tmp_path / "r.json"))
    assert outcome.result == "rolled-back", outcome.message
    assert outcome.message.startswith("judgement at canary 10 %: web: watch: canary ")
    assert "error lines" in outcome.message and "vs stable 0 (0.0/min)" in outcome.message
    assert "> +5/min: fail" in outcome.message and "rolled back to stable 100 %" in outcome.message
    assert weights_set(fake) == [10, 0] and fake.weights["web"] == 0.0
    held = outcome.judgements[-1]
    watch = held["judgements"][0]
    assert held["action"] == "rollback" and watch["kind"] == "watch" and watch["decision"] == "fail"
    assert watch["new"]["error_lines"] > 5 and watch["old"]["error_lines"] == 0
    assert any(line.startswith("-> judgement canary 10 % (1/2): rollback: web: watch:")
               for line in said.lines)
    # the numbers in the notification, the history and the report
    assert statuses(fake) == ["started", "rolled-back"] and "error lines" in fake.sent[-1][1]["message"]
    entry = HistoryLog(fake.config.state_dir).read().entries[-1]
    assert entry.extra["judgements"][0]["judgements"][0]["kind"] == "watch"
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["extra"]["watch"][-1]["decision"] == "fail"
    assert "watch: canary" in (tmp_path / "r.html").read_text()


def test_errors_as_many_as_stables_pass(tmp_path: Path) -> None:
    fake = watched_world(tmp_path)
    fake.error_rate[NEW] = fake.error_rate[OLD] = 30.0  # both log 30 a minute: no increase
    outcome, _, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.result == "success", outcome.message
    assert [j["action"] for j in outcome.judgements] == ["pass", "pass"]
    assert "judged at 10 % (pass), 40 % (pass)" in outcome.message


def test_a_canary_over_its_memory_limit_is_rolled_back_with_stable_beside(tmp_path: Path) -> None:
    fake = watched_world(tmp_path)
    fake.usage[NEW] = (10.0, 91.5)
    fake.usage[OLD] = (8.0, 12.0)
    outcome, _, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.result == "rolled-back", outcome.message
    assert "canary memory 91.5 % of its limit (stable 12.0 %) > 75 %" in outcome.message
    assert fake.weights["web"] == 0.0


def test_a_canary_over_its_cpu_limit_rolls_back_gradually_with_the_policy(tmp_path: Path) -> None:
    fake = watched_world(tmp_path, rollback="gradual")
    original = fake.set_weights

    def set_weights(pct: float, names: Any) -> None:
        original(pct, names)
        if pct == 40:  # the canary burns CPU once it gets 40 %
            fake.usage[NEW] = (95.0, 10.0)

    fake.set_weights = set_weights  # type: ignore[method-assign]
    outcome, _, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.result == "rolled-back", outcome.message
    assert "canary CPU 95.0 % of its limit (stable 5.0 %) > 80 %" in outcome.message
    assert weights_set(fake) == [10, 40, 10, 0]
    assert "rolled back to stable 100 % gradually (10 % -> 0 %)" in outcome.message


def test_an_old_error_line_never_counts(tmp_path: Path) -> None:
    """The canary's build logged errors for a long time before the hold: only the hold's lines count."""
    fake = watched_world(tmp_path)
    fake.error_rate[NEW] = 3.0  # 3 a minute: below +5 over stable's 0
    outcome, _, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.ok, outcome.message
    watch = outcome.judgements[-1]["judgements"][0]
    assert watch["new"]["error_lines"] <= 2  # 30 s of the second hold, not the deploy's whole time


def test_health_failure_stays_immediate_with_the_watch(tmp_path: Path) -> None:
    fake = watched_world(tmp_path, rollback="gradual")
    fake.health[NEW] = turns_unhealthy(after=35.0)
    outcome, _, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.result == "rolled-back" and "turned unhealthy during the hold" in outcome.message
    assert weights_set(fake) == [10, 40, 0]


def test_promote_watch_puts_the_previous_stable_build_back(tmp_path: Path) -> None:
    fake = watched_world(tmp_path, duration="30s")
    fake.run_slot("web", "canary", NEW)
    fake.error_rate[NEW] = 40.0
    outcome, said, _ = deploy(fake, "promote-canary", services=("web",))
    assert outcome.result == "rolled-back", outcome.message
    assert outcome.message.startswith("watch of stable: web: watch: stable ")
    assert "vs before (stable) 0 (0.0/min)" in outcome.message
    assert f"rolled back to the previous stable build (web {OLD}, through the canary slot)" in outcome.message
    assert fake.slot("web", "stable").build == OLD  # type: ignore[union-attr]
    assert fake.slot("web", "canary").build == OLD  # type: ignore[union-attr]
    assert fake.weights["web"] == 0.0 and not fake.violations
    assert statuses(fake) == ["started", "rolled-back"]
    assert outcome.judgements[-1]["step"] == "stable watch" and outcome.judgements[-1]["action"] == "rollback"
    assert "web/stable before the change: CPU 5 %, memory 10 %, 0 error lines/min" in said.text


def test_a_healthy_promote_watch_passes(tmp_path: Path) -> None:
    fake = watched_world(tmp_path, duration="30s")
    fake.run_slot("web", "canary", NEW)
    outcome, said, _ = deploy(fake, "promote-canary", services=("web",))
    assert outcome.ok, outcome.message
    assert fake.slot("web", "stable").build == NEW  # type: ignore[union-attr]
    assert outcome.judgements[-1]["action"] == "pass" and outcome.judgements[-1]["looks"] == 6
    assert outcome.message.startswith(f"promoted: stable and canary run web {NEW}")


def test_blue_green_watch_switches_back_on_memory(tmp_path: Path) -> None:
    fake = watched_world(tmp_path)
    fake.usage[NEW] = (10.0, 80.0)
    outcome, said, _ = deploy(fake, "blue-green", services=("api",))
    assert outcome.result == "rolled-back", outcome.message
    assert "watch of green: api: watch: green memory 80.0 % of its limit (before (blue) 10.0 %) > 75 %" \
        in outcome.message
    assert "switched back to blue" in outcome.message and fake.active["api"] == "blue"


def test_blue_green_watch_passes_against_the_old_colors_rate(tmp_path: Path) -> None:
    fake = watched_world(tmp_path)
    fake.error_rate[NEW] = fake.error_rate[OLD] = 20.0
    fake.clock += 600  # blue has run (and logged) for 10 minutes: its rate from before the switch
    outcome, _, _ = deploy(fake, "blue-green", services=("api",))
    assert outcome.ok, outcome.message
    assert fake.active["api"] == "green"
    look = outcome.judgements[-1]["judgements"][0]
    assert look["old"]["error_lines_per_minute"] == pytest.approx(20.0, abs=1)


@pytest.mark.parametrize(("kind", "services", "extra"), [
    ("canary-auto", ("web",), {}), ("promote-canary", ("web",), {"duration": "20s"}),
    ("blue-green", ("api",), {})])
def test_the_plan_is_what_runs_with_the_watch(tmp_path: Path, kind: str, services: tuple[str, ...],
                                              extra: dict[str, Any]) -> None:
    fake = watched_world(tmp_path, **extra)
    if kind == "promote-canary":
        fake.run_slot("web", "canary", NEW)
    request = DeployRequest(type=kind, build_id=None if kind == "promote-canary" else NEW, services=services)
    rollout = Rollout(fake.config, request, None, Said(), ops=fake)  # type: ignore[arg-type]
    planned = rollout.plan()
    watching = [line for line in planned if "CPU <= 80 % of its limit" in line]
    assert watching and all("memory <= 75 %" in line and "/ERROR|Exception/" in line for line in watching)
    ran: list[str] = [rollout.build_plan().steps[0].describe(rollout.state)]
    outcome = rollout.run(lambda i, step: ran.append(step.describe(rollout.state)))
    assert outcome.ok, outcome.message
    assert planned[1:-1] == ran


def test_no_watch_section_keeps_promote_unwatched(tmp_path: Path) -> None:
    fake = live_world(make_config(tmp_path))
    fake.run_slot("web", "canary", NEW)
    rollout = Rollout(fake.config, DeployRequest(type="promote-canary"), None, Said(), ops=fake)  # type: ignore[arg-type]
    assert not any("watch" in line for line in rollout.plan())
    assert rollout.run().ok and not [c for c in fake.calls if c[0] == "watch"]


def test_judge_watch_names_every_failed_check() -> None:
    policy = WatchPolicy(cpu_max_percent=50, memory_max_percent=50, error_pattern="ERROR",
                         max_error_lines_increase=2)
    figures = [SlotFigures("canary", "a", "c1", 60.0, 20.0, 1000, 10, 2.0),
               SlotFigures("canary", "b", "c2", 10.0, 70.0, 2000, 2, 0.5)]
    new = Side.of("canary", figures)
    assert (new.cpu_percent, new.memory_percent, new.error_lines, new.per_minute) == (60.0, 70.0, 12, 7.0)
    old = Side.of("stable", [SlotFigures("stable", "a", "s1", 5.0, 10.0, 900, 3, 3.0)])
    verdict = judge_watch(policy, "web", new, old)
    assert verdict.decision == "fail"
    assert verdict.reason == ("watch: canary CPU 60.0 % of its limit (stable 5.0 %) > 50 %; canary memory "
                              "70.0 % of its limit (stable 10.0 %) > 50 %; canary 12 error lines (7.0/min) "
                              "vs stable 3 (1.0/min): +6.0/min > +2/min: fail")
    unlimited = Side.of("canary", [SlotFigures("canary", "a", "c1", None, None, 1000, 0, 0.1)])
    verdict = judge_watch(policy, "web", unlimited, None)
    assert verdict.decision == "pass" and "(no memory limit: not checked)" in verdict.reason
    assert "CPU n/a" in verdict.reason


def test_an_engine_that_does_not_answer_the_watch_rolls_back(tmp_path: Path) -> None:
    """Unwatched is not healthy: figures that cannot be read fail the watch (traffic back to stable)."""
    fake = watched_world(tmp_path)
    fake.faults["watch"] = "Docker engine of host local is unreachable"
    outcome, _, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.result == "rolled-back", outcome.message
    assert "watch: cannot read the containers' figures: Docker engine of host local" in outcome.message
    assert fake.weights["web"] == 0.0


def test_the_watch_beside_the_access_log_judgement(tmp_path: Path) -> None:
    """Both on: each look judges the access log and runs the watch; either failing rolls back, a pass
    carries both lines."""
    from tests.unit.test_deploy_judgement_fast import ANALYSIS

    config = make_config(tmp_path, canary={"steps": [10, 40], "pause": "30s", "check_interval": "1s",
                                           "probe": 0, "analysis": ANALYSIS}, watch=WATCH)
    fake = live_world(config)
    fake.traffic = 100.0
    outcome, _, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.ok, outcome.message
    kinds = [j.get("kind", "access log") for j in outcome.judgements[0]["judgements"]]
    assert kinds == ["access log", "watch"]
    assert "web: canary 5xx" in outcome.judgements[0]["reason"] and "web: watch: canary CPU" in \
        outcome.judgements[0]["reason"]
    fake = live_world(config)
    fake.traffic = 100.0
    fake.usage[NEW] = (10.0, 90.0)  # the access log sees nothing wrong; the memory does
    outcome, _, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.result == "rolled-back" and "canary memory 90.0 %" in outcome.message
