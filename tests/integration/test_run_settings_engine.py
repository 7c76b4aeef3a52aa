"""Run settings on the real engine: a slot on a user network reaching its databases by name, with a
named volume and limits, kept across a redeploy; any change (or a hand-made drift) is a change."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.ports import address, free_ports, unique
from testbed.wait import until

pytestmark = pytest.mark.docker

SECRET = "run-settings-Secret-never-printed"


@pytest.fixture
def stack(docker_client: Any, sample_image: str, base_image: str, project: Any,
          workdir: Any) -> Iterator[dict[str, Any]]:
    """A user network with `postgres` and `redis` stand-ins on it, and a ps.yaml whose backend joins it."""
    app, net, vol = unique("run"), unique("psnet-"), unique("psvol-")
    network = docker_client.networks.create(net, driver="bridge", labels={"pipeline-steps.test": "1"})
    stand_ins = [docker_client.containers.run(
        base_image, ["nc", "-ll", "-p", str(port), "-e", "/bin/echo", f"{name}-ok"], detach=True,
        name=unique(f"pst-{name}-"), network=net, labels={"pipeline-steps.test": "1"},
        networking_config={net: docker_client.api.create_endpoint_config(aliases=[name])})
        for name, port in (("postgres", 5432), ("redis", 6379))]
    stable, canary = free_ports(2)
    service = {"context": ".", "slots": {"stable": stable, "canary": canary},
               "env": {"REDIS_URL": "redis://redis:6379"}, "env_from": ["DB_PASSWORD"],
               "networks": [{"name": net, "aliases": ["web"]}],
               "volumes": [f"{vol}:/data"], "memory": "64m", "cpus": 0.5, "pids": 100,
               "labels": {"team": "shop"}, "stop_timeout": "2s"}
    raw: dict[str, Any] = {"app": app, "registry": "127.0.0.1:5999", "state_dir": str(workdir / "state"),
                           "hosts": [{"name": "local", "address": address()}],
                           "services": {"backend": service}, "router": {"include": str(workdir / "ups.conf")}}
    project(raw)
    repo = f"127.0.0.1:5999/{app}/backend"
    image = docker_client.images.get(sample_image)
    for tag in ("b1", "b2"):
        image.tag(repo, tag)
    yield {"app": app, "raw": raw, "net": net, "vol": vol, "name": f"{app}-backend-canary"}
    for c in docker_client.containers.list(all=True, filters={"label": f"pipeline-steps.app={app}"}):
        c.remove(force=True)
    for c in stand_ins:
        c.remove(force=True)
    for name in (net, f"{net}-made"):
        for n in docker_client.networks.list(names=[name]):
            n.remove()
    try:
        network.remove()
    except Exception:
        pass
    for v in docker_client.volumes.list(filters={"name": vol}):
        v.remove(force=True)
    for tag in ("b1", "b2"):
        try:
            docker_client.images.remove(f"{repo}:{tag}")
        except Exception:
            pass


def _deploy(docker_ps: Any, build: str) -> Any:
    return docker_ps("--json", "deploy-env", "--slot", "canary", "--build-id", build,
                     env={"DB_PASSWORD": SECRET})


def _reaches(container: Any, host: str, port: int) -> bool:
    code, out = container.exec_run(["sh", "-c", f"nc -w 3 {host} {port} </dev/null"])
    return code == 0 and f"{host}-ok" in out.decode(errors="replace")


def _record(done: Any) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_slot_reaches_databases_by_name_with_volume_and_limits_kept(stack: dict[str, Any], docker_ps: Any,
                                                                     docker_client: Any) -> None:
    first = _record(_deploy(docker_ps, "b1"))
    assert first["changes"][0]["action"] == "created"
    c = docker_client.containers.get(stack["name"])
    host = c.attrs["HostConfig"]
    assert host["Memory"] == 64 * 1024 ** 2 and host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 100
    assert [(m["Type"], m["Name"], m["Destination"]) for m in c.attrs["Mounts"]] == [
        ("volume", stack["vol"], "/data")]
    nets = c.attrs["NetworkSettings"]["Networks"]
    assert list(nets) == [stack["net"]] and "web" in (nets[stack["net"]]["Aliases"] or [])
    assert c.labels["team"] == "shop"
    assert until(lambda: _reaches(c, "postgres", 5432), timeout=15)
    assert _reaches(c, "redis", 6379)
    assert c.exec_run(["sh", "-c", "echo kept > /data/upload.txt"])[0] == 0

    second = _record(_deploy(docker_ps, "b2"))  # a new build: new container, same settings and volume
    assert second["changes"][0]["action"] == "replaced"
    c2 = docker_client.containers.get(stack["name"])
    assert c2.id != c.id and c2.attrs["HostConfig"]["Memory"] == 64 * 1024 ** 2
    assert c2.exec_run(["cat", "/data/upload.txt"])[1].decode().strip() == "kept"
    assert until(lambda: _reaches(c2, "postgres", 5432), timeout=15)

    same = _record(_deploy(docker_ps, "b2"))
    assert same["changes"][0]["action"] == "unchanged"
    assert docker_client.containers.get(stack["name"]).id == c2.id


def test_a_changed_or_drifted_setting_is_a_change(stack: dict[str, Any], docker_ps: Any, docker_client: Any,
                                                 project: Any) -> None:
    _record(_deploy(docker_ps, "b1"))
    raw = stack["raw"]
    service = {**raw["services"]["backend"], "memory": "96m"}
    del service["pids"]  # a setting removed from ps.yaml is a change too
    project({**raw, "services": {"backend": service}})
    changed = _record(_deploy(docker_ps, "b1"))
    assert changed["changes"][0]["reason"] == "new run settings (memory, pids)"
    c = docker_client.containers.get(stack["name"])
    assert c.attrs["HostConfig"]["Memory"] == 96 * 1024 ** 2 and not c.attrs["HostConfig"]["PidsLimit"]
    docker_client.networks.get(stack["net"]).disconnect(c)  # a hand-made drift
    fixed = _record(_deploy(docker_ps, "b1"))
    assert fixed["changes"][0]["reason"] == "new run settings (networks)"
    assert stack["net"] in docker_client.containers.get(stack["name"]).attrs["NetworkSettings"]["Networks"]


def test_a_missing_network_is_exit_2_before_anything_or_made_when_asked(
        stack: dict[str, Any], docker_ps: Any, docker_client: Any, project: Any) -> None:
    _record(_deploy(docker_ps, "b1"))
    before = docker_client.containers.get(stack["name"]).id
    raw, made = stack["raw"], f"{stack['net']}-made"
    service = {**raw["services"]["backend"], "networks": [stack["net"], made]}
    project({**raw, "services": {"backend": service}})
    refused = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b2", env={"DB_PASSWORD": SECRET})
    assert refused.returncode == 2, refused.stderr
    assert f"ps: network {made} on host local does not exist" in refused.stderr
    assert docker_client.containers.get(stack["name"]).id == before  # nothing changed
    assert not docker_client.networks.list(names=[made])
    project({**raw, "services": {"backend": {**service, "networks": [stack["net"],
                                                                     {"name": made, "create": True}]}}})
    _record(_deploy(docker_ps, "b2"))
    (network,) = docker_client.networks.list(names=[made])
    assert network.attrs["Labels"].get("pipeline-steps") == "1"
    c = docker_client.containers.get(stack["name"])
    assert set(c.attrs["NetworkSettings"]["Networks"]) == {stack["net"], made}
    assert until(lambda: _reaches(c, "postgres", 5432), timeout=15)
