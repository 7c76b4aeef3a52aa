"""Issue 12, many routers: two real nginx routers (host processes, each with its own include) in front of
slots on two real Docker hosts (the bed's engine and `second_host`): one change goes to both, each lists
only its host's slots, the split measured through each router matches, an `nginx -t` failure on
router 2 puts router 1 back, and `ps status` flags routers that split differently.

Then issue 12's "done when" end to end (a load test, SERIAL): router1 on host1 and router2 on host2
(tcp://, once with TLS), each an nginx container whose include directory is a named volume on its host
(driven through that engine alone), haproxy round-robin in front as the ALB (routers_url): canary-auto
with the split through the front inside the 99 % interval at each step, 0 failed requests through the
front during canary-auto, promote, rollback and blue-green, nginx -t failing on router 2, a canary
failing on host 2 only, kill -9 at 5 random points, and two agents deploying at once."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_steps.upstreams import UpstreamFile
from testbed import images
from testbed.keepalive_load import KeepAliveLoad, Route
from testbed.many_routers import ManyRouterBed
from testbed.nginx import Nginx, server_block
from testbed.nginx_image import CONTAINER_DIR
from testbed.ports import address, free_ports, unique
from testbed.wait import pause_until


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


# ---------------------------------------------------------------- issue 12's "done when", end to end
# routers: [router1 on host1 (the bed's engine), router2 on host2 (tcp://, or tcp:// with TLS)], each an
# nginx container whose include is a named volume on its host (driven through that engine alone), and
# haproxy round-robin in front (routers_url): testbed.many_routers, fixture many_router_bed.

E2E_REGISTRY = "ps-test.local"
FRONT_LINE = re.compile(r"web @front: canary answered ([0-9.]+) % of (\d+) requests \(target ([0-9.]+) %\)")


@dataclass
class Fleet:
    """The bed, its app and the builds tagged on both hosts."""

    bed: ManyRouterBed
    app: str

    @property
    def front_port(self) -> int:
        return self.bed.front.port

    def weights(self) -> list[list[int]]:
        """Each router's server weights of the web upstream (stable first), read through its engine."""
        found = []
        for text, router in zip(self.bed.includes(), self.bed.routers, strict=True):
            assert text is not None
            ups = UpstreamFile.from_text(text, router.include).upstreams()[f"{self.app}_web"]
            found.append([s.weight for s in ups.servers])
        return found

    def all_valid(self) -> None:
        """Both routers' includes parse and `nginx -t` passes in both containers."""
        for (code, said), text in zip(self.bed.nginx_t(), self.bed.includes(), strict=True):
            assert code == 0, said
            assert text is not None and UpstreamFile.from_text(text, "x").upstreams()

    def route(self) -> Route:
        """The keep-alive load's route through the front: every host's slot servers."""
        return Route("web", "/web/", {f"{h.address}:{port}": slot for h in self.bed.hosts
                                      for slot, port in self.bed.ports["web"].items()})

    def container(self, host: int, slot: str) -> Any:
        return self.bed.hosts[host].client.containers.get(f"{self.app}-web-{slot}")


@pytest.fixture
def fleet(many_router_bed: Callable[..., ManyRouterBed], docker_client: Any, base_image: str,
          tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Fleet]:
    """`fleet(kind="canary", tls=False, **canary)`: the two-router bed with builds b1 and b2 on both hosts."""

    def make(kind: str = "canary", *, tls: bool = False, **canary: Any) -> Fleet:
        app = unique("mrf")
        bed = many_router_bed({"web": kind}, app=app, tls=tls)
        bed.raw["registry"] = E2E_REGISTRY
        bed.raw["services"]["web"]["health"] = {"path": "/health", "interval": "200ms", "timeout": "2s",
                                                "retries": 60}
        bed.raw["canary"] = {"steps": [20, 50], "pause": "1s", "check_interval": "200ms", "probe": 0,
                             **canary}
        bed.raw["blue_green"] = {"watch": "1s"}
        bed.save()
        for build in ("aaaa00000001", "bbbb00000002"):
            ctx = images.copy_sample_app(tmp_path_factory.mktemp("ctx"))
            image, _ = docker_client.images.build(path=str(ctx), rm=True,
                                                  buildargs={"BUILD_ID": build, "BASE_IMAGE": base_image})
            bed.tag_everywhere(image.id, f"{E2E_REGISTRY}/{app}/web", build, docker_client)
        return Fleet(bed, app)

    return make


def _deploy(ps: Any, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return ps("--json", "deploy", *args, timeout=300, **kw)


def _front_splits(stderr: str) -> list[tuple[float, int, float]]:
    """The split measured through the front at each step: (canary %, requests, target %)."""
    return [(float(a), int(n), float(t)) for a, n, t in FRONT_LINE.findall(stderr)]


def _in_interval(pct: float, n: int, target: float) -> bool:
    from pipeline_steps.weights import binomial_interval

    low, high = binomial_interval(n, target / 100.0, 0.99)
    return low <= round(pct / 100.0 * n) <= high


def test_canary_auto_promote_rollback_through_the_front_split_in_interval_and_nothing_dropped(
        fleet: Callable[..., Fleet], docker_ps: Any) -> None:
    # host2 over tcp:// with TLS (client certificates) in this run
    f = fleet(tls=True, probe=400)
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001").returncode == 0
    assert f.weights() == [[999, 1], [999, 1]]
    with KeepAliveLoad(f.front_port, [f.route()], rate=40, max_seconds=200, workers=8) as load:
        auto = _deploy(docker_ps, "--type", "canary-auto", "--build-id", "bbbb00000002")
        promote = _deploy(docker_ps, "--type", "promote-canary")
        rollback = _deploy(docker_ps, "--type", "rollback")
    report = load.report()
    print(f"through the front during canary-auto, promote, rollback: {report.summary()}")
    assert auto.returncode == 0, auto.stderr
    splits = _front_splits(auto.stderr)
    print(f"canary-auto through the front (canary %, requests, target %): {splits}")
    assert [t for _, _, t in splits] == [20.0, 50.0], auto.stderr  # measured through the front each step
    for pct, n, target in splits:
        assert n >= 300 and _in_interval(pct, n, target), (pct, n, target)
    assert promote.returncode == 0, promote.stderr
    assert rollback.returncode == 0, rollback.stderr
    assert report.sent > 100 and report.failed == 0, report.errors()
    assert set(report.by_slot()) == {"stable", "canary"}
    assert f.weights()[0] == f.weights()[1]
    f.all_valid()


def test_blue_green_through_the_front_drops_nothing(fleet: Callable[..., Fleet], docker_ps: Any) -> None:
    f = fleet("blue-green")
    first = _deploy(docker_ps, "--type", "blue-green", "--build-id", "aaaa00000001")
    assert first.returncode == 0, first.stderr
    with KeepAliveLoad(f.front_port, [f.route()], rate=40, max_seconds=120, workers=8) as load:
        second = _deploy(docker_ps, "--type", "blue-green", "--build-id", "bbbb00000002")
    report = load.report()
    print(f"through the front during blue-green: {report.summary()}")
    assert second.returncode == 0, second.stderr
    assert report.sent > 20 and report.failed == 0, report.errors()
    assert f.weights()[0] == f.weights()[1]
    f.all_valid()


def test_nginx_t_failing_on_router2_restores_router1(fleet: Callable[..., Fleet], docker_ps: Any) -> None:
    f = fleet()
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001").returncode == 0
    before = f.bed.includes()
    workers = [r.container.top()["Processes"] for r in f.bed.routers]
    # someone broke router2's own config (an included file beside ps's): every nginx -t there fails now
    f.bed.routers[1].write("this is not nginx;\n", f"{CONTAINER_DIR}/extra-broken.conf")
    done = docker_ps("set-weights", "--canary", "30")
    assert done.returncode == 1, done.stderr
    line = [ln for ln in done.stderr.splitlines() if ln.startswith("ps:")]
    assert len(line) == 1 and "router2" in line[0], done.stderr
    assert f.bed.includes() == before  # router1 restored too
    assert [r.container.top()["Processes"] for r in f.bed.routers][0] == workers[0]  # never reloaded
    f.bed.routers[1].container.exec_run(["rm", f"{CONTAINER_DIR}/extra-broken.conf"])
    again = docker_ps("set-weights", "--canary", "30")
    assert again.returncode == 0, again.stderr
    assert f.weights() == [[700, 300], [700, 300]]


def test_a_canary_failing_on_host2_only_rolls_back_both_routers(fleet: Callable[..., Fleet],
                                                                 docker_ps: Any) -> None:
    f = fleet(pause="3s")
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001").returncode == 0
    proc = docker_ps.popen("--json", "deploy", "--type", "canary-auto", "--build-id", "bbbb00000002")
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line)
        if "verified: canary 20 % live" in line:
            break
    else:
        pytest.fail("".join(lines))
    assert f.weights() == [[800, 200], [800, 200]]
    f.container(1, "canary").exec_run(["touch", "/tmp/unhealthy"])  # host2's canary only
    out, err = proc.communicate(timeout=120)
    err = "".join(lines) + err
    assert proc.returncode == 1, err
    assert json.loads(out.strip().splitlines()[-1])["result"] == "rolled-back", out
    assert f.weights() == [[999, 1], [999, 1]], err  # both routers back on stable
    f.all_valid()


def test_kill_9_at_5_random_points_leaves_both_routers_valid_and_equal_after_the_next_deploy(
        fleet: Callable[..., Fleet], docker_ps: Any) -> None:
    f = fleet(steps=[20, 50, 80], pause="1s")
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001").returncode == 0
    rng = random.Random(1212)
    states: list[list[list[int]]] = []
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "pipeline_steps", "deploy", "--type", "canary-auto",
                                 "--build-id", "bbbb00000002"], cwd=docker_ps.cwd, env=docker_ps.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        pause_until(time.monotonic() + rng.uniform(0.5, 7.0))  # a random kill point (seeded, bounded)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        f.all_valid()
        states.append(f.weights())
    print(f"routers' weights after each kill: {states}")
    done = _deploy(docker_ps, "--type", "rollback")
    assert done.returncode == 0, done.stderr
    assert f.weights() == [[999, 1], [999, 1]]
    f.all_valid()


def test_two_agents_deploying_at_once_exclude_each_other(fleet: Callable[..., Fleet], docker_ps: Any,
                                                         workdir: Path) -> None:
    f = fleet(pause="4s")
    assert _deploy(docker_ps, "--type", "stable", "--build-id", "aaaa00000001").returncode == 0
    agents = []
    for name in ("agent-a", "agent-b"):  # two CI agents: own ps.yaml copy, state dir and XDG state
        home = workdir / name
        home.mkdir()
        raw = {**f.bed.raw, "state_dir": str(home / "state")}
        (home / "ps.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        agents.append((home, {"XDG_STATE_HOME": str(home / "xdg")}))
    (a_home, a_env), (b_home, b_env) = agents
    a = docker_ps.popen("--config", str(a_home / "ps.yaml"), "--json", "deploy", "--type", "canary-auto",
                        "--build-id", "bbbb00000002", env=a_env)
    assert a.stderr is not None
    lines: list[str] = []
    for line in a.stderr:
        lines.append(line)
        if "verified: canary 20 % live" in line:  # A holds the lock and is moving traffic
            break
    else:
        pytest.fail("".join(lines))
    b = docker_ps("--config", str(b_home / "ps.yaml"), "deploy", "--type", "stable", "--build-id",
                  "aaaa00000001", env=b_env)
    assert b.returncode == 1, b.stderr
    assert f"deploy lock of app {f.app} is held by" in b.stderr and "engine lock on host host1" in b.stderr
    out, err = a.communicate(timeout=180)
    assert a.returncode == 0, "".join(lines) + err
    assert f.weights()[0] == f.weights()[1]
