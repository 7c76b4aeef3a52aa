"""`ps --dry-run deploy`: the plan of each type, with nothing changed and no engine needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def _config(project: Any, workdir: Path) -> None:
    project({"app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(workdir / "state"),
             "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": 18082}},
                          "api": {"context": ".", "slots": {"blue": 18091, "green": 18092}}},
             "router": {"include": str(workdir / "ups.conf")},
             "canary": {"steps": [10, 40, 70], "pause": "30s"}})


@pytest.mark.parametrize(("args", "expected"), [
    (["--type", "canary-auto", "--build-id", "abc123def456"],
     ["deploy abc123def456 into canary of web", "canary 10 %", "canary 40 %", "canary 70 %", "hold 30s"]),
    (["--type", "canary-manual", "--weight", "25", "--build-id", "abc123def456"], ["canary 25 %"]),
    (["--type", "stable", "--build-id", "abc123def456"], ["into stable of web"]),
    (["--type", "blue-green", "--build-id", "abc123def456", "--keep", "1m"],
     ["inactive color of api", "stop the old color after 60s"]),
    (["--type", "promote-canary"], ["deploy the canary's BUILD_ID into stable"]),
    (["--type", "rollback", "--to", "previous"], ["web, api to stable", "redeploy previous"]),
])
def test_dry_run_prints_the_plan_and_changes_nothing(ps: Any, project: Any, workdir: Path, args: list[str],
                                                     expected: list[str]) -> None:
    _config(project, workdir)
    done = ps("--json", "--dry-run", "deploy", *args, env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["dry_run"] is True
    plan = " | ".join(result["plan"])
    for words in expected:
        assert words in plan, plan
    assert "dry run 1." in done.stderr
    assert not (workdir / "ups.conf").exists()
    assert not (workdir / "state").exists()  # no lock taken, no history written


def test_dry_run_still_refuses_bad_input(ps: Any, project: Any, workdir: Path) -> None:
    _config(project, workdir)
    done = ps("--dry-run", "deploy", "--type", "blue-green", "--build-id", "x1", "--service", "web")
    assert done.returncode == 2
    assert "blue-green slot pair" in done.stderr


# ---------------------------------------------------------------- the plan matches what runs


def _recording_rollout(tmp: Path, args: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> \
        tuple[Any, list[tuple[Any, ...]]]:
    """A Rollout whose composed steps only record what they were asked (no engine, no nginx)."""
    from types import SimpleNamespace

    import yaml

    from pipeline_steps.config import load_config
    from pipeline_steps.deploy.rollout import DeployRequest, Rollout
    from pipeline_steps.output import Output
    from pipeline_steps.steps import traffic

    path = tmp / "ps.yaml"
    path.write_text(yaml.safe_dump({
        "app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(tmp / "state"),
        "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": 18082},
                             "url": "http://127.0.0.1:18080/web/"},
                     "api": {"context": ".", "slots": {"blue": 18091, "green": 18092},
                             "url": "http://127.0.0.1:18080/api/"}},
        "router": {"include": str(tmp / "ups.conf")}, "blue_green": {"watch": "20s"},
        "canary": {"steps": [10, 40], "pause": "30s", "check_interval": "1s", "probe": 200}}))
    rollout = Rollout(load_config(path), DeployRequest(**args), None, Output(json_mode=True))
    ops: list[tuple[Any, ...]] = []
    rollout.deploy = lambda slot, services, build, force=False: ops.append(("deploy", slot))
    rollout.gate = lambda slot, services, rollback_on_failure=False: ops.append(("gate", slot))
    rollout.set_weights = lambda pct, services: ops.append(("weights", pct))
    rollout.verify = lambda services, **kw: ops.append(("verify",))
    rollout.hold = lambda services, pause, checks, **kw: ops.append(("hold", pause))
    rollout.switch = lambda color, services: ops.append(("switch", color))
    rollout.stop_slot = lambda slot, services: ops.append(("stop", slot))
    rollout.prune = lambda services: ops.append(("prune",))
    rollout.not_serving = lambda slot, services: {}
    rollout.live_canary_percent = lambda services: {s.name: 0.0 for s in services}
    monkeypatch.setattr(traffic, "traffic_status", lambda config: SimpleNamespace(
        services=[SimpleNamespace(service="api", active="blue")]))
    return rollout, ops


@pytest.mark.parametrize(("args", "ops", "words"), [
    ({"type": "stable", "build_id": "b1"},
     [("deploy", "canary"), ("gate", "canary"), ("weights", 100), ("deploy", "stable"), ("gate", "stable"),
      ("weights", 0), ("verify",), ("prune",)],
     ["b1 into canary", "gate it", "traffic to the canary (100 %)", "b1 into stable, gate stable",
      "stable 100 %", "verify", "prune"]),
    ({"type": "canary-auto", "build_id": "b1"},
     [("deploy", "canary"), ("gate", "canary"), ("weights", 10), ("verify",), ("hold", 30.0),
      ("weights", 40), ("verify",), ("hold", 30.0)],
     ["into canary", "gate canary", "canary 10 %, verify, hold 30s checking health every 1s; the live "
      "split measured over 200 requests meanwhile", "canary 40 %, verify, hold 30s"]),
    ({"type": "blue-green", "build_id": "b1", "keep": 60.0},
     [("deploy", "green"), ("gate", "green"), ("switch", "green"), ("verify",), ("hold", 60.0),
      ("stop", "blue")],
     ["into the inactive color", "gate it", "switch to it, verify", "watch it 60s checking health every 1s",
      "stop the old color after 60s"]),
])
def test_the_plan_is_what_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: dict[str, Any],
                               ops: list[tuple[Any, ...]], words: list[str]) -> None:
    rollout, done = _recording_rollout(tmp_path, args, monkeypatch)
    plan = " | ".join(rollout.plan())
    getattr(rollout, "run_" + args["type"].replace("-", "_"))()
    assert done == ops
    at = -1
    for word in words:  # the plan names every step, in the order they run
        found = plan.find(word, at + 1)
        assert found > at, (word, plan)
        at = found


def test_a_probe_without_the_service_url_is_bad_input(ps: Any, project: Any, workdir: Path) -> None:
    project({"app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(workdir / "state"),
             "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": 18082}}},
             "router": {"include": str(workdir / "ups.conf"), "url": "http://127.0.0.1:18080/"},
             "canary": {"steps": [10], "probe": 100}})
    done = ps("--dry-run", "deploy", "--type", "canary-auto", "--build-id", "abc123def456")
    assert done.returncode == 2, done.stderr
    assert "services.web.url" in done.stderr and len(done.stderr.strip().splitlines()) == 1
