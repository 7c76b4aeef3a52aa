"""`ps deploy-env` against the real Docker engine (and a real registry for the pull)."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_steps.config import parse_config
from pipeline_steps.upstreams import initial_file
from testbed.engine import broken_entrypoint_image, run_port_holder, wait_answer
from testbed.ports import address, free_port, free_ports, unique

SECRET = "s3cr3t-Value-never-printed"


@pytest.fixture
def slot_app(docker_client: Any, sample_image: str, project: Any, workdir: Path) -> Iterator[dict[str, Any]]:
    """A ps.yaml for one canary service whose image (two builds) is tagged in the engine."""
    app = unique("dep")
    stable, canary = free_ports(2)
    raw: dict[str, Any] = {
        "app": app, "registry": "127.0.0.1:5999", "state_dir": str(workdir / "state"),
        "hosts": [{"name": "local", "address": address()}],
        "services": {"backend": {"context": ".", "slots": {"stable": stable, "canary": canary},
                                 "env": {"GREETING": "hello"}, "env_from": ["DB_PASSWORD"]}},
        "router": {"include": str(workdir / "ups.conf")},
    }
    project(raw)
    repo = f"127.0.0.1:5999/{app}/backend"
    image = docker_client.images.get(sample_image)
    for tag in ("b1", "b2"):
        image.tag(repo, tag)
    yield {"app": app, "raw": raw, "repo": repo, "ports": {"stable": stable, "canary": canary}}
    for c in docker_client.containers.list(all=True, filters={"label": f"pipeline-steps.app={app}"}):
        c.remove(force=True)
    for tag in ("b1", "b2"):
        try:
            docker_client.images.remove(f"{repo}:{tag}")
        except Exception:
            pass


def test_deploy_idempotent_env_file_and_no_secret(slot_app: dict[str, Any], docker_ps: Any,
                                                   docker_client: Any, workdir: Path) -> None:
    env = {"DB_PASSWORD": SECRET}
    done = docker_ps("--json", "deploy-env", "--slot", "canary", "--build-id", "b1", env=env)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["changed"] and record["changes"][0]["action"] == "created"
    assert "DB_PASSWORD" in record["changes"][0]["env_names"]
    c = docker_client.containers.get(f"{slot_app['app']}-backend-canary")
    labels = c.labels
    assert labels["pipeline-steps.build-id"] == "b1" and labels["pipeline-steps.slot"] == "canary"
    for key in ("app", "service", "image-digest", "deployed-at", "deployed-by", "env-hash"):
        assert labels[f"pipeline-steps.{key}"]
    deployed_at = datetime.fromisoformat(labels["pipeline-steps.deployed-at"])  # the config's timezone
    assert labels["pipeline-steps.deployed-at"].endswith("+09:00")
    assert abs((datetime.now(UTC) - deployed_at).total_seconds()) < 300
    container_env = c.attrs["Config"]["Env"]
    assert f"DB_PASSWORD={SECRET}" in container_env and "PS_SLOT=canary" in container_env
    assert "TZ=Asia/Seoul" in c.attrs["Config"]["Env"]
    host = c.attrs["HostConfig"]
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
    assert host["PortBindings"]["80/tcp"] == [{"HostIp": address(),
                                               "HostPort": str(slot_app["ports"]["canary"])}]
    env_file = workdir / "state" / "env" / "backend-canary.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert f"DB_PASSWORD={SECRET}" in env_file.read_text()
    again = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env)
    assert again.returncode == 0 and "no change" in again.stdout and "unchanged" in again.stdout
    assert docker_client.containers.get(c.name).id == c.id
    changed = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1",
                        env={"DB_PASSWORD": "other-value"})
    assert changed.returncode == 0 and "new environment" in changed.stdout
    assert docker_client.containers.get(c.name).id != c.id


def test_missing_env_from_is_exit_2_before_anything(slot_app: dict[str, Any], docker_ps: Any,
                                                    docker_client: Any) -> None:
    done = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1")
    assert done.returncode == 2
    assert "DB_PASSWORD" in done.stderr and "Traceback" not in done.stderr
    label = f"pipeline-steps.app={slot_app['app']}"
    assert not docker_client.containers.list(all=True, filters={"label": label})


def test_traffic_carrying_slot_needs_force(slot_app: dict[str, Any], docker_ps: Any, docker_client: Any,
                                           workdir: Path) -> None:
    env = {"DB_PASSWORD": SECRET}
    assert docker_ps("deploy-env", "--slot", "stable", "--build-id", "b1", env=env).returncode == 0
    config = parse_config(slot_app["raw"], base_dir=workdir)
    (workdir / "ups.conf").write_text(initial_file(config, workdir / "ups.conf").render())  # stable 999
    refused = docker_ps("deploy-env", "--slot", "stable", "--build-id", "b2", env=env)
    assert refused.returncode == 1 and "carries traffic" in refused.stderr
    name = f"{slot_app['app']}-backend-stable"
    assert docker_client.containers.get(name).labels["pipeline-steps.build-id"] == "b1"
    # the canary (weight 1) carries no traffic: replaced directly
    assert docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env).returncode == 0
    assert docker_ps("deploy-env", "--slot", "canary", "--build-id", "b2", env=env).returncode == 0
    forced = docker_ps("deploy-env", "--slot", "stable", "--build-id", "b2", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert docker_client.containers.get(name).labels["pipeline-steps.build-id"] == "b2"


def test_port_held_by_process_or_container_is_named(slot_app: dict[str, Any], docker_ps: Any,
                                                    run_sample: Any) -> None:
    env = {"DB_PASSWORD": SECRET}
    holder = socket.socket()
    holder.bind((address(), slot_app["ports"]["canary"]))
    holder.listen(1)
    try:
        done = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env)
        assert done.returncode == 1
        assert f"pid {os.getpid()}" in done.stderr and str(slot_app["ports"]["canary"]) in done.stderr
    finally:
        holder.close()
    container, _ = run_sample(port=slot_app["ports"]["stable"])
    done = docker_ps("deploy-env", "--slot", "stable", "--build-id", "b1", env=env)
    assert done.returncode == 1 and f"container {container.name}" in done.stderr


def test_leftover_container_is_removed(slot_app: dict[str, Any], docker_ps: Any, docker_client: Any,
                                       sample_image: str) -> None:
    name = f"{slot_app['app']}-backend-canary"
    left = docker_client.containers.create(sample_image, name=name,
                                           labels={"pipeline-steps.app": slot_app["app"]})
    done = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env={"DB_PASSWORD": SECRET})
    assert done.returncode == 0, done.stderr
    assert "leftover" in done.stdout
    assert docker_client.containers.get(name).id != left.id


def test_pull_from_registry_with_credentials(slot_app: dict[str, Any], docker_ps: Any, docker_client: Any,
                                             registry: Any, project: Any, sample_image: str) -> None:
    raw = {**slot_app["raw"], "registry": registry.address}
    project(raw)
    repo = f"{registry.address}/{slot_app['app']}/backend"
    docker_client.images.get(sample_image).tag(repo, "b9")
    auth = {"username": registry.user, "password": registry.password}
    for line in docker_client.images.push(repo, tag="b9", auth_config=auth, stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(f"{repo}:b9")
    env = {"DB_PASSWORD": SECRET, "REGISTRY_USER": registry.user, "REGISTRY_PASSWORD": registry.password}
    done = docker_ps("--json", "deploy-env", "--slot", "canary", "--build-id", "b9", env=env)
    try:
        assert done.returncode == 0, done.stderr
        assert registry.password not in done.stdout + done.stderr
        record = json.loads(done.stdout.strip().splitlines()[-1])
        assert record["changes"][0]["digest"].startswith("sha256:")
    finally:
        docker_client.images.remove(f"{repo}:b9", force=True)


def test_unreachable_host_is_exit_3(slot_app: dict[str, Any], ps: Any, project: Any, tmp_path: Path) -> None:
    raw = {**slot_app["raw"], "hosts": [{"name": "gone", "docker": f"unix://{tmp_path}/nope.sock"}]}
    project(yaml.safe_load(yaml.safe_dump(raw)))
    done = ps("deploy-env", "--slot", "canary", "--build-id", "b1", env={"DB_PASSWORD": SECRET})
    assert done.returncode == 3 and "gone" in done.stderr


# ---------------------------------------------------------------- foreign containers, failed starts, settings


def _canary_url(slot_app: dict[str, Any], port: int | None = None) -> str:
    return f"http://{address()}:{port or slot_app['ports']['canary']}/"


def test_foreign_container_is_refused_then_replaced_with_force(slot_app: dict[str, Any], docker_ps: Any,
                                                              docker_client: Any, sample_image: str) -> None:
    name = f"{slot_app['app']}-backend-canary"
    foreign = run_port_holder(docker_client, sample_image, address(), slot_app["ports"]["canary"], name)
    try:
        assert wait_answer(_canary_url(slot_app)) is not None
        env = {"DB_PASSWORD": SECRET}
        refused = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env)
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        assert f"container {name} (image {sample_image}" in refused.stderr
        assert "--force" in refused.stderr and "Traceback" not in refused.stderr
        foreign.reload()
        assert foreign.status == "running" and docker_client.containers.get(name).id == foreign.id
        assert wait_answer(_canary_url(slot_app)) is not None  # still answering
        forced = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", "--force", env=env)
        assert forced.returncode == 0, forced.stderr
        assert "not made by pipeline-steps" in forced.stdout
        now = docker_client.containers.get(name)
        assert now.id != foreign.id and now.labels["pipeline-steps.build-id"] == "b1"
        assert wait_answer(_canary_url(slot_app), X_Slot="canary") is not None
        import docker.errors

        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(foreign.id)
    finally:
        try:
            foreign.remove(force=True)
        except Exception:
            pass


def test_failed_start_puts_the_previous_container_back(slot_app: dict[str, Any], docker_ps: Any,
                                                       docker_client: Any, sample_image: str) -> None:
    env = {"DB_PASSWORD": SECRET}
    assert docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env).returncode == 0
    name = f"{slot_app['app']}-backend-canary"
    before = docker_client.containers.get(name)
    assert wait_answer(_canary_url(slot_app), X_Slot="canary") is not None
    bad = f"{slot_app['repo']}:bad"
    broken_entrypoint_image(docker_client, sample_image, bad)
    try:
        done = docker_ps("deploy-env", "--slot", "canary", "--build-id", "bad", env=env)
        assert done.returncode == 1, (done.stdout, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in done.stderr, lines
        assert f"could not start {name}" in lines[0] and "/no/such/entrypoint" in lines[0]
        assert f"previous {name} runs again" in lines[0]
        after = docker_client.containers.get(name)
        assert after.id == before.id and after.status == "running"
        assert after.labels["pipeline-steps.build-id"] == "b1"
        started_again = after.attrs["State"]["StartedAt"]
        assert started_again != before.attrs["State"]["StartedAt"]  # it really was stopped and started
        assert wait_answer(_canary_url(slot_app), X_Slot="canary") is not None  # and answers again
        names = {c.name for c in docker_client.containers.list(
            all=True, filters={"label": f"pipeline-steps.app={slot_app['app']}"})}
        assert names == {name}  # no new container, no aside copy, no port-check container left
    finally:
        docker_client.images.remove(bad, force=True)


def test_changed_port_or_setting_is_a_change(slot_app: dict[str, Any], docker_ps: Any, docker_client: Any,
                                             project: Any) -> None:
    env = {"DB_PASSWORD": SECRET}
    assert docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env).returncode == 0
    name = f"{slot_app['app']}-backend-canary"
    first = docker_client.containers.get(name)
    old_port, new_port = slot_app["ports"]["canary"], free_port()
    raw = {**slot_app["raw"], "services": {"backend": {**slot_app["raw"]["services"]["backend"],
                                                       "slots": {"stable": slot_app["ports"]["stable"],
                                                                 "canary": new_port}}}}
    project(raw)
    moved = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env)
    assert moved.returncode == 0, moved.stderr
    assert f"new port ({address()}:{old_port} -> {address()}:{new_port})" in moved.stdout
    second = docker_client.containers.get(name)
    assert second.id != first.id
    assert second.attrs["HostConfig"]["PortBindings"]["80/tcp"] == [{"HostIp": address(),
                                                                     "HostPort": str(new_port)}]
    assert wait_answer(_canary_url(slot_app, new_port), X_Slot="canary") is not None
    with pytest.raises(OSError):
        socket.create_connection((address(), old_port), timeout=2).close()
    again = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env)
    assert again.returncode == 0 and "no change" in again.stdout and "unchanged" in again.stdout
    assert docker_client.containers.get(name).id == second.id
    second.update(restart_policy={"Name": "no"})  # a run setting changed behind ps's back
    fixed = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env)
    assert fixed.returncode == 0 and "new restart policy (no -> unless-stopped)" in fixed.stdout
    third = docker_client.containers.get(name)
    assert third.id != second.id and third.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"


def test_env_names_one_line_per_service(slot_app: dict[str, Any], docker_ps: Any, docker_client: Any,
                                        project: Any, sample_image: str) -> None:
    web_stable, web_canary = free_ports(2)
    raw = {**slot_app["raw"], "services": {
        **slot_app["raw"]["services"],
        "web": {"context": ".", "slots": {"stable": web_stable, "canary": web_canary},
                "env": {"THEME": "dark"}}}}
    project(raw)
    web_repo = f"127.0.0.1:5999/{slot_app['app']}/web"
    docker_client.images.get(sample_image).tag(web_repo, "b1")
    try:
        done = docker_ps("deploy-env", "--slot", "canary", "--all", "--build-id", "b1",
                         env={"DB_PASSWORD": SECRET})
        assert done.returncode == 0, done.stderr
        lines = {line.partition(" (names only): ")[0]: line.partition(" (names only): ")[2].split(", ")
                 for line in done.stdout.splitlines() if "(names only)" in line}
        assert set(lines) == {"env of backend", "env of web"}
        assert "DB_PASSWORD" in lines["env of backend"] and "GREETING" in lines["env of backend"]
        assert "THEME" in lines["env of web"] and "DB_PASSWORD" not in lines["env of web"]
        assert "THEME" not in lines["env of backend"]
    finally:
        docker_client.images.remove(f"{web_repo}:b1")


def test_port_held_by_a_container_of_the_engine_leaves_the_running_slot(
        slot_app: dict[str, Any], docker_ps: Any, docker_client: Any, sample_image: str,
        project: Any) -> None:
    """Moving a running slot onto a port another container holds: refused before anything stops."""
    env = {"DB_PASSWORD": SECRET}
    assert docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env).returncode == 0
    name = f"{slot_app['app']}-backend-canary"
    running = docker_client.containers.get(name)
    held = free_port()
    holder = run_port_holder(docker_client, sample_image, address(), held, unique("pst-holder-"))
    try:
        raw = {**slot_app["raw"], "services": {"backend": {**slot_app["raw"]["services"]["backend"],
                                                           "slots": {"stable": slot_app["ports"]["stable"],
                                                                     "canary": held}}}}
        project(raw)
        done = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert f"container {holder.name} (image {sample_image})" in done.stderr
        assert f"{address()}:{held}" in done.stderr
        now = docker_client.containers.get(name)
        assert now.id == running.id and now.status == "running"
        assert now.attrs["State"]["StartedAt"] == running.attrs["State"]["StartedAt"]  # never stopped
    finally:
        holder.remove(force=True)


def test_previous_container_left_aside_by_an_interrupted_run_is_replaced(
        slot_app: dict[str, Any], docker_ps: Any, docker_client: Any) -> None:
    env = {"DB_PASSWORD": SECRET}
    assert docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env).returncode == 0
    name = f"{slot_app['app']}-backend-canary"
    left = docker_client.containers.get(name)
    left.rename(f"{name}-ps-previous")  # as if ps was killed right after renaming it aside
    done = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b1", env=env)
    assert done.returncode == 0, done.stderr
    assert f"{name}-ps-previous left by an interrupted run" in done.stdout
    names = {c.name for c in docker_client.containers.list(
        all=True, filters={"label": f"pipeline-steps.app={slot_app['app']}"})}
    assert names == {name} and docker_client.containers.get(name).id != left.id
    assert wait_answer(_canary_url(slot_app), X_Slot="canary") is not None
