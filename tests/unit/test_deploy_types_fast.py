"""The fast tier: every deployment type, failure path and kill point against FakeOps (no engine, no nginx).

The world (pipeline_steps/deploy/fake.py) checks issue 9's promise on every change: a slot carrying
traffic runs, and a running slot carrying traffic is never replaced. Virtual time: holds and watches
take no real time, so the whole file runs in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_steps.config import Config, load_config
from pipeline_steps.deploy.fake import FakeOps, Killed, broken, turns_unhealthy
from pipeline_steps.deploy.plan import Step
from pipeline_steps.deploy.rollout import DeployOutcome, DeployRequest, Rollout
from pipeline_steps.errors import BadInput, CheckFailed

OLD, NEW = "aaaa00000001", "bbbb00000002"


class Said:
    """The Output methods a Rollout uses, collected."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)

    warn = say

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def make_config(tmp: Path, **over: Any) -> Config:
    raw: dict[str, Any] = {
        "app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(tmp / "state"),
        "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": 18082},
                             "url": "http://127.0.0.1:18080/web/"},
                     "api": {"context": ".", "slots": {"blue": 18091, "green": 18092},
                             "url": "http://127.0.0.1:18080/api/"}},
        "router": {"include": str(tmp / "ups.conf")}, "blue_green": {"watch": "20s"},
        "canary": {"steps": [10, 40], "pause": "30s", "check_interval": "1s", "probe": 0}}
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp / "ps.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


def live_world(config: Config) -> FakeOps:
    """web: stable and canary run OLD, stable 100 %; api: blue runs OLD and is active."""
    fake = FakeOps(config)
    fake.run_slot("web", "stable", OLD)
    fake.run_slot("web", "canary", OLD)
    fake.weights["web"] = 0.0
    fake.run_slot("api", "blue", OLD)
    fake.active["api"] = "blue"
    fake.registry.add(NEW)
    return fake


def deploy(fake: FakeOps, type: str, between: Callable[[int, Step], None] | None = None,
           **kw: Any) -> tuple[DeployOutcome, Said, Rollout]:
    builds = type in ("stable", "canary-manual", "canary-auto", "blue-green")
    kw.setdefault("build_id", NEW if builds else None)
    said = Said()
    rollout = Rollout(fake.config, DeployRequest(type=type, **kw), None, said, ops=fake)  # type: ignore[arg-type]
    return rollout.run(between), said, rollout


def statuses(fake: FakeOps) -> list[str]:
    return [status for status, _ in fake.sent]


# ---------------------------------------------------------------- every type


def test_stable_goes_through_the_canary(config: Config) -> None:
    fake = live_world(config)
    outcome, said, _ = deploy(fake, "stable")
    assert outcome.result == "success", outcome.message
    assert fake.slot("web", "stable").build == fake.slot("web", "canary").build == NEW  # type: ignore[union-attr]
    assert fake.weights["web"] == 0.0 and not fake.violations
    assert outcome.message == f"stable runs {NEW} with 100 % of the traffic"
    assert statuses(fake) == ["started", "success"]
    assert ("prune",) in fake.calls


def test_a_first_stable_deploy_starts_from_nothing(config: Config) -> None:
    fake = FakeOps(config, registry={NEW})
    outcome, said, _ = deploy(fake, "stable", services=("web",))
    assert outcome.result == "success", outcome.message
    assert "the canary slot has no container" in said.text
    assert fake.weights["web"] == 0.0 and not fake.violations


def test_a_stopped_canary_gets_the_build_first(config: Config) -> None:
    fake = live_world(config)
    fake.slot("web", "canary").state = "exited"  # type: ignore[union-attr]
    outcome, said, _ = deploy(fake, "stable", services=("web",))
    assert outcome.result == "success"
    assert "the canary slot is exited" in " ".join(outcome.decisions)
    assert not fake.violations


def test_a_serving_canary_carries_the_traffic_while_a_broken_stable_is_replaced(config: Config) -> None:
    fake = live_world(config)
    fake.slot("web", "stable").state = "exited"  # type: ignore[union-attr]
    outcome, said, _ = deploy(fake, "stable", services=("web",))
    assert outcome.result == "success", outcome.message
    assert "and the canary serves" in " ".join(outcome.decisions)
    deploys = [c[1] for c in fake.calls if c[0] == "deploy"]
    assert deploys == ["stable", "canary"]  # the canary gets it last
    assert not fake.violations


def test_canary_manual_and_auto(config: Config) -> None:
    fake = live_world(config)
    outcome, _, _ = deploy(fake, "canary-manual", weight=25.0)
    assert outcome.result == "success" and fake.weights["web"] == 25.0
    assert outcome.message == f"canary {NEW} carries 25 %"
    outcome, said, _ = deploy(fake, "canary-auto")
    assert outcome.result == "success", outcome.message
    assert fake.weights["web"] == 40.0 and "the canary of web still carries traffic" in said.text
    assert any("step 2/2: canary 40 %" in d for d in outcome.decisions)
    assert statuses(fake) == ["started", "success"] * 2
    assert not fake.violations


def test_promote_then_rollback_to_previous(config: Config) -> None:
    fake = live_world(config)
    assert deploy(fake, "canary-auto")[0].ok
    outcome, _, _ = deploy(fake, "promote-canary")
    assert outcome.result == "success", outcome.message
    assert outcome.message == f"promoted: stable and canary run web {NEW}"
    assert fake.slot("web", "stable").build == NEW and fake.weights["web"] == 0.0  # type: ignore[union-attr]
    outcome, said, _ = deploy(fake, "rollback", to="previous", services=("web",))
    assert outcome.result == "success", outcome.message
    assert fake.slot("web", "stable").build == OLD  # type: ignore[union-attr]
    assert f"redeploying {OLD} into stable" in said.text and "after the rollback began" in said.text
    assert not fake.violations


def test_blue_green_keeps_or_stops_the_old_color(config: Config) -> None:
    fake = live_world(config)
    outcome, said, _ = deploy(fake, "blue-green")
    assert outcome.result == "success" and outcome.active == {"api": "green"}
    assert "blue stays running as backup" in said.text and fake.slot("api", "blue").state == "running"  # type: ignore[union-attr]
    outcome, said, _ = deploy(fake, "blue-green", build_id="cccc00000003", keep=60.0)
    assert outcome.result == "failure"  # the image is nowhere: deploy-env says no, nothing moved
    assert fake.active["api"] == "green"
    fake.registry.add("cccc00000003")
    outcome, said, _ = deploy(fake, "blue-green", build_id="cccc00000003", keep=60.0)
    assert outcome.result == "success", outcome.message
    assert "stopping the old color green: blue stayed healthy for 60s" in outcome.decisions
    assert fake.slot("api", "green").state == "exited" and fake.active["api"] == "blue"  # type: ignore[union-attr]
    assert not fake.violations


def test_a_keep_without_a_watch_is_watched_not_slept(tmp_path: Path) -> None:
    fake = live_world(make_config(tmp_path, blue_green={"watch": "0s"}))
    fake.health[NEW] = turns_unhealthy(after=5.0)
    outcome, _, _ = deploy(fake, "blue-green", keep=30.0)
    assert outcome.result == "rolled-back", outcome.message  # the keep period caught it
    assert fake.active["api"] == "blue" and fake.slot("api", "blue").state == "running"  # type: ignore[union-attr]


# ---------------------------------------------------------------- failure paths


def test_a_canary_failing_its_gate_is_rolled_back_before_any_step(config: Config) -> None:
    fake = live_world(config)
    fake.health[NEW] = broken
    outcome, _, _ = deploy(fake, "canary-auto")
    assert outcome.result == "rolled-back" and "not healthy after 30 tries" in outcome.message
    assert not any("step 1/" in d for d in outcome.decisions)
    assert fake.weights["web"] == 0.0 and statuses(fake) == ["started", "rolled-back"]


def test_verify_fails(config: Config) -> None:
    fake = live_world(config)
    fake.faults["verify"] = "web: canary 0 % live, 10 % expected"
    outcome, _, _ = deploy(fake, "canary-auto")
    assert outcome.result == "failure" and "ROLLBACK FAILED" in outcome.message  # the rollback's verify too
    assert outcome.exit_code == 1


def test_unhealthy_during_a_hold(config: Config) -> None:
    fake = live_world(config)
    fake.health[NEW] = turns_unhealthy(after=40.0)
    outcome, _, rollout = deploy(fake, "canary-auto")
    assert outcome.result == "rolled-back", outcome.message
    assert "web/canary turned unhealthy during the hold" in outcome.message
    assert fake.weights["web"] == 0.0 and outcome.rollback_seconds is not None
    assert outcome.rollback_seconds <= config.canary.check_interval
    assert fake.sent[-1][1]["failed_at"] == "canary 40 %"


def test_unhealthy_during_the_probe(tmp_path: Path) -> None:
    fake = live_world(make_config(tmp_path, canary={"probe": 200}))
    fake.probe_seconds = 20.0
    fake.health[NEW] = turns_unhealthy(after=5.0)
    outcome, _, _ = deploy(fake, "canary-manual", weight=25.0)
    assert outcome.result == "rolled-back" and "turned unhealthy during the probe" in outcome.message


def test_a_probe_that_measures_wrong_fails_the_hold(tmp_path: Path) -> None:
    fake = live_world(make_config(tmp_path, canary={"probe": 200}))
    fake.faults["probe"] = "web: 12 answers from outside the upstream"
    outcome, _, _ = deploy(fake, "canary-auto")
    assert outcome.result == "failure" and "outside the upstream" in outcome.message  # rollback verify too


def test_blue_green_watch_fails_and_switches_back(config: Config) -> None:
    fake = live_world(config)
    fake.health[NEW] = turns_unhealthy(after=3.0)
    outcome, _, _ = deploy(fake, "blue-green", keep=1.0)
    assert outcome.result == "rolled-back" and "green turned unhealthy during the watch" in outcome.message
    assert outcome.active == {"api": "blue"} and fake.slot("api", "blue").state == "running"  # type: ignore[union-attr]
    assert ("stop", "blue") not in fake.calls
    assert statuses(fake) == ["started", "rolled-back"]


def test_rollback_restarts_a_stopped_kept_color_or_refuses(config: Config) -> None:
    fake = live_world(config)
    assert deploy(fake, "blue-green", keep=0.0)[0].ok
    assert fake.slot("api", "blue").state == "exited"  # type: ignore[union-attr]
    outcome, said, _ = deploy(fake, "rollback", services=("api",))
    assert outcome.result == "success", outcome.message
    assert "blue is exited" in said.text and "restarted and gated healthy" in said.text
    assert fake.active["api"] == "blue"
    del fake.slots_[("api", "green")]
    outcome, said, _ = deploy(fake, "rollback", services=("api",))
    assert outcome.result == "failure" and "has no container" in outcome.message
    assert fake.active["api"] == "blue" and outcome.exit_code == 1


def test_rollback_to_an_unknown_build_is_bad_input_before_anything(config: Config) -> None:
    fake = live_world(config)
    with pytest.raises(BadInput, match="0123456789ab"):
        deploy(fake, "rollback", to="0123456789ab")
    assert fake.sent == [] and fake.calls == []
    assert not (Path(config.state_dir) / "history.jsonl").exists()


def test_a_held_lock_refuses_before_anything(config: Config) -> None:
    from pipeline_steps.deploy.lock import DeployLock

    fake = live_world(config)
    with DeployLock(config.state_dir, config.app, deploy_type="canary-auto").acquire():
        with pytest.raises(CheckFailed, match="running canary-auto"):
            deploy(fake, "stable")
    assert fake.sent == [] and fake.calls == []


def test_the_lease_of_another_pipeline_refuses(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_steps.deploy.lock import DeployLock

    for name in ("CI_PIPELINE_URL", "BUILD_URL"):
        monkeypatch.delenv(name, raising=False)
    DeployLock(config.state_dir, config.app, pipeline_url="https://ci.example/p/9").take_lease(ttl=600)
    fake = live_world(config)
    with pytest.raises(CheckFailed, match="leased to"):
        deploy(fake, "canary-auto")
    assert fake.sent == [] and fake.calls == []


def test_no_message_inside_a_lease(config: Config) -> None:
    fake = live_world(config)
    assert deploy(fake, "canary-auto", notify=False)[0].ok
    assert fake.sent == []


def test_traffic_only_needs_the_canary_on_the_build(config: Config) -> None:
    fake = live_world(config)
    outcome, _, _ = deploy(fake, "canary-auto", traffic_only=True)
    assert outcome.result == "failure" and "--traffic-only needs the canary deployed" in outcome.message
    assert fake.weights["web"] == 0.0 and not [c for c in fake.calls if c[0] == "deploy"]
    fake.run_slot("web", "canary", NEW)
    outcome, _, _ = deploy(fake, "canary-auto", traffic_only=True)
    assert outcome.result == "success" and not [c for c in fake.calls if c[0] == "deploy"]


def test_the_canary_alone_serving_is_not_replaced(config: Config) -> None:
    fake = live_world(config)
    fake.slot("web", "stable").state = "exited"  # type: ignore[union-attr]
    outcome, _, _ = deploy(fake, "canary-manual", weight=10.0)
    assert outcome.result == "failure" and "deploy --type stable first" in outcome.message
    assert fake.slot("web", "canary").build == OLD  # type: ignore[union-attr]


# ---------------------------------------------------------------- plan == run, kill points

CASES: list[tuple[str, dict[str, Any]]] = [
    ("stable", {}), ("canary-manual", {"weight": 25.0}), ("canary-auto", {}), ("promote-canary", {}),
    ("rollback", {"to": OLD, "services": ("web",)}), ("blue-green", {"keep": 30.0}), ("blue-green", {}),
]


def _primed(config: Config, type: str) -> FakeOps:
    fake = live_world(config)
    if type in ("promote-canary", "rollback"):
        fake.run_slot("web", "canary", NEW)
        fake.weights["web"] = 40.0
    if type == "rollback":
        fake.run_slot("web", "stable", NEW)
        fake.run_slot("api", "green", NEW)
        fake.active["api"] = "green"
    return fake


@pytest.mark.parametrize(("type", "kw"), [*CASES, ("rollback", {"to": OLD})])
def test_the_plan_is_what_runs(config: Config, type: str, kw: dict[str, Any]) -> None:
    fake = _primed(config, type)
    said = Said()
    request = DeployRequest(type=type, build_id=NEW if type not in ("promote-canary", "rollback") else None,
                            **kw)
    rollout = Rollout(config, request, None, said, ops=fake)  # type: ignore[arg-type]
    planned = rollout.plan()
    ran: list[str] = [rollout.build_plan().steps[0].describe(rollout.state)]
    outcome = rollout.run(lambda i, step: ran.append(step.describe(rollout.state)))
    assert outcome.ok, outcome.message
    assert planned[1:-1] == ran  # every planned step ran, in order, and nothing else


@pytest.mark.parametrize(("type", "kw", "ops"), [
    ("stable", {}, [("deploy", "canary"), ("gate", "canary"), ("weights", 100), ("deploy", "stable"),
                    ("gate", "stable"), ("weights", 0), ("verify",), ("prune",)]),
    ("canary-auto", {}, [("weights", 0), ("deploy", "canary"), ("gate", "canary"), ("weights", 10),
                         ("verify",), ("weights", 40), ("verify",)]),
    ("blue-green", {"keep": 60.0}, [("deploy", "green"), ("gate", "green"), ("switch", "green"), ("verify",),
                                    ("stop", "blue")]),
])
def test_the_operations_in_order(config: Config, type: str, kw: dict[str, Any],
                                 ops: list[tuple[Any, ...]]) -> None:
    fake = live_world(config)
    if type == "canary-auto":
        fake.weights["web"] = 40.0  # a canary with traffic is moved to stable first
    assert deploy(fake, type, **kw)[0].ok
    done = [c[:2] if c[0] in ("deploy", "gate", "weights", "switch", "stop") else c[:1] for c in fake.calls]
    assert done == ops


@pytest.mark.parametrize(("type", "kw"), CASES)
def test_a_kill_between_any_two_steps_converges_on_the_next_run(config: Config, type: str,
                                                                kw: dict[str, Any]) -> None:
    count = len(Rollout(config, DeployRequest(type=type, build_id=NEW, **kw), None, Said(),  # type: ignore[arg-type]
                        ops=_primed(config, type)).build_plan().steps)
    for kill_at in range(1, count):
        fake = _primed(config, type)

        def kill(number: int, step: Step, at: int = kill_at) -> None:
            if number == at:
                raise Killed(step.name)

        with pytest.raises(Killed):
            deploy(fake, type, kill, **kw)
        assert not fake.violations, (kill_at, fake.violations)
        outcome, said, _ = deploy(fake, type, **kw)
        assert outcome.ok, (kill_at, outcome.message)
        assert not fake.violations, (kill_at, fake.violations)
        if type in ("stable", "promote-canary"):
            assert fake.weights["web"] == 0.0 and fake.slot("web", "stable").build == NEW  # type: ignore[union-attr]
        elif type == "rollback":
            assert fake.weights["web"] == 0.0 and fake.slot("web", "stable").build == OLD  # type: ignore[union-attr]
        elif type == "blue-green":
            color = fake.active["api"]
            assert fake.slot("api", color).build == NEW and fake.serving("api", color)  # type: ignore[union-attr]
        else:
            assert fake.slot("web", "canary").build == NEW and fake.weights["web"] > 0  # type: ignore[union-attr]


def test_message_counts(config: Config) -> None:
    fake = live_world(config)
    deploy(fake, "canary-auto")
    assert statuses(fake) == ["started", "success"]
    fake.sent.clear()
    deploy(fake, "rollback", services=("web",))
    assert statuses(fake) == ["started", "success"]
    fake.sent.clear()
    fake.health["dddd00000004"] = broken
    fake.registry.add("dddd00000004")
    deploy(fake, "canary-auto", build_id="dddd00000004")
    assert statuses(fake) == ["started", "rolled-back"]


@pytest.mark.parametrize(("type", "kw", "words"), [
    ("stable", {}, [f"{NEW} into canary", "gate it", "traffic to the canary (100 %)", f"{NEW} into stable",
                    "gate stable", "stable 100 %", "verify", "prune"]),
    ("canary-auto", {}, ["into canary", "gate canary", "canary 10 %", "verify",
                         "hold 30s checking health every 1s", "canary 40 %", "verify", "hold 30s"]),
    ("blue-green", {"keep": 60.0}, ["into the inactive color", "gate it", "switch to it", "verify",
                                    "watch it 60s checking health every 1s", "stop the old color after 60s"]),
])
def test_the_plan_names_every_step_in_order(config: Config, type: str, kw: dict[str, Any],
                                            words: list[str]) -> None:
    rollout = Rollout(config, DeployRequest(type=type, build_id=NEW, **kw), None, Said(),  # type: ignore[arg-type]
                      ops=live_world(config))
    plan = " | ".join(rollout.plan())
    at = -1
    for word in words:
        found = plan.find(word, at + 1)
        assert found > at, (word, plan)
        at = found


def test_a_failing_weights_change_and_its_failing_rollback_say_both(config: Config) -> None:
    fake = live_world(config)
    fake.faults["set_weights"] = "nginx -t failed"
    outcome, _, _ = deploy(fake, "canary-auto")
    assert outcome.result == "failure" and outcome.exit_code == 1
    assert "setting canary 10 % failed: nginx -t failed; ROLLBACK FAILED" in outcome.message
    assert statuses(fake) == ["started", "failure"]


def test_blue_green_refuses_services_on_different_colors(tmp_path: Path) -> None:
    app2 = {"context": ".", "slots": {"blue": 18093, "green": 18094}}
    config = make_config(tmp_path, services={"app2": app2})
    fake = live_world(config)
    fake.run_slot("app2", "green", OLD)
    fake.active["app2"] = "green"
    outcome, _, _ = deploy(fake, "blue-green")
    assert outcome.result == "failure" and "disagree on the active color" in outcome.message
    assert not [c for c in fake.calls if c[0] == "deploy"]
