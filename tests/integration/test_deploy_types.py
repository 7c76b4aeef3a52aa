"""`ps deploy --type …` against the real engine, nginx and sample app, under a bounded load."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed import images
from testbed.load import LoadGenerator
from testbed.ports import address, unique
from testbed.wait import pause_until, until

TrafficBed = Any
APP = unique("shop")  # unique per run: parallel runs on one engine never share containers
REGISTRY = "ps-test.local"


@pytest.fixture(scope="module")
def app_builds(docker_client: Any, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> \
        Iterator[Callable[..., str]]:
    """`build("b1")` tags a sample-app image ps-test.local/shop/<service>:b1; fail_after= bakes FAIL_AFTER."""
    made: dict[tuple[str, str, int | None], str] = {}

    def build(build_id: str, service: str = "web", fail_after: int | None = None) -> str:
        key = (build_id, service, fail_after)
        if key in made:
            return made[key]
        ctx = images.copy_sample_app(tmp_path_factory.mktemp("ctx"))
        if fail_after is not None:
            with open(ctx / "Dockerfile", "a") as fh:
                fh.write(f"\nENV FAIL_AFTER={fail_after}\n")
        tag = f"{REGISTRY}/{APP}/{service}:{build_id}"
        docker_client.images.build(path=str(ctx), tag=tag, rm=True,
                                   buildargs={"BUILD_ID": build_id, "BASE_IMAGE": base_image})
        made[key] = tag
        return tag

    yield build
    images.remove_images(docker_client, repo_prefix=f"{REGISTRY}/{APP}/")


@pytest.fixture
def deploy_bed(traffic_bed: Callable[..., TrafficBed], engine: Any, docker_client: Any,
               workdir: Path) -> Iterator[Callable[..., TrafficBed]]:
    """A canary (or blue-green) bed whose ps.yaml deploys through the bed's Docker engine."""
    beds: list[TrafficBed] = []

    def make(kinds: dict[str, str] | None = None, retries: int = 40, watch: str = "1s",
             **canary: Any) -> TrafficBed:
        kinds = kinds or {"web": "canary"}
        bed = traffic_bed(kinds, app=APP, hosts=[{"name": "local", "docker": engine.base_url,
                                                   "address": address()}])
        raw = bed.raw
        raw["registry"] = REGISTRY
        for name, svc in raw["services"].items():
            svc["health"] = {"path": "/health", "interval": "200ms", "timeout": "2s", "retries": retries}
            svc["url"] = bed.url(name)
        raw["canary"] = {"steps": [10, 40, 70], "pause": "1s", "check_interval": "200ms", "probe": 0,
                         **canary}
        raw["blue_green"] = {"watch": watch}
        bed.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        beds.append(bed)
        return bed

    yield make
    for c in docker_client.containers.list(all=True, filters={"label": f"pipeline-steps.app={APP}"}):
        c.remove(force=True)


def _deploy(ps: Any, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return ps("--json", "deploy", *args, env=env, timeout=240)


def _result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(done.stdout.strip().splitlines()[-1])


def _include_weights(bed: TrafficBed) -> list[int]:
    from pipeline_steps.upstreams import UpstreamFile

    ups = UpstreamFile.load(bed.nginx.include).upstreams()[f"{APP}_web"]
    return [s.weight for s in ups.servers]


def _nginx_t(bed: TrafficBed) -> subprocess.CompletedProcess[str]:
    return subprocess.run(bed.nginx.command("-t"), capture_output=True, text=True, check=False)


def test_canary_auto_promote_rollback_drop_no_request(deploy_bed: Callable[..., TrafficBed],
                                                      app_builds: Callable[..., str], docker_ps: Any,
                                                      tmp_path: Path) -> None:
    bed = deploy_bed(probe=300)
    app_builds("aaaa00000001")
    app_builds("bbbb00000002")
    first = _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001")
    assert first.returncode == 0, first.stderr
    assert _include_weights(bed) == [999, 1]
    url = bed.url("web")
    report = tmp_path / "canary.json"
    with LoadGenerator(url, rate=100, max_seconds=120, timeout=10) as load:
        auto = _deploy(docker_ps, "--type", "canary-auto", "--build-id", "bbbb00000002",
                       "--report", str(report))
        promote = _deploy(docker_ps, "--type", "promote-canary")
        rollback = _deploy(docker_ps, "--type", "rollback")
    result = load.report()
    print(f"load during canary-auto, promote-canary, rollback: {result.summary()}")
    assert auto.returncode == 0, auto.stderr + auto.stdout
    assert promote.returncode == 0, promote.stderr + promote.stdout
    assert rollback.returncode == 0, rollback.stderr + rollback.stdout
    assert result.sent > 100 and result.failed == 0, result.errors[:5]
    out = _result(auto)
    assert out["result"] == "success" and out["weights"] == {"web": 70}
    assert any("step 2/3: canary 40 %" in d for d in out["decisions"])
    assert "measured" in auto.stderr or "answered" in auto.stderr  # live split measured at each step
    assert report.exists() and report.with_suffix(".html").read_text().count("<svg") == 1
    # promote: stable and canary run the same BUILD_ID, stable carries the traffic
    status = _result(docker_ps("--json", "status"))
    builds = {(s["service"], s["slot"]): s["build_id"] for s in status["slots"]}
    assert builds[("web", "stable")] == builds[("web", "canary")] == "bbbb00000002"
    assert _include_weights(bed) == [999, 1]
    history = docker_ps("--json", "history")
    assert history.returncode == 0
    types = [e["type"] for e in _result(history)["entries"]]
    assert types[-4:] == ["stable", "canary-auto", "promote-canary", "rollback"]


def test_canary_auto_rolls_back_a_canary_that_turns_unhealthy(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any,
        httpserver: Any) -> None:
    bed = deploy_bed(steps=[10, 40, 70], pause="3s")
    app_builds("aaaa00000001")
    app_builds("dddd00000bad", fail_after=15)  # health fails once the canary served 15 requests
    messages: list[dict[str, Any]] = []

    def hook(request: Any) -> Any:
        from werkzeug import Response

        messages.append(request.get_json())
        return Response("ok", 200)

    httpserver.expect_request("/hooks/secret-token", method="POST").respond_with_handler(hook)
    env = {"MATTERMOST_WEBHOOK_URL": httpserver.url_for("/hooks/secret-token")}
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001", "--no-notify").returncode == 0
    with LoadGenerator(bed.url("web"), rate=60, max_seconds=60, timeout=10) as load:
        done = _deploy(docker_ps, "--type", "canary-auto", "--build-id", "dddd00000bad", env=env)
    print(f"load during the failed canary: {load.report().summary()}")
    assert done.returncode == 1, done.stderr
    out = _result(done)
    assert out["result"] == "rolled-back"
    assert "unhealthy" in out["message"]
    assert out["rollback_seconds"] is not None and out["rollback_seconds"] < 0.2 + 1.0
    assert _include_weights(bed) == [999, 1]
    verify = docker_ps("verify-weights", "--expect-canary", "0", "--probe", "200", "--url", bed.url("web"))
    assert verify.returncode == 0, verify.stderr
    statuses = [m["attachments"][0].get("title", "") + m.get("text", "") for m in messages]
    assert len(messages) == 2, statuses  # started, rolled-back: one per state change, never per poll
    assert "rolled" in json.dumps(messages[-1]).lower()
    assert "secret-token" not in done.stdout + done.stderr


def test_canary_failing_its_gate_is_rolled_back_before_any_step(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any) -> None:
    bed = deploy_bed(retries=5)
    app_builds("aaaa00000001")
    app_builds("eeee0000dead", fail_after=0)  # unhealthy from its first answer
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001").returncode == 0
    done = _deploy(docker_ps, "--type", "canary-auto", "--build-id", "eeee0000dead")
    assert done.returncode == 1, done.stderr
    out = _result(done)
    assert out["result"] == "rolled-back"
    assert "not healthy after 5 tries" in out["message"]
    assert not any("step 1/3" in d for d in out["decisions"])  # no canary step was ever taken
    assert _include_weights(bed) == [999, 1]


def test_blue_green_switches_without_dropping_requests(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any) -> None:
    bed = deploy_bed({"web": "blue-green"})
    app_builds("aaaa00000001")
    app_builds("bbbb00000002")
    first = _deploy(docker_ps, "--type", "blue-green", "--build-id", "aaaa00000001")
    assert first.returncode == 0, first.stderr
    one = _result(first)["active"]["web"]
    other = "green" if one == "blue" else "blue"
    with LoadGenerator(bed.url("web"), rate=100, max_seconds=60, timeout=10) as load:
        second = _deploy(docker_ps, "--type", "blue-green", "--build-id", "bbbb00000002")
        back = _deploy(docker_ps, "--type", "rollback")
    result = load.report()
    print(f"load during blue-green and its rollback: {result.summary()}")
    assert second.returncode == 0, second.stderr
    assert _result(second)["active"] == {"web": other}
    assert "stays running as backup" in second.stderr
    assert back.returncode == 0, back.stderr
    assert result.sent > 50 and result.failed == 0, result.errors[:5]
    assert {"stable", "canary"}.isdisjoint(result.by_slot) and set(result.by_slot) <= {"blue", "green"}
    traffic = _result(docker_ps("--json", "traffic", "status"))
    assert traffic["services"][0]["active"] == one


def test_second_deploy_waits_then_names_the_holder(deploy_bed: Callable[..., TrafficBed],
                                                   app_builds: Callable[..., str], docker_ps: Any) -> None:
    bed = deploy_bed(pause="4s")
    app_builds("aaaa00000001")
    app_builds("bbbb00000002")
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001").returncode == 0
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def first() -> None:
        results["first"] = _deploy(docker_ps, "--type", "canary-auto", "--build-id", "bbbb00000002",
                                   env={"CI_COMMIT_SHA": "b" * 40,
                                        "CI_PIPELINE_URL": "https://ci.example/p/1"})

    thread = threading.Thread(target=first)
    thread.start()
    from pipeline_steps.deploy.lock import DeployLock

    lock = DeployLock(bed.raw["state_dir"], APP)
    assert until(lambda: lock.status().state == "held", 120), "the first deploy never took the lock"
    second = docker_ps("deploy", "--type", "rollback", "--lock-wait", "1s")
    thread.join()
    assert results["first"].returncode == 0, results["first"].stderr
    assert second.returncode == 1
    assert "held by pid" in second.stderr and "running canary-auto" in second.stderr
    assert "https://ci.example/p/1" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1


def test_two_agents_deploying_the_same_app_exclude_each_other(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any,
        docker_client: Any) -> None:
    """issue 12: two CI agents (two state dirs, so two kernel locks) meet at the engine's lock."""
    bed = deploy_bed(pause="4s")
    app_builds("aaaa00000001")
    app_builds("bbbb00000002")
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001").returncode == 0
    agent2 = bed.config_path.parent / "agent2.yaml"
    agent2.write_text(yaml.safe_dump({**bed.raw, "state_dir": str(bed.config_path.parent / "agent2-state")},
                                     sort_keys=False))
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def first() -> None:
        results["first"] = _deploy(docker_ps, "--type", "canary-auto", "--build-id", "bbbb00000002",
                                   env={"CI_COMMIT_SHA": "b" * 40, "PS_LOCK_AGENT": "agent-1",
                                        "CI_PIPELINE_URL": "https://ci.example/p/1"})

    def engine_lock() -> dict[str, str] | None:
        found = docker_client.volumes.list(filters={"name": f"ps-lock-{APP}"})
        volume = next((v for v in found if v.name == f"ps-lock-{APP}"), None)
        return dict(volume.attrs.get("Labels") or {}) if volume is not None else None

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert until(lambda: engine_lock() is not None, 120), "the first deploy never took the engine lock"
        second = docker_ps("--config", str(agent2), "deploy", "--type", "rollback", "--lock-wait", "1s",
                           env={"PS_LOCK_AGENT": "agent-2"})
        held_meanwhile = engine_lock()
    finally:
        thread.join()
    assert results["first"].returncode == 0, results["first"].stderr
    assert second.returncode == 1, second.stderr
    assert "held by pid" in second.stderr and "on agent-1" in second.stderr
    assert "running canary-auto" in second.stderr and "https://ci.example/p/1" in second.stderr
    assert "(engine lock on host local) (waited 1s)" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert held_meanwhile is not None and held_meanwhile["ps.lock.host"] == "agent-1"
    assert engine_lock() is None  # the first gave it back
    assert _result(docker_ps("--json", "--config", str(agent2), "history"))["entries"] == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_canary_auto_leaves_nginx_valid_and_rollback_works(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any,
        seed: int) -> None:
    bed = deploy_bed(pause="1s")
    app_builds("aaaa00000001")
    app_builds("bbbb00000002")
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001").returncode == 0
    delay = random.Random(seed).uniform(0.3, 4.0)
    env = {**docker_ps.env}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_steps", "deploy", "--type", "canary-auto",
                             "--build-id", "bbbb00000002"], cwd=docker_ps.cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pause_until(time.monotonic() + delay)  # a random kill point
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _nginx_t(bed).returncode == 0
    with LoadGenerator(bed.url("web"), rate=50, max_seconds=30, timeout=10) as load:
        back = docker_ps("deploy", "--type", "rollback", timeout=120)
    assert back.returncode == 0, back.stderr
    assert load.report().failed == 0
    assert _include_weights(bed) == [999, 1]
    assert _nginx_t(bed).returncode == 0


def test_bad_input_is_refused_before_anything_happens(deploy_bed: Callable[..., TrafficBed],
                                                      docker_ps: Any) -> None:
    bed = deploy_bed()
    before = bed.include_text()
    cases = [
        (["deploy", "--type", "sideways"], "sideways"),
        (["deploy", "--type", "canary-manual", "--build-id", "x1"], "--weight"),
        (["deploy", "--type", "canary-auto", "--build-id", "x1", "--service", "nope"], "nope"),
        (["deploy", "--type", "stable", "--to", "previous", "--build-id", "x1"], "--to"),
        (["deploy", "--type", "blue-green", "--build-id", "x1"], "blue-green"),
    ]
    for args, word in cases:
        done = docker_ps(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert word in done.stderr and "Traceback" not in done.stderr
    assert bed.include_text() == before
    history = docker_ps("--json", "history")
    assert _result(history)["entries"] == []


def test_rollback_moves_traffic_even_with_the_docker_engine_down(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any) -> None:
    bed = deploy_bed()
    app_builds("aaaa00000001")
    app_builds("bbbb00000002")
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001").returncode == 0
    manual = _deploy(docker_ps, "--type", "canary-manual", "--weight", "40", "--build-id", "bbbb00000002")
    assert manual.returncode == 0, manual.stderr
    assert _include_weights(bed) == [600, 400]
    raw = yaml.safe_load(bed.config_path.read_text())
    raw["hosts"][0]["docker"] = "unix:///nonexistent/docker.sock"  # the engine is gone
    bed.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    started = time.monotonic()
    done = _deploy(docker_ps, "--type", "rollback", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 10
    assert _include_weights(bed) == [999, 1]


def test_rollback_to_previous_redeploys_the_earlier_stable_build(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any) -> None:
    bed = deploy_bed()
    app_builds("aaaa00000001")
    app_builds("bbbb00000002")
    for build in ("aaaa00000001", "bbbb00000002"):
        assert _deploy(docker_ps, "--type", "stable", "--build-id", build).returncode == 0
    with LoadGenerator(bed.url("web"), rate=50, max_seconds=60, timeout=10) as load:
        done = _deploy(docker_ps, "--type", "rollback", "--to", "previous")
    assert done.returncode == 0, done.stderr
    assert load.report().failed == 0, load.report().errors[:5]
    status = _result(docker_ps("--json", "status"))
    builds = {(s["service"], s["slot"]): s["build_id"] for s in status["slots"]}
    assert builds[("web", "stable")] == "aaaa00000001"
    assert _include_weights(bed) == [999, 1]
    assert "redeploying aaaa00000001 into stable" in done.stderr


def test_stable_deploys_keep_the_newest_images_and_only_untag(
        deploy_bed: Callable[..., TrafficBed], docker_client: Any, base_image: str, docker_ps: Any,
        tmp_path: Path) -> None:
    bed = deploy_bed()
    registry = "ps-prune.local"  # a repository of this test alone: the module's other builds stay
    repo = f"{registry}/{APP}/web"
    raw = yaml.safe_load(bed.config_path.read_text())
    raw["registry"], raw["deploy"] = registry, {"keep_images": 2}
    bed.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    ctx = images.copy_sample_app(tmp_path / "ctx")
    with open(ctx / "Dockerfile", "a") as fh:
        fh.write(f"\nENV TEST_RUN={unique('run')}\n")  # no cached image: each build is made now, in order
    builds = ["c0de00000001", "c0de00000002", "c0de00000003"]
    built = 0  # the second the last build was made in
    try:
        for n, build in enumerate(builds):
            if n:  # the engine lists creation times in whole seconds: each build in a later one
                assert until(lambda last=built: int(time.time()) > last, 5, 0.02)
            image, _ = docker_client.images.build(path=str(ctx), tag=f"{repo}:{build}", rm=True,
                                                  buildargs={"BUILD_ID": build, "BASE_IMAGE": base_image})
            built = int(time.time())
            if n == 0:
                image.tag(f"{registry}/{APP}/keepme", "x")  # the same image in another repository
        said = ""
        for build in builds:
            done = _deploy(docker_ps, "--type", "stable", "--build-id", build)
            assert done.returncode == 0, done.stderr
            said += done.stderr
        tags = {t for row in docker_client.api.images(name=repo) for t in row.get("RepoTags") or []}
        assert tags == {f"{repo}:c0de00000002", f"{repo}:c0de00000003"}
        assert said.count("removed old image") == 1 and f"removed old image {repo}:c0de00000001" in said
        docker_client.images.get(f"{registry}/{APP}/keepme:x")  # untagged from this repo only
    finally:
        for c in docker_client.containers.list(all=True, filters={"label": f"pipeline-steps.app={APP}"}):
            c.remove(force=True)  # the running build's tag goes only once no container uses it
        images.remove_images(docker_client, repo_prefix=f"{registry}/{APP}/")


# ---------------------------------------------------------------- issue 9: never an upstream without a server


def _container(docker_client: Any, slot: str, service: str = "web") -> Any:
    return docker_client.containers.get(f"{APP}-{service}-{slot}")


def _builds(docker_ps: Any) -> dict[tuple[str, str], str | None]:
    status = _result(docker_ps("--json", "status"))
    return {(s["service"], s["slot"]): s["build_id"] for s in status["slots"] if s["state"] == "running"}


def _hook(httpserver: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A Mattermost endpoint that records every message; the env that points ps at it."""
    from werkzeug import Response

    messages: list[dict[str, Any]] = []

    def hook(request: Any) -> Any:
        messages.append(request.get_json())
        return Response("ok", 200)

    httpserver.expect_request("/hooks/secret-token", method="POST").respond_with_handler(hook)
    return messages, {"MATTERMOST_WEBHOOK_URL": httpserver.url_for("/hooks/secret-token")}


def _status_of(message: dict[str, Any]) -> str:
    return str(message["props"]["pipeline_steps"]["status"])


@pytest.mark.parametrize("canary", ["missing", "stopped", "unhealthy"])
def test_stable_deploy_without_a_serving_canary_goes_through_it(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any,
        docker_client: Any, canary: str) -> None:
    bed = deploy_bed()
    app_builds("aaaa00000001")
    app_builds("bbbb00000002")
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001").returncode == 0
    if canary == "missing":
        _container(docker_client, "canary").remove(force=True)
    elif canary == "stopped":
        _container(docker_client, "canary").stop(timeout=5)
    else:
        _container(docker_client, "canary").exec_run(["touch", "/tmp/unhealthy"])
    with LoadGenerator(bed.url("web"), rate=75, max_seconds=120, timeout=10) as load:
        done = _deploy(docker_ps, "--type", "stable", "--build-id", "bbbb00000002")
    result = load.report()
    print(f"load during a stable deploy with a {canary} canary: {result.summary()}")
    assert done.returncode == 0, done.stderr
    assert result.sent > 50 and result.failed == 0, result.errors[:5]
    assert set(result.by_slot) == {"stable", "canary"}  # the canary really carried the traffic meanwhile
    decisions = " | ".join(_result(done)["decisions"])
    said = {"missing": "has no container", "stopped": "is exited",
            "unhealthy": "answers no healthy /health (HTTP 503"}[canary]
    assert f"the canary slot {said}" in decisions, decisions
    assert "nginx retries on the canary" not in done.stderr
    builds = _builds(docker_ps)
    assert builds[("web", "stable")] == builds[("web", "canary")] == "bbbb00000002"
    assert _include_weights(bed) == [999, 1]


@pytest.mark.parametrize("kind", ["canary-auto", "canary-manual"])
def test_canary_unhealthy_while_the_probe_runs_is_rolled_back_at_once(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any,
        docker_client: Any, httpserver: Any, kind: str) -> None:
    bed = deploy_bed(probe=1500, steps=[10, 40], pause="1s")  # the probe outlasts the pause by far
    app_builds("aaaa00000001")
    app_builds("bbbb00000002")
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001", "--no-notify").returncode == 0
    messages, env = _hook(httpserver)
    env["CI_JOB_URL"] = "https://ci.example.com/jobs/77"
    weight = ["--weight", "10"] if kind == "canary-manual" else []
    proc = docker_ps.popen("--json", "deploy", "--type", kind, *weight, "--build-id", "bbbb00000002",
                           env=env)
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line)
        if "verified: canary 10 % live in nginx" in line:
            break
    else:
        pytest.fail("".join(lines))
    touched = time.monotonic()
    _container(docker_client, "canary").exec_run(["touch", "/tmp/unhealthy"])
    back: float | None = None
    deadline = time.monotonic() + 60
    while back is None and time.monotonic() < deadline:
        if _include_weights(bed) == [999, 1]:
            back = time.monotonic()
    out, err = proc.communicate(timeout=120)
    err = "".join(lines) + err
    assert back is not None, err
    assert proc.returncode == 1, err
    result = _result(subprocess.CompletedProcess([], 1, out, err))
    assert result["result"] == "rolled-back"
    assert "turned unhealthy during the probe" in result["message"], result["message"]
    took = back - touched
    print(f"{kind}: unhealthy -> traffic on stable with the probe running: {took:.3f}s")
    assert took < 0.2 + 1.5, err  # check_interval + one reload (with room for a busy bed)
    assert [_status_of(m) for m in messages] == ["started", "rolled-back"]
    fields = {f["title"]: f["value"] for f in messages[-1]["attachments"][0]["fields"]}
    assert fields["Log"] == "[open the log](https://ci.example.com/jobs/77)"
    assert fields["Failed at"] == "canary 10 %"
    assert "Traffic" not in fields and "failed at canary 10 %" in messages[-1]["text"]


def test_blue_green_watch_switches_back_when_the_new_color_fails(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any,
        docker_client: Any) -> None:
    bed = deploy_bed({"web": "blue-green"}, watch="4s")
    app_builds("aaaa00000001")
    app_builds("ffff0000fa11", fail_after=30)  # health fails once the new color served 30 requests
    first = _deploy(docker_ps, "--type", "blue-green", "--build-id", "aaaa00000001")
    assert first.returncode == 0, first.stderr
    kept = _result(first)["active"]["web"]
    new = "green" if kept == "blue" else "blue"
    with LoadGenerator(bed.url("web"), rate=75, max_seconds=120, timeout=10) as load:
        done = _deploy(docker_ps, "--type", "blue-green", "--build-id", "ffff0000fa11", "--keep", "1s")
    result = load.report()
    print(f"load during a blue-green deploy whose new color fails: {result.summary()}")
    assert done.returncode == 1, done.stderr
    out = _result(done)
    assert out["result"] == "rolled-back", out["message"]
    assert f"{new} turned unhealthy during the watch" in out["message"]
    assert out["active"] == {"web": kept}
    assert out["rollback_seconds"] is not None and out["rollback_seconds"] < 0.2 + 1.5
    assert new in result.by_slot and result.failed == 0, result.errors[:5]
    traffic = _result(docker_ps("--json", "traffic", "status"))
    assert traffic["services"][0]["active"] == kept
    assert _container(docker_client, kept).status == "running"  # kept: the watch failed, --keep not used
    assert f"stopped {APP}-web-{kept}" not in done.stderr


def test_rollback_to_a_stopped_color_restarts_and_gates_it(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any,
        docker_client: Any, httpserver: Any) -> None:
    bed = deploy_bed({"web": "blue-green"}, watch="0s")
    app_builds("aaaa00000001")
    app_builds("bbbb00000002")
    first = _deploy(docker_ps, "--type", "blue-green", "--build-id", "aaaa00000001")
    assert first.returncode == 0, first.stderr
    old = _result(first)["active"]["web"]
    second = _deploy(docker_ps, "--type", "blue-green", "--build-id", "bbbb00000002", "--keep", "0s")
    assert second.returncode == 0, second.stderr
    new = _result(second)["active"]["web"]
    assert new != old
    assert _container(docker_client, old).status == "exited"  # --keep 0s stopped it
    messages, env = _hook(httpserver)
    with LoadGenerator(bed.url("web"), rate=50, max_seconds=60, timeout=10) as load:
        back = _deploy(docker_ps, "--type", "rollback", env=env)
    assert back.returncode == 0, back.stderr
    assert load.report().failed == 0, load.report().errors[:5]
    assert f"{old} is exited" in back.stderr and "restarted and gated healthy" in back.stderr
    assert _container(docker_client, old).status == "running"
    assert _result(docker_ps("--json", "traffic", "status"))["services"][0]["active"] == old
    assert [_status_of(m) for m in messages] == ["started", "success"]
    # nothing to go back to: the other color has no container -> exit 1, traffic stays where it is
    _container(docker_client, new).remove(force=True)
    refused = _deploy(docker_ps, "--type", "rollback")
    assert refused.returncode == 1, refused.stderr
    assert "has no container" in refused.stderr
    assert _result(docker_ps("--json", "traffic", "status"))["services"][0]["active"] == old


def test_rollback_to_an_unknown_build_is_bad_input_and_sends_nothing(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any,
        httpserver: Any) -> None:
    bed = deploy_bed()
    app_builds("aaaa00000001")
    app_builds("bbbb00000002")
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001", "--no-notify").returncode == 0
    manual = _deploy(docker_ps, "--type", "canary-manual", "--weight", "40", "--build-id", "bbbb00000002",
                     "--no-notify")
    assert manual.returncode == 0, manual.stderr
    before = bed.include_text()
    entries = len(_result(docker_ps("--json", "history"))["entries"])
    messages, env = _hook(httpserver)
    done = docker_ps("deploy", "--type", "rollback", "--to", "0123456789ab", env=env)
    assert done.returncode == 2, done.stderr
    assert "0123456789ab" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert messages == []
    assert bed.include_text() == before  # nothing moved
    assert len(_result(docker_ps("--json", "history"))["entries"]) == entries


def test_manual_rollback_says_no_check_failed(deploy_bed: Callable[..., TrafficBed],
                                              app_builds: Callable[..., str], docker_ps: Any) -> None:
    deploy_bed()
    app_builds("aaaa00000001")
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001").returncode == 0
    done = _deploy(docker_ps, "--type", "rollback")
    assert done.returncode == 0, done.stderr
    assert "after the failed check" not in done.stderr
    assert "after the rollback began" in done.stderr


def test_rollback_moves_traffic_while_a_slow_chat_gets_started_first(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any,
        httpserver: Any) -> None:
    from werkzeug import Response

    bed = deploy_bed()
    app_builds("aaaa00000001")
    app_builds("bbbb00000002")
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001", "--no-notify").returncode == 0
    assert _deploy(docker_ps, "--type", "canary-manual", "--weight", "40", "--build-id", "bbbb00000002",
                   "--no-notify").returncode == 0
    arrived: list[tuple[str, float]] = []
    slow = threading.Event()

    def hook(request: Any) -> Any:
        arrived.append((_status_of(request.get_json()), time.monotonic()))
        slow.wait(3.0)  # a chat endpoint that takes 3 s to answer (never set: the simulated slowness)
        return Response("ok", 200)

    httpserver.expect_request("/hooks/slow", method="POST").respond_with_handler(hook)
    proc = docker_ps.popen("--json", "deploy", "--type", "rollback",
                           env={"MATTERMOST_WEBHOOK_URL": httpserver.url_for("/hooks/slow")})
    moved: float | None = None
    deadline = time.monotonic() + 60
    while moved is None and time.monotonic() < deadline and proc.poll() is None:
        if _include_weights(bed) == [999, 1]:
            moved = time.monotonic()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert moved is not None, err
    assert [s for s, _ in arrived] == ["started", "success"]
    started_at, success_at = arrived[0][1], arrived[1][1]
    assert moved < started_at + 3.0  # the traffic did not wait for the slow answer to `started`
    assert success_at >= started_at + 3.0  # the outcome went out only after `started` was answered
