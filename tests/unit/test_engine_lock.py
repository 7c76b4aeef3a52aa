"""issue 12: the deploy lock on the first host's engine (a labelled volume), against FakeDockerHost.

Two agents are two EngineLock/DeployLock objects with their own state dirs and agent names over one
fake engine: taking, held (naming the holder), stale take-over (also when two agents race for it),
release refused for someone else's lock, --force, the heartbeat, and a pipeline's lease across agents.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.adapters.fakes import FakeDockerHost
from pipeline_steps.adapters.interfaces import VolumeInfo
from pipeline_steps.config import Host
from pipeline_steps.deploy.lock import DeployLock, LeaseRefused
from pipeline_steps.deploy.lock.engine import EngineLock, run_lease, volume_name
from pipeline_steps.errors import BadInput, CheckFailed
from pipeline_steps.waiting import poll_until

A = "https://ci.example/shop/pipelines/1"
B = "https://ci.example/shop/pipelines/2"


@pytest.fixture
def fake() -> FakeDockerHost:
    return FakeDockerHost(Host("web1"))


def engine(fake: FakeDockerHost, agent: str) -> EngineLock:
    return EngineLock(fake.host, "shop", docker=fake, agent=agent)


def agent(tmp_path: Path, fake: FakeDockerHost, name: str, *, pipeline: str | None = None,
          deploy_type: str | None = "canary-auto", warnings: list[str] | None = None) -> DeployLock:
    """A DeployLock of one CI agent: its own state dir, its own name, the shared engine."""
    sink = warnings if warnings is not None else []
    return DeployLock(tmp_path / name, "shop", deploy_type=deploy_type, pipeline_url=pipeline or "",
                      user=name.replace("agent-", "user-"), engine=engine(fake, name), warn=sink.append)


def lock_labels(fake: FakeDockerHost) -> dict[str, str]:
    found = fake.named_volumes.get(volume_name("shop"))
    assert found is not None, sorted(fake.named_volumes)
    return dict(found.labels)


def test_the_lock_is_a_labelled_volume_on_the_engine(tmp_path: Path, fake: FakeDockerHost,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PS_LOCK_LEASE", "45s")
    lock = agent(tmp_path, fake, "agent-a", pipeline=A).acquire()
    try:
        labels = lock_labels(fake)
        assert labels["ps.lock.host"] == "agent-a" and labels["ps.lock.kind"] == "run"
        assert labels["ps.lock.pipeline"] == A and labels["ps.lock.type"] == "canary-auto"
        assert labels["ps.lock.user"] == "user-a" and labels["ps.lock.since"].endswith("+09:00")
        assert labels["ps.lock.lease"] == "45" and len(labels["ps.lock.token"]) == 16
        assert 40 < float(labels["ps.lock.expires"]) - time.time() <= 45.01  # expires is rounded to ms
        status = lock.status()
        assert status.engine is not None and status.engine.state == "held"
    finally:
        lock.release()
    assert volume_name("shop") not in fake.named_volumes
    assert fake.named_volumes == {}  # no beat or tombstone left behind


def test_second_agent_is_refused_naming_the_holder(tmp_path: Path, fake: FakeDockerHost) -> None:
    first = agent(tmp_path, fake, "agent-a", pipeline=A).acquire()
    try:
        started = time.monotonic()
        with pytest.raises(CheckFailed) as failed:
            agent(tmp_path, fake, "agent-b", deploy_type="rollback").acquire(wait=0.6, poll=0.05)
        assert time.monotonic() - started >= 0.6
        message = failed.value.message
        pid = first.holder.pid if first.holder else 0
        assert message.startswith(f"deploy lock of app shop is held by pid {pid} on agent-a (user-a, {A}) "
                                  "running canary-auto since ")
        assert "(engine lock on host web1) (waited 0.6s)" in message and failed.value.exit_code == 1
        assert not (tmp_path / "agent-b" / "deploy.lock.json").exists()  # its kernel lock was given back
        assert lock_labels(fake)["ps.lock.host"] == "agent-a"
    finally:
        first.release()
    with agent(tmp_path, fake, "agent-b").acquire():
        assert lock_labels(fake)["ps.lock.host"] == "agent-b"


def test_waiter_gets_the_lock_when_the_holder_lets_go(tmp_path: Path, fake: FakeDockerHost) -> None:
    first = agent(tmp_path, fake, "agent-a").acquire()
    second = agent(tmp_path, fake, "agent-b")
    real = fake.create_volume
    tries: list[str] = []

    def create_volume(name: str, labels: Any) -> VolumeInfo:
        if name == volume_name("shop") and labels.get("ps.lock.host") == "agent-b":
            tries.append(name)
            if len(tries) == 2:
                first.release()  # the first deploy ends while the second waits
        return real(name, labels)

    fake.create_volume = create_volume  # type: ignore[method-assign]
    with second.acquire(wait=10, poll=0.05):
        assert lock_labels(fake)["ps.lock.host"] == "agent-b"
    assert len(tries) == 2  # refused once, then taken once the first let go


def test_expired_lease_is_stale_and_taken_over(tmp_path: Path, fake: FakeDockerHost) -> None:
    gone = engine(fake, "agent-a")
    holder = gone.new_holder("run", lease=60, pid=4242, user="user-a", deploy_type="stable", since="then")
    assert gone.acquire(holder)[0] == "took"
    gone.renew(holder, lease=-1)  # its last beat: the lease ran out a second ago (the agent is gone)
    state = engine(fake, "agent-b").state()
    assert state.state == "held"  # the lock's own expiry is still ahead: beats only ever extend it
    fake.named_volumes[volume_name("shop")] = VolumeInfo(
        volume_name("shop"), {**lock_labels(fake), "ps.lock.expires": f"{time.time() - 5:.3f}"})
    state = engine(fake, "agent-b").state()
    assert state.state == "stale" and state.note and "lease ran out" in state.note
    warnings: list[str] = []
    with agent(tmp_path, fake, "agent-b", warnings=warnings).acquire() as taker:
        assert lock_labels(fake)["ps.lock.host"] == "agent-b"
        assert taker.engine is not None and taker.engine.took_over is not None
        assert taker.engine.took_over.pid == 4242
    assert any("took over the stale engine lock of pid 4242 on agent-a" in w for w in warnings)
    assert fake.named_volumes == {}  # the stale lock's beat went with it


def test_a_dead_pid_on_this_agent_is_stale_at_once(tmp_path: Path, fake: FakeDockerHost) -> None:
    import socket
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = int(done.stdout)
    here = EngineLock(fake.host, "shop", docker=fake)  # this machine's host name
    here.acquire(here.new_holder("run", lease=600, pid=dead))
    state = here.state()
    assert state.state == "stale" and state.note == f"pid {dead} on {socket.gethostname()} is gone"


def test_two_agents_racing_for_a_stale_lock_one_wins(tmp_path: Path, fake: FakeDockerHost) -> None:
    old = engine(fake, "agent-gone")
    stale = old.new_holder("run", lease=-1, pid=1)  # its lease ran out a second ago
    old.acquire(stale)
    a, b = engine(fake, "agent-a"), engine(fake, "agent-b")
    mine_a, mine_b = a.new_holder("run", lease=60), b.new_holder("run", lease=60)
    # both saw the stale holder; b starts removing it, a comes in between
    real = fake.create_volume
    done: list[bool] = []

    def interleaved(name: str, labels: Any) -> VolumeInfo:
        got = real(name, labels)
        if name.endswith(f".end-{stale.token}") and labels.get("ps.lock.by") == mine_b.token and not done:
            done.append(True)
            assert a.end(stale.token, by=mine_a.token) is False  # b holds the tombstone: a keeps off
        return got

    fake.create_volume = interleaved  # type: ignore[method-assign]
    assert b.end(stale.token, by=mine_b.token) is True
    fake.create_volume = real  # type: ignore[method-assign]
    assert b.acquire(mine_b)[0] == "took"
    # a, late, tries to remove the stale token again: b's new lock is not touched
    assert a.end(stale.token, by=mine_a.token) is False
    assert lock_labels(fake)["ps.lock.token"] == mine_b.token
    with pytest.raises(CheckFailed, match="held by pid .* on agent-b"):
        a.acquire(mine_a)


def test_a_tombstone_left_by_a_dead_remover_expires(fake: FakeDockerHost) -> None:
    lock = engine(fake, "agent-a")
    holder = lock.new_holder("run", lease=60)
    lock.acquire(holder)
    tomb = f"{volume_name('shop')}.end-{holder.token}"
    fake.create_volume(tomb, {"ps.lock.app": "shop", "ps.lock.token": holder.token, "ps.lock.by": "x",
                              "ps.lock.at": f"{time.time():.3f}"})
    assert lock.end(holder.token, by="y") is False  # someone is removing it right now
    fake.named_volumes[tomb] = VolumeInfo(tomb, {**fake.named_volumes[tomb].labels,
                                                 "ps.lock.at": f"{time.time() - 120:.3f}"})
    assert lock.end(holder.token, by="y") is True
    assert fake.named_volumes == {}


def test_release_refuses_another_agents_lock_and_force_removes_it(tmp_path: Path,
                                                                 fake: FakeDockerHost) -> None:
    first = agent(tmp_path, fake, "agent-a", pipeline=A).acquire()
    other = agent(tmp_path, fake, "agent-b")
    with pytest.raises(CheckFailed) as refused:
        other.release()
    assert "held by live pid" in refused.value.message and "on agent-a" in refused.value.message
    assert "--force removes it" in refused.value.message
    assert lock_labels(fake)["ps.lock.host"] == "agent-a"
    result = other.release(force=True)
    assert result.action == "removed-engine-lock" and result.engine is not None
    assert "removed the engine lock on host web1 of live pid" in result.message
    assert volume_name("shop") not in fake.named_volumes
    first.release()  # the first agent's own release finds its lock gone and leaves the new state alone
    assert other.status().engine is not None and other.status().engine.state == "free"  # type: ignore[union-attr]


def test_release_clears_a_stale_engine_lock(tmp_path: Path, fake: FakeDockerHost) -> None:
    gone = engine(fake, "agent-gone")
    gone.acquire(gone.new_holder("run", lease=60, deploy_type="stable"))
    labels = lock_labels(fake)
    fake.named_volumes[volume_name("shop")] = VolumeInfo(volume_name("shop"),
                                                         {**labels, "ps.lock.expires": "1"})
    status = agent(tmp_path, fake, "agent-b").status()
    assert status.describe().startswith("deploy lock of app shop is free; stale engine lock of pid")
    result = agent(tmp_path, fake, "agent-b").release()
    assert result.action == "cleared-stale" and "cleared the stale engine lock on host web1" in result.message
    assert fake.named_volumes == {}


def test_status_names_the_holder_on_another_agent(tmp_path: Path, fake: FakeDockerHost) -> None:
    with agent(tmp_path, fake, "agent-a", pipeline=A):
        status = agent(tmp_path, fake, "agent-b").status()
        assert status.state == "free"  # this agent's kernel lock
        assert status.engine is not None and status.engine.state == "held"
        text = status.describe()
        assert text.startswith("deploy lock of app shop is held by pid ") and "on agent-a" in text
        assert "(engine lock on host web1, lease" in text
        assert status.as_dict()["engine"]["holder"]["host"] == "agent-a"
        assert "token" not in status.as_dict()["engine"]["holder"]


def test_heartbeat_keeps_a_long_run_held_and_a_killed_one_goes_stale(
        tmp_path: Path, fake: FakeDockerHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PS_LOCK_LEASE", "0.3s")
    lock = agent(tmp_path, fake, "agent-a").acquire()
    watcher = engine(fake, "agent-b")
    beats = lambda: [n for n in fake.named_volumes if ".beat-" in n]  # noqa: E731
    try:
        assert poll_until(lambda: len(beats()) > 0 or None, timeout=5, interval=0.02)
        first_beat = beats()[0]
        assert poll_until(lambda: first_beat not in beats() or None, timeout=5, interval=0.02)
        assert watcher.state().state == "held"  # renewed past its first lease
        assert len(beats()) == 1  # one beat at a time
        heartbeat = lock._heartbeat
        assert heartbeat is not None
        heartbeat.stop()  # the agent dies: nobody renews
        assert poll_until(lambda: watcher.state().state == "stale" or None, timeout=5, interval=0.05)
    finally:
        lock.release()


def test_pipeline_lease_is_shared_across_agents(tmp_path: Path, fake: FakeDockerHost) -> None:
    lease, new, _ = agent(tmp_path, fake, "agent-a", pipeline=A, deploy_type="stable").take_lease(
        label="1", ttl=600)
    assert new and lock_labels(fake)["ps.lock.kind"] == "pipeline"
    assert lock_labels(fake)["ps.lock.pipeline"] == A
    # a later stage of the same pipeline runs on agent b: admitted, and only renews (no second `started`)
    again, new, _ = agent(tmp_path, fake, "agent-b", pipeline=A).take_lease(ttl=600)
    assert not new
    with agent(tmp_path, fake, "agent-b", pipeline=A, deploy_type="set-weights").acquire():
        assert lock_labels(fake)["ps.lock.kind"] == "pipeline"  # a step inside the lease takes nothing
    assert agent(tmp_path, fake, "agent-b", pipeline=A).engine_leased()
    assert agent(tmp_path, fake, "agent-b", pipeline=A).own_lease() is not None
    for other in (B, None):  # another pipeline, a person at a shell, on any agent
        with pytest.raises(LeaseRefused) as refused:
            agent(tmp_path, fake, "agent-c", pipeline=other).acquire(wait=5)
        assert f"leased to pipeline {A} (#1, stable) (from agent-a)" in refused.value.message
        assert "ps lock release --force" in refused.value.message
    with pytest.raises(LeaseRefused):
        agent(tmp_path, fake, "agent-c", pipeline=B).take_lease()
    # the pipeline's end runs on agent b: the lease ends on the engine
    ended = agent(tmp_path, fake, "agent-b", pipeline=A).end_lease()
    assert ended is not None and ended.pipeline_url == A
    assert volume_name("shop") not in fake.named_volumes
    assert agent(tmp_path, fake, "agent-c", pipeline=B).take_lease()[1]


def test_force_ends_another_agents_pipeline_lease(tmp_path: Path, fake: FakeDockerHost) -> None:
    agent(tmp_path, fake, "agent-a", pipeline=A).take_lease()
    with pytest.raises(CheckFailed, match="`ps pipeline end` in that pipeline"):
        agent(tmp_path, fake, "agent-b").release()
    result = agent(tmp_path, fake, "agent-b").release(force=True)
    assert result.action == "ended-lease" and A in result.message
    assert fake.named_volumes == {}


def test_unreachable_engine_leaves_the_kernel_lock_alone(tmp_path: Path, fake: FakeDockerHost) -> None:
    fake.gone.add("create_volume")
    warnings: list[str] = []
    with agent(tmp_path, fake, "agent-a", warnings=warnings).acquire() as lock:
        assert lock.held
    assert len(warnings) == 1
    assert warnings[0].startswith("Docker engine of host web1 (")
    assert "unreachable (deploy lock)" in warnings[0] and warnings[0].endswith("on this agent only")


def test_lease_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_lease({}) == 60.0
    assert run_lease({"PS_LOCK_LEASE": "2m"}) == 120.0
    for bad in ("soon", "0s"):
        with pytest.raises(BadInput, match="PS_LOCK_LEASE"):
            run_lease({"PS_LOCK_LEASE": bad})


def test_engine_lock_off_and_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_steps.config import Config

    config = Config(app="shop", registry="127.0.0.1:5000", services={})
    monkeypatch.setenv("PS_LOCK_ENGINE", "off")
    assert EngineLock.for_config(config) is None
    monkeypatch.setenv("PS_LOCK_ENGINE", "on")
    lock = EngineLock.for_config(config)
    assert lock is not None and lock.host == config.hosts[0] and lock.name == "ps-lock-shop"
    assert volume_name("my app/x") == "ps-lock-my-app-x"
