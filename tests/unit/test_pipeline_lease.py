"""issue 15: the deploy lock leased to a CI pipeline across its stages (`ps pipeline begin|end`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.deploy.lock import DeployLock, LeaseRefused
from pipeline_steps.errors import BadInput

A = "https://gitlab.example.com/shop/-/pipelines/7"
B = "https://gitlab.example.com/shop/-/pipelines/8"
SHA = "0123456789abcdef0123456789abcdef01234567"


def lock(tmp_path: Path, pipeline: str | None, **kw: Any) -> DeployLock:
    return DeployLock(tmp_path / "state", "shop", pipeline_url=pipeline or "", **kw)


def test_lease_admits_its_pipeline_and_refuses_others(tmp_path: Path) -> None:
    lease, new, stale = lock(tmp_path, A, deploy_type="stable").take_lease(label="1007")
    assert new and stale is None and lease.pipeline_url == A and lease.deploy_type == "stable"
    with lock(tmp_path, A, deploy_type="set-weights").acquire():
        pass  # a later stage of the same pipeline
    for other in (B, None):  # another pipeline, a person at a shell
        with pytest.raises(LeaseRefused) as refused:
            lock(tmp_path, other).acquire()
        assert refused.value.exit_code == 1
        assert f"leased to pipeline {A} (#1007, stable)" in refused.value.message
    again, new, _ = lock(tmp_path, A).take_lease()
    assert not new and again.since == lease.since  # begin in every changing job: only renews
    assert lock(tmp_path, B).end_lease() is None  # not B's to end
    assert lock(tmp_path, A).end_lease() is not None
    with lock(tmp_path, B).acquire():
        pass


def test_stale_lease_is_taken_over(tmp_path: Path) -> None:
    first = lock(tmp_path, A)
    lease, _, _ = first.take_lease(ttl=60)
    first._write_lease(replace(lease, renewed=time.time() - 61))  # the pipeline died 61 s ago
    assert lock(tmp_path, None).status().lease is not None
    assert "stale lease" in lock(tmp_path, None).status().describe()
    with lock(tmp_path, None).acquire():
        pass  # an expired lease refuses nobody
    taken, new, stale = lock(tmp_path, B).take_lease()
    assert new and taken.pipeline_url == B and stale is not None and stale.pipeline_url == A


def test_lease_needs_a_pipeline(tmp_path: Path) -> None:
    with pytest.raises(BadInput):
        lock(tmp_path, None).take_lease()


def test_second_pipeline_waits_for_the_lease(tmp_path: Path) -> None:
    lock(tmp_path, A).take_lease()
    started = time.monotonic()
    with pytest.raises(LeaseRefused):
        lock(tmp_path, B).take_lease(wait=1.0)
    assert time.monotonic() - started >= 1.0


def ci_env(pipeline: str) -> dict[str, str]:
    return {"CI_COMMIT_SHA": SHA, "CI_COMMIT_BRANCH": "main", "CI_PIPELINE_URL": pipeline,
            "CI_PIPELINE_ID": pipeline.rsplit("/", 1)[-1], "CI_JOB_URL": f"{pipeline}/jobs/1"}


@pytest.fixture
def shop(project: Callable[..., Path]) -> Path:
    return project({"app": "shop", "registry": "127.0.0.1:5000", "state_dir": "state",
                    "services": {"web": {"context": ".", "slots": {"stable": 8081, "canary": 8082}}}})


def test_cli_begin_refuses_by_hand_steps_and_end_releases(ps: Any, shop: Path, httpserver: Any) -> None:
    posts: list[dict[str, Any]] = []

    def hook(request: Any) -> Any:
        from werkzeug.wrappers import Response

        posts.append(request.get_json(force=True))
        return Response("ok")

    httpserver.expect_request("/hooks/x", method="POST").respond_with_handler(hook)
    env = {**ci_env(A), "MATTERMOST_WEBHOOK_URL": httpserver.url_for("/hooks/x")}
    assert ps("pipeline", "begin", "--deploy-type", "stable").returncode == 2  # not in a pipeline
    for _ in range(2):  # every changing job begins; only the first one says `started`
        done = ps("pipeline", "begin", "--deploy-type", "stable", env=env)
        assert done.returncode == 0, done.stderr
    assert [p["props"]["pipeline_steps"]["status"] for p in posts] == ["started"]

    by_hand = ps("deploy-env", "--slot", "canary", "--build-id", "b1")
    assert by_hand.returncode == 1, by_hand.stderr
    assert f"leased to pipeline {A}" in by_hand.stderr and "ps lock release --force" in by_hand.stderr
    other = ps("set-weights", "--canary", "10", env=ci_env(B))
    assert other.returncode == 1 and f"leased to pipeline {A}" in other.stderr
    status = json.loads(ps("--json", "pipeline", "status").stdout)
    assert status["lease"]["pipeline_url"] == A and not status["lease"]["expired"]
    assert ps("lock", "release").returncode == 1

    done = ps("--json", "pipeline", "end", "--status", "failure", env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["result"] == "failure" and result["deploy_type"] == "stable" and not result["recorded"]
    assert [p["props"]["pipeline_steps"]["status"] for p in posts] == ["started", "failure"]
    assert f"{A}/jobs/1" in json.dumps(posts[-1])  # the log link
    assert json.loads(ps("--json", "pipeline", "status").stdout)["lease"] is None


def test_cli_lock_release_force_ends_a_lease(ps: Any, shop: Path) -> None:
    assert ps("pipeline", "begin", "--deploy-type", "canary-auto", env=ci_env(A)).returncode == 0
    done = ps("--json", "lock", "release", "--force")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["action"] == "ended-lease"
    assert ps("pipeline", "begin", "--deploy-type", "canary-auto", env=ci_env(B)).returncode == 0
