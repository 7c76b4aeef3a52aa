"""The hosts at once (pipeline_steps.parallel.each_host, ps.yaml `parallel_hosts`): deploy-env, workers,
the health gates and requires run on every host concurrently, and a failure on one host leaves the others
as the one-by-one code did. Over FakeDockerHost engines whose start waits until every host has entered it
(a barrier with a timeout: with one host at a time it breaks, and the deploy fails)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_steps.adapters import factory
from pipeline_steps.adapters import slots as s
from pipeline_steps.adapters.fake_prober import up
from pipeline_steps.adapters.fakes import FakeAdapters, FakeDockerHost, FakeRegistry
from pipeline_steps.adapters.interfaces import ContainerInfo
from pipeline_steps.config import Config, Host, load_config
from pipeline_steps.deploy.ops import RealOps
from pipeline_steps.errors import CheckFailed, ConfigError
from pipeline_steps.health import GatePolicy, HealthTarget, ProbeResult
from pipeline_steps.operations.deploy_env import deploy_slot
from pipeline_steps.operations.deploy_workers import deploy_workers
from pipeline_steps.operations.health_gate import gate_hosts
from pipeline_steps.operations.requires import wait_required
from pipeline_steps.parallel import each_host

REGISTRY = "127.0.0.1:5999"
B1, B2 = "aaaa00000001", "bbbb00000002"
MEET = 5.0  # seconds a host waits in start for the others (the test fails after that, never hangs)


# ---------------------------------------------------------------- each_host


def test_results_come_back_in_host_order_whatever_ends_first() -> None:
    done = {n: threading.Event() for n in range(5)}
    done[4].set()
    ended: list[int] = []

    def work(n: int) -> int:
        assert done[n + 1].wait(MEET)  # host n ends only after host n + 1: the last host ends first
        ended.append(n)
        done[n].set()
        return n * 10

    assert each_host([0, 1, 2, 3], work, limit=4) == [0, 10, 20, 30]
    assert ended == [3, 2, 1, 0]
    assert each_host([], work, limit=4) == []


def test_at_most_limit_hosts_run_at_once_and_limit_one_is_the_calling_thread() -> None:
    lock, now, most = threading.Lock(), [0], [0]
    threads: set[str] = set()
    together = threading.Barrier(3, timeout=MEET)  # three at a time must be there, and no fourth

    def work(n: int) -> int:
        threads.add(threading.current_thread().name)
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        together.wait()
        with lock:
            now[0] -= 1
        return n

    assert each_host(range(6), work, limit=3) == list(range(6)) and most[0] == 3
    threads.clear()
    most[0] = 0
    together = threading.Barrier(1)
    each_host(range(4), work, limit=1)
    assert most[0] == 1 and threads == {threading.current_thread().name}


def test_a_failure_is_raised_after_the_started_hosts_ended_and_the_waiting_ones_never_start() -> None:
    started: list[int] = []
    ended: list[int] = []
    failing = threading.Event()

    def work(n: int) -> int:
        started.append(n)
        if n == 1:
            failing.set()
            raise CheckFailed("host 1 broke")
        assert failing.wait(MEET)  # host 0 is still working when host 1 fails
        ended.append(n)
        return n

    with pytest.raises(CheckFailed, match="host 1 broke"):
        each_host([0, 1, 2, 3], work, limit=2)
    assert ended == [0]  # host 0 had started: it finished before the raise
    assert sorted(started) == [0, 1]  # hosts 2 and 3 were waiting for a slot: never started


def test_of_several_failures_the_first_host_in_order_is_raised() -> None:
    second_failed = threading.Event()

    def work(n: int) -> int:
        if n == 2:
            second_failed.set()
            raise CheckFailed("host 2 broke")
        if n == 1:
            assert second_failed.wait(MEET)  # host 2 fails first
            raise CheckFailed("host 1 broke")
        return n

    with pytest.raises(CheckFailed, match="host 1 broke"):
        each_host([0, 1, 2], work, limit=3)


# ---------------------------------------------------------------- the bed


class MeetingHost(FakeDockerHost):
    """A fake engine whose first start of a container named `meet` waits until every host got there."""

    def __init__(self, host: Host, registry: FakeRegistry, barrier: threading.Barrier, meet: str) -> None:
        super().__init__(host, registry)
        self.barrier, self.meet, self.met = barrier, meet, False
        self.order: list[str] = []

    def start(self, name: str) -> ContainerInfo:
        c = self._get(name)
        if c.name.startswith(self.meet) and not self.met:
            self.met = True
            self.order.append("waits")
            self.barrier.wait()  # BrokenBarrierError after MEET seconds alone
            self.order.append("met")
        return super().start(name)


class World:
    def __init__(self, tmp: Path, hosts: int = 2, meet: str = "shop-web-canary", parallel: int = 4,
                 worker: dict[str, Any] | None = None) -> None:
        raw: dict[str, Any] = {
            "app": "shop", "registry": REGISTRY, "state_dir": str(tmp / "state"), "parallel_hosts": parallel,
            "hosts": [{"name": f"app{n}", "docker": f"tcp://fake-{n}:2375", "address": f"127.0.0.{n}"}
                      for n in range(1, hosts + 1)],
            "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": 18082},
                                 "health": {"retries": 5, "interval": "0.05s"}}}}
        if worker is not None:
            raw["services"]["consumer"] = worker
        (tmp / "ps.yaml").write_text(yaml.safe_dump(raw))
        self.config: Config = load_config(tmp / "ps.yaml")
        self.registry = FakeRegistry()
        self.barrier = threading.Barrier(hosts, timeout=MEET)
        self.hosts = {h.name: MeetingHost(Host(h.name, docker=h.docker, address=h.address), self.registry,
                                          self.barrier, meet) for h in self.config.hosts}
        for service in ("web", "consumer"):
            first = self.hosts["app1"].add_image(f"{REGISTRY}/shop/{service}:{B1}")
            second = self.hosts["app1"].add_image(f"{REGISTRY}/shop/{service}:{B2}")
            for engine in list(self.hosts.values())[1:]:
                engine.add_image(f"{REGISTRY}/shop/{service}:{B1}", first.id)
                engine.add_image(f"{REGISTRY}/shop/{service}:{B2}", second.id)
        self.said: list[str] = []
        self.lock = threading.Lock()

    def say(self, line: str) -> None:
        with self.lock:
            self.said.append(line)

    def rearm(self) -> None:
        for engine in self.hosts.values():
            engine.met = False
        self.barrier.reset()

    def build(self, host: str, name: str = "shop-web-canary") -> str | None:
        c = self.hosts[host].named(name)
        return c.labels.get(s.LABEL_BUILD_ID) if c is not None and c.status == "running" else None


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    with factory.installed(FakeAdapters(dict(w.hosts), w.registry)):
        yield w


# ---------------------------------------------------------------- deploy-env


def test_deploy_env_starts_the_slot_on_both_hosts_at_once(world: World) -> None:
    result = deploy_slot(world.config, "canary", None, B1, say=world.say)
    assert [c.action for c in result.changes] == ["created", "created"] and not world.barrier.broken
    assert all(e.order == ["waits", "met"] for e in world.hosts.values())
    assert world.build("app1") == world.build("app2") == B1
    lines = [line for line in world.said if "shop-web-canary created" in line]
    assert [line.split(":")[0] for line in lines] == ["host app1", "host app2"]  # in host order


def test_a_failed_start_on_host_2_puts_host_1s_previous_slot_back_as_one_by_one_did(world: World) -> None:
    deploy_slot(world.config, "canary", None, B1)
    before = {n: world.hosts[n].named("shop-web-canary").id for n in world.hosts}  # type: ignore[union-attr]
    world.rearm()
    world.hosts["app2"].fail_start["shop-web-canary"] = "OCI runtime create failed: boom"
    with pytest.raises(CheckFailed) as err:
        deploy_slot(world.config, "canary", None, B2, say=world.say)
    text = err.value.message
    assert not world.barrier.broken  # host 1 was swapping at the same time as host 2 failed
    assert "host app2: could not start shop-web-canary: OCI runtime create failed: boom" in text
    assert "host app1: previous shop-web-canary runs again" in text
    assert "host app2: previous shop-web-canary runs again" in text
    for name, engine in world.hosts.items():
        c = engine.named("shop-web-canary")
        assert c is not None and c.id == before[name] and c.status == "running"
        assert c.labels[s.LABEL_BUILD_ID] == B1 and len(engine.containers) == 1


def test_parallel_hosts_1_is_one_host_after_the_other(tmp_path: Path) -> None:
    w = World(tmp_path, parallel=1)
    w.barrier = threading.Barrier(2, timeout=0.2)
    for engine in w.hosts.values():
        engine.barrier = w.barrier
    with factory.installed(FakeAdapters(dict(w.hosts), w.registry)), \
            pytest.raises(threading.BrokenBarrierError):
        deploy_slot(w.config, "canary", None, B1)  # host 1 waits alone for host 2: the barrier breaks
    assert w.hosts["app2"].order == []  # host 2 never started: host 1 failed first
    assert w.hosts["app1"].named("shop-web-canary") is None  # and host 1's slot was cleaned up


def test_parallel_hosts_is_checked(tmp_path: Path) -> None:
    (tmp_path / "ps.yaml").write_text(yaml.safe_dump({
        "app": "shop", "registry": REGISTRY, "parallel_hosts": 0,
        "services": {"web": {"context": ".", "slots": {"stable": 18081}}}}))
    with pytest.raises(ConfigError, match="parallel_hosts"):
        load_config(tmp_path / "ps.yaml")


# ---------------------------------------------------------------- workers


WORKER = {"context": ".", "kind": "worker", "replicas": 1, "health": {"retries": 20, "interval": "0.05s"}}


def test_workers_replace_their_replicas_on_both_hosts_at_once(tmp_path: Path) -> None:
    w = World(tmp_path, meet="shop-consumer-1", worker=WORKER)
    with factory.installed(FakeAdapters(dict(w.hosts), w.registry)):
        result = deploy_workers(w.config, [w.config.service("consumer")], B1)
    assert [(c.host, c.action) for c in result.changes] == [("app1", "created"), ("app2", "created")]
    assert not w.barrier.broken and all(e.order == ["waits", "met"] for e in w.hosts.values())


def test_a_worker_failing_on_host_2_leaves_host_1_as_one_by_one_did(tmp_path: Path) -> None:
    w = World(tmp_path, meet="shop-consumer-1", worker=WORKER)
    with factory.installed(FakeAdapters(dict(w.hosts), w.registry)):
        deploy_workers(w.config, [w.config.service("consumer")], B1)
        w.rearm()
        old = w.hosts["app2"].named("shop-consumer-1").id  # type: ignore[union-attr]
        w.hosts["app2"].fail_start["shop-consumer-1"] = "OCI runtime create failed: boom"
        with pytest.raises(CheckFailed) as err:
            deploy_workers(w.config, [w.config.service("consumer")], B2)
    assert not w.barrier.broken
    assert err.value.message.startswith("host app2: Docker: OCI runtime create failed: boom")
    # one by one, host 1 had finished before host 2 began: it keeps the new build; host 2 got its old one
    assert w.build("app1", "shop-consumer-1") == B2
    c = w.hosts["app2"].named("shop-consumer-1")
    assert c is not None and c.id == old and c.status == "running" and c.labels[s.LABEL_BUILD_ID] == B1


# ---------------------------------------------------------------- gates and requires


class MeetingProber:
    """Answers 200, but each host's first probe waits until every host has probed once."""

    def __init__(self, barrier: threading.Barrier) -> None:
        self.barrier = barrier
        self.seen: set[str] = set()

    def prepare(self) -> None:
        """Nothing to set up."""

    def probe(self, target: HealthTarget, policy: GatePolicy) -> ProbeResult:
        host = target.docker.name if target.docker else "?"
        if host not in self.seen:
            self.seen.add(host)
            self.barrier.wait()
        return up(target.label)

    def close(self) -> None:
        """Nothing to release."""


def test_the_health_gate_runs_on_every_host_at_once_with_lines_naming_the_host(world: World) -> None:
    deploy_slot(world.config, "canary", None, B1)
    prober = MeetingProber(threading.Barrier(2, timeout=MEET))
    ops = RealOps(world.config, None, world.say, world.say, "stable", prober=lambda: prober)
    verdict = ops.gate("canary", world.config.service("web"))
    assert verdict.healthy and not prober.barrier.broken, verdict.reason
    tries = [line for line in world.said if "web/canary try" in line]
    assert sorted(line.split(":")[0].strip() for line in tries) == ["host app1", "host app2"]


class HostTwoDown(MeetingProber):
    """Host app2 answers 503 (not ready), every other host 200."""

    def probe(self, target: HealthTarget, policy: GatePolicy) -> ProbeResult:
        if target.docker and target.docker.name == "app2":
            return ProbeResult(target.label, False, "503", 1.0, "HTTP 503 (want 2xx)", not_ready=True)
        return up(target.label)


def test_a_gate_failing_on_one_host_names_it() -> None:
    targets = [HealthTarget.url(f"http://127.0.0.{n}:18082/health", docker=Host(f"app{n}")) for n in (1, 2)]
    result = gate_hosts(targets, GatePolicy(retries=3, interval=0.01, fast_retry=0.0),
                        prober=lambda: HostTwoDown(threading.Barrier(1)))
    assert not result.healthy and result.reason == "host app2: HTTP 503 (want 2xx)" and result.tries == 3


def test_requires_waits_on_every_host_at_once(tmp_path: Path) -> None:
    w = World(tmp_path)
    raw = yaml.safe_load(Path(w.config.source).read_text())
    raw["services"]["web"]["requires"] = ["db"]
    Path(w.config.source).write_text(yaml.safe_dump(raw))
    config = load_config(w.config.source)
    entered = threading.Barrier(2, timeout=MEET)
    for engine in w.hosts.values():
        engine.add_container("db", "postgres:16")
        original = engine.container

        def container(name: str, original: Any = original) -> ContainerInfo | None:
            if name == "db" and threading.current_thread().name.startswith("ps-host"):
                entered.wait()  # every host asks at the same time
            return original(name)

        engine.container = container  # type: ignore[method-assign]
    with factory.installed(FakeAdapters(dict(w.hosts), w.registry)):
        lines = wait_required(config, [config.service("web")])
    assert lines == ["web: db ready on host app1", "web: db ready on host app2"] and not entered.broken


def test_lines_said_from_several_hosts_at_once_stay_whole(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline_steps.cli.output import Output

    out = Output()
    lines = {f"host app{n}: " + f"{n}" * 300 for n in range(8)}

    def work(line: str) -> None:
        for _ in range(200):
            out.say(line)

    each_host(sorted(lines), work, limit=8)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 8 * 200 and set(printed) == lines
