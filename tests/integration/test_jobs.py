"""One-off jobs on the real engine: `ps run` streams, passes the exit code through, kills at the timeout
and removes its container; a failing pre_traffic hook (a migration) stops a real deploy before any
weight moves, a passing one lets it through."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.integration import test_deploy_types as deploy_types

TrafficBed = Any
APP = deploy_types.APP
_include_weights = deploy_types._include_weights
app_builds = deploy_types.app_builds  # the fixtures of the deploy-types bed, shared
deploy_bed = deploy_types.deploy_bed

pytestmark = pytest.mark.docker
B1, B2 = "aaaa00000001", "bbbb00000002"


def _jobs_left(docker_client: Any) -> list[str]:
    return [c.name for c in docker_client.containers.list(
        all=True, filters={"label": [f"pipeline-steps.app={APP}", "pipeline-steps.job=1"]})]


def _set_hooks(bed: TrafficBed, **hooks: Any) -> None:
    raw = yaml.safe_load(bed.config_path.read_text())
    raw["hooks"] = hooks
    bed.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_ps_run_streams_passes_the_exit_code_and_cleans_up(deploy_bed: Callable[..., TrafficBed],
                                                         app_builds: Callable[..., str], docker_ps: Any,
                                                         docker_client: Any) -> None:
    deploy_bed()
    app_builds(B1)
    done = docker_ps("run", "web", "--build-id", B1, "--", "sh", "-c",
                     "echo migrating $PS_SLOT $BUILD_ID; echo to-stderr >&2; exit 3", timeout=120)
    assert done.returncode == 3, done.stderr
    assert f"migrating job {B1}" in done.stdout and "to-stderr" in done.stdout
    assert f"ps: job sh -c echo migrating $PS_SLOT $BUILD_ID; echo to-stderr >&2; exit 3 (web {B1} on host " \
           "local) exited 3 after" in done.stderr
    assert _jobs_left(docker_client) == []
    ok = docker_ps("--json", "run", "web", "--build-id", B1, "--", "true", timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1])["exit_code"] == 0
    slow = docker_ps("run", "web", "--build-id", B1, "--timeout", "1s", "--", "sleep", "30", timeout=120)
    assert slow.returncode == 124 and "timed out and was killed" in slow.stderr
    assert _jobs_left(docker_client) == []
    missing = docker_ps("run", "web", "--build-id", B1, "--host", "far", "--", "true")
    assert missing.returncode == 2 and "ps: unknown host 'far' (configured: local)" in missing.stderr


def test_a_failing_migration_stops_the_deploy_before_traffic_moves(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any,
        docker_client: Any) -> None:
    bed = deploy_bed()
    app_builds(B1)
    app_builds(B2)
    first = docker_ps("--json", "deploy", "--type", "stable", "--build-id", B1, timeout=240)
    assert first.returncode == 0, first.stderr
    assert _include_weights(bed) == [999, 1]
    _set_hooks(bed, pre_traffic=[{"service": "web", "command": ["sh", "-c",
                                                                "echo alembic: revision 42 failed; exit 4"]}])
    failed = docker_ps("--json", "deploy", "--type", "canary-manual", "--weight", "20", "--build-id", B2,
                       timeout=240)
    assert failed.returncode == 1, failed.stderr
    out = json.loads(failed.stdout.strip().splitlines()[-1])
    assert "pre_traffic hook failed" in out["message"] and "alembic: revision 42 failed" in out["message"]
    assert _include_weights(bed) == [999, 1]  # no weight moved
    assert _jobs_left(docker_client) == []
    _set_hooks(bed, pre_traffic=[{"service": "web", "command": "sh -c 'echo upgraded to 42'"}])
    passed = docker_ps("--json", "deploy", "--type", "canary-manual", "--weight", "20", "--build-id", B2,
                       timeout=240)
    assert passed.returncode == 0, passed.stderr
    assert "| upgraded to 42" in passed.stderr + passed.stdout
    assert _include_weights(bed) == [800, 200]
