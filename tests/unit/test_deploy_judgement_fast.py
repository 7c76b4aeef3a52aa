"""canary.analysis in canary-auto against FakeOps: the fake access log (100 req/s of virtual time,
split by the live weights, each slot answering as its build does), judged at every check of a hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.deploy.fake import FakeOps, turns_unhealthy
from pipeline_steps.deploy.history import HistoryLog
from pipeline_steps.deploy.rollout import DeployRequest, Rollout
from tests.unit.test_deploy_types_fast import NEW, OLD, Said, deploy, live_world, make_config, statuses

ANALYSIS = {"enabled": True, "max_error_rate_increase": 0.02, "max_p99_increase": "50ms",
            "min_requests": 50, "extend": "10s"}


def judged_world(tmp: Path, rollback: str = "immediate", **analysis: Any) -> FakeOps:
    config = make_config(tmp, canary={"steps": [10, 40, 70], "pause": "30s", "check_interval": "1s",
                                      "probe": 0, "rollback": rollback,
                                      "analysis": {**ANALYSIS, **analysis}})
    fake = live_world(config)
    fake.traffic = 100.0
    return fake


def weights_set(fake: FakeOps) -> list[float]:
    return [c[1] for c in fake.calls if c[0] == "weights"]


def test_the_config_carries_the_policy(tmp_path: Path) -> None:
    config = judged_world(tmp_path, rollback="gradual").config
    a = config.canary.analysis
    assert a.enabled and a.max_p99_increase == 0.05 and a.extend == 10.0 and a.inconclusive == "fail"
    assert config.canary.rollback == "gradual"
    assert config.router is not None and config.router.access_log_path() == str(tmp_path / "ps-access.json")


def test_five_percent_errors_roll_back_with_the_numbers(tmp_path: Path) -> None:
    fake = judged_world(tmp_path)
    fake.behaviour[NEW] = (0.05, 0.020)
    outcome, said, rollout = deploy(fake, "canary-auto", services=("web",), report=str(tmp_path / "r.json"))
    assert outcome.result == "rolled-back", outcome.message
    assert outcome.message.startswith("judgement at canary 10 %: web: canary 5xx ")
    assert "pp > 2 pp" in outcome.message and ": fail" in outcome.message
    assert weights_set(fake)[-1] == 0 and fake.weights["web"] == 0.0 and 40 not in weights_set(fake)
    held = outcome.judgements[-1]
    assert held["action"] == "rollback" and held["weight"] == 10
    web = held["judgements"][0]
    assert web["decision"] == "fail" and web["errors"]["decision"] == "fail"
    assert 0.02 < web["canary"]["error_rate"] < 0.09 and web["stable"]["errors"] == 0
    assert web["errors"]["p_value"] < web["errors"]["alpha"]
    assert any(line.startswith("-> judgement canary 10 % (1/3): rollback: web: canary 5xx")
               for line in said.lines)
    # the notification, the history and the report carry the numbers
    assert statuses(fake) == ["started", "rolled-back"]
    sent = fake.sent[-1][1]
    assert "canary 5xx" in sent["message"] and "vs stable 0.0 %" in sent["message"]
    entry = HistoryLog(fake.config.state_dir).read().entries[-1]
    assert entry.result == "rolled-back"
    assert entry.extra["judgements"][0]["judgements"][0]["decision"] == "fail"
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["judgements"] and data["judgements"][-1]["decision"] == "fail"
    page = (tmp_path / "r.html").read_text()
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="judgement"' in page
    assert 'class="canary" data-metric="error rate %"' in page
    assert 'class="stable" data-metric="p99 ms"' in page


def test_a_canary_100_ms_slower_rolls_back_on_latency(tmp_path: Path) -> None:
    fake = judged_world(tmp_path)
    fake.behaviour[NEW] = (0.0, 0.120)
    outcome, _, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.result == "rolled-back", outcome.message
    web = outcome.judgements[-1]["judgements"][0]
    assert web["latency"]["decision"] == "fail" and web["errors"]["decision"] == "pass"
    assert web["latency"]["difference"] > 50 and "canary p99 " in outcome.message
    assert fake.weights["web"] == 0.0


def test_an_equal_canary_passes_every_step(tmp_path: Path) -> None:
    fake = judged_world(tmp_path)
    fake.behaviour[NEW] = fake.behaviour[OLD] = (0.01, 0.020)
    outcome, said, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.result == "success", outcome.message
    assert [(j["weight"], j["action"]) for j in outcome.judgements] == [(10, "pass"), (40, "pass"),
                                                                         (70, "pass")]
    assert all(j["judgements"][0]["decision"] == "pass" for j in outcome.judgements)
    # every step judged only the requests of its own hold: 30 s at 100 req/s
    assert all(2900 <= j["judgements"][0]["canary"]["requests"] + j["judgements"][0]["stable"]["requests"]
               <= 3100 for j in outcome.judgements)
    assert "judged at 10 % (pass), 40 % (pass), 70 % (pass)" in outcome.message
    assert fake.weights["web"] == 70.0 and statuses(fake) == ["started", "success"]
    assert "judged at" in fake.sent[-1][1]["message"]


@pytest.mark.parametrize(("inconclusive", "result"), [("fail", "rolled-back"), ("pass", "success")])
def test_low_traffic_is_inconclusive_extended_then_policy(tmp_path: Path, inconclusive: str,
                                                          result: str) -> None:
    fake = judged_world(tmp_path, inconclusive=inconclusive)
    fake.traffic = 1.0  # 30 requests a hold: the canary never gets 50
    outcome, said, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.result == result, outcome.message
    first = outcome.judgements[0]
    assert first["extended"] == 10.0 and first["judgements"][0]["decision"] == "inconclusive"
    assert "too little traffic" in first["reason"] and f"{inconclusive} by policy" in first["reason"]
    assert any("judgement inconclusive at canary 10 %" in d and "extending the hold up to 10s" in d
               for d in outcome.decisions)
    if result == "success":
        assert [j["action"] for j in outcome.judgements] == ["pass"] * 3
    else:
        assert len(outcome.judgements) == 1 and fake.weights["web"] == 0.0


def test_gradual_rollback_steps_down_with_checks_at_each(tmp_path: Path) -> None:
    fake = judged_world(tmp_path, rollback="gradual")
    fake.behaviour[NEW] = (0.0, 0.020)
    rollout = Rollout(fake.config, DeployRequest(type="canary-auto", build_id=NEW, services=("web",)), None,
                      Said(), ops=fake)  # type: ignore[arg-type]
    plan = " | ".join(rollout.plan())
    assert "gradual rollback 70 % -> 40 % -> 10 % -> 0 %, each verified, health-checked and judged" in plan
    # the canary turns bad only at the last step: the judgement fails at 70 %
    original = fake.set_weights

    def set_weights(pct: float, names: Any) -> None:
        original(pct, names)
        if pct == 70:
            fake.behaviour[NEW] = (0.10, 0.020)

    fake.set_weights = set_weights  # type: ignore[method-assign]
    outcome = rollout.run()
    assert outcome.result == "rolled-back", outcome.message
    assert weights_set(fake) == [10, 40, 70, 40, 10, 0]
    assert "rolled back to stable 100 % gradually (40 % -> 10 % -> 0 %)" in outcome.message
    assert [j["step"] for j in outcome.judgements] == ["1/3", "2/3", "3/3", "rollback 40 %", "rollback 10 %"]
    assert [j["action"] for j in outcome.judgements[2:]] == ["rollback", "observed", "observed"]
    assert [c for c in fake.calls if c[0] == "verify"][-4:] == [("verify",)] * 4  # 70 and each step down


def test_a_failed_health_check_during_a_gradual_rollback_goes_at_once(tmp_path: Path) -> None:
    fake = judged_world(tmp_path, rollback="gradual")
    original = fake.set_weights

    def set_weights(pct: float, names: Any) -> None:
        original(pct, names)
        if pct == 40:  # the canary turns bad at 40 %: the judgement fails there
            fake.behaviour[NEW] = (0.10, 0.020)
        if pct == 10 and fake.calls.count(("weights", 10)) == 2:  # stepping down: it turns unhealthy
            fake.health[NEW] = turns_unhealthy(after=0.0)

    fake.set_weights = set_weights  # type: ignore[method-assign]
    outcome, said, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.result == "rolled-back", outcome.message
    assert weights_set(fake) == [10, 40, 10, 0]
    assert "turned unhealthy during the rollback at 10 %" in outcome.message
    assert "the gradual rollback went at once at 10 %" in outcome.message


def test_a_failed_health_check_is_immediate_even_with_gradual(tmp_path: Path) -> None:
    fake = judged_world(tmp_path, rollback="gradual")
    fake.health[NEW] = turns_unhealthy(after=40.0)  # healthy at the gate and through step 1
    outcome, _, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.result == "rolled-back" and "turned unhealthy during the hold" in outcome.message
    assert weights_set(fake) == [10, 40, 0]


def test_the_plan_is_what_runs_with_judgement(tmp_path: Path) -> None:
    fake = judged_world(tmp_path, rollback="gradual")
    said = Said()
    rollout = Rollout(fake.config, DeployRequest(type="canary-auto", build_id=NEW), None, said,  # type: ignore[arg-type]
                      ops=fake)
    planned = rollout.plan()
    assert sum("judging canary against stable" in line for line in planned) == 3
    ran: list[str] = [rollout.build_plan().steps[0].describe(rollout.state)]
    outcome = rollout.run(lambda i, step: ran.append(step.describe(rollout.state)))
    assert outcome.ok, outcome.message
    assert planned[1:-1] == ran


def test_judgement_off_reads_no_log(tmp_path: Path) -> None:
    fake = live_world(make_config(tmp_path))
    assert deploy(fake, "canary-auto")[0].ok
    assert ("access-log",) not in fake.calls


def test_the_judgement_plot_is_well_formed_and_escaped(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    from pipeline_steps.deploy.report import RunReport

    report = RunReport(app="shop", deploy_type="canary-auto")
    side = {"requests": 100, "errors": 5, "error_rate": 0.05, "p50_ms": 20.0, "p95_ms": 30.0, "p99_ms": 40.0}
    for look in range(3):
        report.judgement("1/3", 10, {"upstream": "<web>", "decision": "fail" if look == 2 else "pass",
                                     "reason": "canary 5xx 5.0 % & more", "canary": side,
                                     "stable": {**side, "errors": 0, "error_rate": 0.0}})
    page = report.html()
    assert "&lt;web&gt;, step 1/3 (canary 10 %): fail" in page and "<web>" not in page
    svg = page[page.index('<svg xmlns="http://www.w3.org/2000/svg" class="judgement"'):]
    svg = svg[:svg.index("</svg>") + len("</svg>")]
    root = ET.fromstring(svg)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert sorted((p.get("class"), p.get("data-metric")) for p in lines) == [
        ("canary", "error rate %"), ("canary", "p99 ms"), ("stable", "error rate %"), ("stable", "p99 ms")]
    assert all(len((p.get("points") or "").split()) == 3 for p in lines)  # a point per look
