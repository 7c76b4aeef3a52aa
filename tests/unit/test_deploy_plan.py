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
    (["--type", "rollback", "--to", "previous"],
     ["web to stable", "api: back to the kept color", "redeploy previous"]),
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


# the plan matches what runs: tests/unit/test_deploy_types_fast.py (every type, against FakeOps)


def test_a_probe_without_the_service_url_is_bad_input(ps: Any, project: Any, workdir: Path) -> None:
    project({"app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(workdir / "state"),
             "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": 18082}}},
             "router": {"include": str(workdir / "ups.conf"), "url": "http://127.0.0.1:18080/"},
             "canary": {"steps": [10], "probe": 100}})
    done = ps("--dry-run", "deploy", "--type", "canary-auto", "--build-id", "abc123def456")
    assert done.returncode == 2, done.stderr
    assert "services.web.url" in done.stderr and len(done.stderr.strip().splitlines()) == 1
