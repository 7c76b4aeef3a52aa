"""Issue 12, many routers: two real nginx routers (host processes, each with its own include) in front of
slots on two real Docker hosts (the bed's engine and `second_host`): one change goes to both, each lists
only its host's slots, the split measured through each router matches, an `nginx -t` failure on
router 2 puts router 1 back, and `ps status` flags routers that split differently."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.upstreams import UpstreamFile
from testbed.nginx import Nginx, server_block
from testbed.ports import address, free_ports, unique


@dataclass
class TwoRouters:
    app: str
    routers: list[Nginx]
    hosts: list[str]  # the two hosts' addresses
    ports: tuple[int, int]  # stable, canary
    raw: dict[str, Any]


def _first_include(app: str, host: str, ports: tuple[int, int]) -> str:
    """What the routers start with: stable 100 %, this router's host only (ps rewrites it)."""
    return (f"upstream {app}_web {{\n    server {host}:{ports[0]} weight=999;\n"
            f"    server {host}:{ports[1]} weight=1;\n}}\n")


@pytest.fixture
def two_routers(second_host: Any, engine: Any, docker_client: Any, sample_image: str, docker_ps: Any,
                project: Callable[..., Path], workdir: Path,
                nginx_factory: Callable[..., Nginx]) -> Iterator[TwoRouters]:
    app = unique("mr")
    stable, canary = free_ports(2)
    ports = (stable, canary)
    hosts = [address(), second_host.address]
    routers = [nginx_factory(server_block(["web"], app), _first_include(app, h, ports)) for h in hosts]
    raw: dict[str, Any] = {
        "app": app, "registry": "127.0.0.1:5999", "state_dir": str(workdir / "state"),
        "hosts": [{"name": "one", "docker": engine.base_url, "address": hosts[0]},
                  {"name": "two", "docker": second_host.docker, "address": hosts[1]}],
        "services": {"web": {"context": ".", "slots": {"stable": ports[0], "canary": ports[1]},
                             "health": {"retries": 40, "interval": 0.5}}},
        "routers": [{"include": str(n.include), "url": f"{n.url}/web/", "hosts": [host],
                     "nginx": {"prefix": str(n.prefix), "conf": str(n.conf), "error_log": str(n.error_log)}}
                    for n, host in zip(routers, ("one", "two"), strict=True)],
    }
    project(raw)
    repo = f"127.0.0.1:5999/{app}/web"
    two = second_host.engine.client()
    clients = {"one": docker_client, "two": two}
    try:
        import docker.errors

        image = docker_client.images.get(sample_image)
        try:
            two.images.get(image.id)
        except docker.errors.ImageNotFound:
            two.images.load(b"".join(image.save(named=sample_image)))
        for client in clients.values():
            client.images.get(image.id).tag(repo, "b1")
            client.images.get(image.id).tag(repo, "b2")
        for slot, build in (("stable", "b1"), ("canary", "b2")):
            done = docker_ps("deploy-env", "--slot", slot, "--build-id", build)
            assert done.returncode == 0, done.stderr
        yield TwoRouters(app=app, routers=routers, hosts=hosts, ports=ports, raw=raw)
    finally:
        for client in clients.values():
            for c in client.containers.list(all=True, filters={"label": f"pipeline-steps.app={app}"}):
                c.remove(force=True)
            for tag in ("b1", "b2"):
                try:
                    client.images.remove(f"{repo}:{tag}")
                except Exception:
                    pass
        two.close()


def _servers(nginx: Nginx, app: str) -> dict[str, int]:
    up = UpstreamFile.from_text(nginx.include.read_text()).get(f"{app}_web")
    assert up is not None
    return {s.address: s.effective_weight for s in up.servers}


def test_set_weights_goes_to_both_routers_each_with_its_hosts_slots_and_measures_true(
        two_routers: TwoRouters, docker_ps: Any) -> None:
    bed = two_routers
    masters = [n.master_pid() for n in bed.routers]
    done = docker_ps("--json", "set-weights", "--canary", "10")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(r["router"], r["hosts"], r["reloaded"]) for r in record["routers"]] == [
        ("router1", ["one"], True), ("router2", ["two"], True)]
    for nginx, host in zip(bed.routers, bed.hosts, strict=True):  # each lists only its own host's slots
        assert _servers(nginx, bed.app) == {f"{host}:{bed.ports[0]}": 900, f"{host}:{bed.ports[1]}": 100}
    assert [n.master_pid() for n in bed.routers] == masters  # reloaded, not restarted
    # the split measured through each router: only 2xx answers from a server of that router count
    verified = docker_ps("--json", "verify-weights", "--expect-canary", "10", "--probe", "300",
                         "--service", "web")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    result = json.loads(verified.stdout.strip().splitlines()[-1])
    for section, nginx in zip(result["routers"], bed.routers, strict=True):
        measured = section["services"][0]["measured"]
        assert measured["valid"] == 300 and not measured["invalid"], measured
        assert section["ok"]
        low, high = measured["interval"]
        assert low <= measured["share"] <= high
        assert measured["url"] == f"{nginx.url}/web/"  # through the router's own url
    assert "router2: web: configured canary 10.0 %" in verified.stdout + verified.stderr
    status = docker_ps("traffic", "status")
    assert status.returncode == 0, status.stderr
    assert "router1 (hosts one;" in status.stdout and "router2 (hosts two;" in status.stdout


def test_nginx_t_failure_on_router2_restores_router1_and_names_router2(two_routers: TwoRouters,
                                                                       docker_ps: Any) -> None:
    bed = two_routers
    assert docker_ps("set-weights", "--canary", "10").returncode == 0
    r1, r2 = bed.routers
    before = [r1.include.read_text(), r2.include.read_text()]
    # router 2's main conf now rejects its include: the upstream is defined twice
    conf = r2.conf.read_text()
    r2.conf.write_text(conf.replace(f"    include {r2.include};\n",
                                    f"    include {r2.include};\n    include {r2.include};\n"))
    failed = docker_ps("set-weights", "--canary", "40")
    r2.conf.write_text(conf)
    assert failed.returncode == 1, failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("ps: router2: nginx -t rejected the change") and "duplicate upstream" in line
    assert line.endswith("router1 and router2 restored"), line
    assert [r1.include.read_text(), r2.include.read_text()] == before
    # router 1 still serves 10 %: its nginx never took the 40 % (phase 1 reloads nothing)
    verified = docker_ps("verify-weights", "--expect-canary", "10", "--probe", "200", "--service", "web")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_status_exits_1_when_one_routers_include_was_changed_by_hand(two_routers: TwoRouters,
                                                                      docker_ps: Any) -> None:
    bed = two_routers
    assert docker_ps("set-weights", "--canary", "10").returncode == 0
    ok = docker_ps("status")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    r2 = bed.routers[1]
    text = r2.include.read_text()
    assert "weight=900" in text and "weight=100" in text
    r2.include.write_text(text.replace("weight=900", "weight=500").replace("weight=100", "weight=500"))
    flagged = docker_ps("status")
    assert flagged.returncode == 1, flagged.stdout + flagged.stderr
    assert ("MISMATCH web: weights differ between routers (router1=stable 900 : canary 100 (10.0 %), "
            "router2=stable 500 : canary 500 (50.0 %))") in flagged.stdout
    # the next change rewrites router 2 to router 1's state (and says so)
    assert docker_ps("set-weights", "--canary", "10").returncode == 0
    assert docker_ps("status").returncode == 0


def test_the_split_through_the_front_balancer_matches(two_routers: TwoRouters, docker_ps: Any,
                                                       project: Callable[..., Path],
                                                       nginx_factory: Callable[..., Nginx]) -> None:
    bed = two_routers
    # a third nginx stands for the ALB: round-robin over the two routers (it adds no X-Upstream of its
    # own, so each answer still names the slot server that answered behind its router)
    front = nginx_factory(
        "    server {\n        listen {address}:{port};\n        proxy_http_version 1.1;\n"
        "        proxy_set_header Connection \"\";\n        location / { proxy_pass http://ps_front; }\n"
        "    }\n",
        "upstream ps_front {\n" + "".join(f"    server {address()}:{n.port};\n" for n in bed.routers) + "}\n")
    project({**bed.raw, "routers_url": f"{front.url}/web/"})
    assert docker_ps("set-weights", "--canary", "30").returncode == 0
    verified = docker_ps("--json", "verify-weights", "--expect-canary", "30", "--probe", "300",
                         "--service", "web")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    result = json.loads(verified.stdout.strip().splitlines()[-1])
    measured = result["front"]["measured"]
    assert measured["url"] == f"{front.url}/web/" and measured["valid"] == 300 and not measured["invalid"]
    low, high = measured["interval"]
    assert low <= measured["share"] <= high and not result["front"]["problems"]
    assert f"front {front.url}/web/: web: measured canary" in verified.stderr
