"""Workers on the real engine: three consumer replicas replaced one at a time, each ready by a log line
written after it started before the next goes; a build that never gets ready puts every replaced
replica back on its previous container; scaling down removes the extra ones."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.health import parse_state_time
from testbed.ports import address, unique
from testbed.wait import until

pytestmark = pytest.mark.docker
REGISTRY = "ps-test.local"
SCRIPT = ('if [ "$MODE" = stuck ]; then echo consumer starting; exec sleep 600; fi; '
          'sleep 1; echo consumer ready; '
          'exec sleep 600')


@pytest.fixture
def workers(docker_client: Any, base_image: str, project: Any, workdir: Path) -> Iterator[dict[str, Any]]:
    app = unique("wrk")
    repo = f"{REGISTRY}/{app}/consumer"
    for build, mode in (("w1", "good"), ("w2", "good"), ("w3", "stuck")):
        ctx = workdir / f"ctx-{build}"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {base_image}\nENV MODE={mode} BUILD={build}\n"
                                        f"CMD [\"sh\", \"-c\", {json.dumps(SCRIPT)}]\n")
        image, _ = docker_client.images.build(path=str(ctx), rm=True)
        image.tag(repo, build)
    raw = {"app": app, "registry": REGISTRY, "state_dir": str(workdir / "state"),
           "hosts": [{"name": "local", "address": address()}],
           "services": {"consumer": {"kind": "worker", "replicas": 3, "ready": "^consumer ready$",
                                     "memory": "32m", "stop_timeout": "1s",
                                     "health": {"retries": 10, "interval": "500ms"}}}}
    project(raw)
    yield {"app": app, "raw": raw, "names": [f"{app}-consumer-{n}" for n in (1, 2, 3)]}
    for c in docker_client.containers.list(all=True, filters={"label": f"pipeline-steps.app={app}"}):
        c.remove(force=True)
    for build in ("w1", "w2", "w3"):
        try:
            docker_client.images.remove(f"{repo}:{build}")
        except Exception:
            pass


def _deploy(docker_ps: Any, build: str) -> Any:
    return docker_ps("--json", "deploy", "--type", "stable", "--build-id", build, timeout=240)


def _ready_ns(container: Any) -> int:
    """When the container logged `consumer ready` (the engine's timestamp)."""
    for line in container.logs(timestamps=True).decode().splitlines():
        stamp, _, message = line.partition(" ")
        if message == "consumer ready":
            found = parse_state_time(stamp)
            assert found is not None
            return found
    raise AssertionError(f"{container.name} never logged its ready line")


def test_replicas_one_at_a_time_each_ready_put_back_on_failure(workers: dict[str, Any], docker_ps: Any,
                                                                docker_client: Any, project: Any) -> None:
    first = _deploy(docker_ps, "w1")
    assert first.returncode == 0, first.stderr
    assert "workers: 3 of 3 replicas replaced, all ready" in first.stdout + first.stderr
    second = _deploy(docker_ps, "w2")
    assert second.returncode == 0, second.stderr
    replicas = [docker_client.containers.get(n) for n in workers["names"]]
    assert [c.labels["pipeline-steps.build-id"] for c in replicas] == ["w2"] * 3
    assert all(c.attrs["HostConfig"]["Memory"] == 32 * 1024 ** 2 for c in replicas)
    for before, after in zip(replicas, replicas[1:], strict=False):
        started = parse_state_time(after.attrs["State"]["StartedAt"])
        assert started is not None and started >= _ready_ns(before)  # the next one only after it was ready
    assert "ready: logged '^consumer ready$' after it started" in second.stdout + second.stderr
    same = _deploy(docker_ps, "w2")
    assert same.returncode == 0 and "workers: 0 of 3 replicas replaced" in same.stdout + same.stderr
    ids = [c.id for c in replicas]

    stuck = _deploy(docker_ps, "w3")  # replica 1 never logs its line: back on w2, 2 and 3 never touched
    assert stuck.returncode == 1, stuck.stderr
    out = json.loads(stuck.stdout.strip().splitlines()[-1])
    stuck_one = workers["names"][0]
    assert f"{stuck_one} is not ready after 5s: no line matching '^consumer ready$'" in out["message"]
    assert "got their previous container back" in out["message"]
    back = [docker_client.containers.get(n) for n in workers["names"]]
    assert [c.id for c in back] == ids and all(c.status == "running" for c in back)
    assert [c.labels["pipeline-steps.build-id"] for c in back] == ["w2"] * 3
    every = docker_client.containers.list(all=True, filters={"label": f"pipeline-steps.app={workers['app']}"})
    assert sorted(c.name for c in every) == workers["names"]  # no container left aside

    raw = workers["raw"]
    project({**raw, "services": {"consumer": {**raw["services"]["consumer"], "replicas": 2}}})
    down = _deploy(docker_ps, "w2")
    assert down.returncode == 0, down.stderr
    assert f"{workers['names'][2]} removed (replicas is 2)" in down.stdout + down.stderr
    every = docker_client.containers.list(all=True, filters={"label": f"pipeline-steps.app={workers['app']}"})
    assert sorted(c.name for c in every) == workers["names"][:2]


def _lines(proc: subprocess.Popen[str]) -> list[str]:
    """Every line `proc` writes to stdout and stderr, appended as it comes (reader threads)."""
    lines: list[str] = []

    def read(stream: Any) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=read, args=(stream,), daemon=True).start()
    return lines


def test_requires_waits_for_a_broker_that_turns_healthy_only_after_ps_waited(
        docker_client: Any, base_image: str, project: Any, workdir: Path, docker_ps: Any) -> None:
    """A six-container stack: postgres, redis and a broker (healthy only once the test, having seen ps
    wait for it, lets it be) beside two consumer replicas and a cache worker; the consumers start only
    once the broker is healthy."""
    app = unique("req")
    stand_ins = [docker_client.containers.run(
        base_image, ["nc", "-ll", "-p", "5432", "-e", "/bin/echo", "ok"], detach=True, name=f"{app}-postgres",
        labels={"pipeline-steps.test": "1"}),
        docker_client.containers.run(base_image, ["nc", "-ll", "-p", "6379", "-e", "/bin/echo", "ok"],
                                     detach=True, name=f"{app}-redis", labels={"pipeline-steps.test": "1"})]
    try:
        repo = f"{REGISTRY}/{app}"
        ctx = workdir / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {base_image}\nCMD [\"sh\", \"-c\", {json.dumps(SCRIPT)}]\n")
        image, _ = docker_client.images.build(path=str(ctx), rm=True)
        for service in ("consumer", "cache"):
            image.tag(f"{repo}/{service}", "r1")
        worker = {"kind": "worker", "ready": "^consumer ready$",
                  "health": {"retries": 40, "interval": "250ms"}}
        project({"app": app, "registry": REGISTRY, "state_dir": str(workdir / "state"),
                 "hosts": [{"name": "local", "address": address()}],
                 "services": {"consumer": {**worker, "replicas": 2, "requires": [f"{app}-broker"]},
                              "cache": {**worker, "requires": [f"{app}-redis", f"{app}-postgres"]}}})
        broker = docker_client.containers.run(
            base_image, ["sh", "-c", "exec sleep 600"], detach=True,
            name=f"{app}-broker", labels={"pipeline-steps.test": "1"},
            healthcheck={"test": ["CMD", "sh", "-c", "[ -e /tmp/up ]"], "interval": 250_000_000,
                         "retries": 1000})
        stand_ins.append(broker)
        waits = f"consumer waits for {app}-broker on host local ({app}-broker: Docker health starting)"
        deploy = docker_ps.popen("deploy", "--type", "stable", "--build-id", "r1")
        said = _lines(deploy)
        assert until(lambda: any(waits in line for line in said), 120), said  # ps waits for the broker...
        first_healthy = time.time_ns()
        assert broker.exec_run(["touch", "/tmp/up"]).exit_code == 0  # ...which may turn healthy only now
        deploy.wait(timeout=240)
        assert deploy.returncode == 0, said
        for n in (1, 2):
            consumer = docker_client.containers.get(f"{app}-consumer-{n}")
            started = parse_state_time(consumer.attrs["State"]["StartedAt"])
            assert started is not None and started > first_healthy
        everything = docker_client.containers.list(filters={"name": app})
        assert len(everything) == 6 and all(c.status == "running" for c in everything)
        broker.stop(timeout=0)
        refused = docker_ps("deploy", "--type", "stable", "--build-id", "r1", timeout=240)
        assert refused.returncode == 1
        assert f"ps: stable failure: consumer requires {app}-broker, not ready on host local after 10s: " \
               f"{app}-broker is exited" in refused.stderr
    finally:
        for c in docker_client.containers.list(all=True, filters={"label": f"pipeline-steps.app={app}"}):
            c.remove(force=True)
        for c in stand_ins:
            c.remove(force=True)
