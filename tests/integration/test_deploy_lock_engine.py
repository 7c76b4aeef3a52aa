"""issue 12: the deploy lock on the engine, against the bed's real engine: two CI agents (two state
dirs) exclude each other, a killed holder's lock goes stale (at once on this agent, after its lease
on another) and is taken over, `ps lock release [--force]`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.ports import unique

HOLDER = textwrap.dedent("""
    import select, sys
    from pipeline_steps.config import Host
    from pipeline_steps.deploy.lock import DeployLock
    from pipeline_steps.deploy.lock.engine import EngineLock
    state_dir, app, docker = sys.argv[1:4]
    lock = DeployLock(state_dir, app, deploy_type="canary-auto",
                      engine=EngineLock(Host("local", docker=docker), app))
    lock.acquire()
    print("held", flush=True)
    select.select([sys.stdin], [], [], 120)  # held until killed (or told)
    lock.release()
""")
A = "https://ci.example/shop/-/pipelines/41"
B = "https://ci.example/shop/-/pipelines/42"


def ci(pipeline: str) -> dict[str, str]:
    return {"CI_COMMIT_SHA": "c" * 40, "CI_PIPELINE_URL": pipeline, "CI_PIPELINE_ID": pipeline[-2:],
            "CI_JOB_URL": f"{pipeline}/jobs/1"}


class Agents:
    """One app on the bed's engine, configured twice: ps.yaml (agent 1) and agent2.yaml (agent 2), each
    with its own state dir, as two CI agents would have."""

    def __init__(self, app: str, workdir: Path, docker: str, ps: Any, client: Any) -> None:
        self.app, self.workdir, self.docker, self.ps, self.client = app, workdir, docker, ps, client
        self.procs: list[subprocess.Popen[str]] = []
        base = {"app": app, "registry": "127.0.0.1:5000",
                "hosts": [{"name": "local", "docker": docker}],
                "services": {"web": {"context": ".", "slots": {"stable": 8081, "canary": 8082}}}}
        for name, state in (("ps.yaml", "state"), ("agent2.yaml", "agent2-state")):
            (workdir / name).write_text(yaml.safe_dump({**base, "state_dir": str(workdir / state)}))

    def one(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.ps(*args, env=env)

    def two(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.ps("--config", "agent2.yaml", *args, env=env)

    def labels(self) -> dict[str, str] | None:
        """The lock volume's labels on the engine (None: no lock)."""
        import docker.errors

        try:
            return dict(self.client.volumes.get(f"ps-lock-{self.app}").attrs.get("Labels") or {})
        except docker.errors.NotFound:
            return None

    def holder(self, state_dir: str, **env: str) -> subprocess.Popen[str]:
        """A process holding the lock as a run would (its own state dir: a third agent)."""
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(self.workdir / state_dir), self.app,
                                 self.docker], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**self.ps.env, **env}, cwd=self.workdir)
        self.procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe:
                    pipe.close()
        for volume in self.client.volumes.list(filters={"label": f"ps.lock.app={self.app}"}):
            volume.remove(force=True)


@pytest.fixture
def agents(engine: Any, docker_client: Any, docker_ps: Any, workdir: Path) -> Iterator[Agents]:
    bed = Agents(unique("lockapp"), workdir, engine.base_url, docker_ps, docker_client)
    yield bed
    bed.close()


def _json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pipeline_of_another_agent_is_refused_naming_it(agents: Agents) -> None:
    done = agents.one("pipeline", "begin", "--deploy-type", "stable", "--no-notify", env=ci(A))
    assert done.returncode == 0, done.stderr
    labels = agents.labels()
    assert labels is not None and labels["ps.lock.kind"] == "pipeline" and labels["ps.lock.pipeline"] == A
    refused = agents.two("pipeline", "begin", "--deploy-type", "stable", "--no-notify", env=ci(B))
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith(f"ps: deploy lock of app {agents.app} is leased to pipeline {A}")
    assert "(engine lock on host local)" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    # a later stage of pipeline A on agent 2 is admitted; a by-hand step there is refused
    later = agents.two("pipeline", "begin", "--deploy-type", "stable", "--no-notify", env=ci(A))
    assert later.returncode == 0, later.stderr
    status = _json(agents.two("--json", "lock", "status"))
    assert status["engine"]["state"] == "held" and status["engine"]["holder"]["pipeline_url"] == A
    release = agents.two("lock", "release")
    assert release.returncode == 1 and f"leased to pipeline {A}" in release.stderr
    assert agents.labels() is not None
    done = agents.one("--json", "pipeline", "end", "--status", "success", "--no-notify", env=ci(A))
    assert done.returncode == 0, done.stderr
    assert agents.labels() is None
    after = agents.two("pipeline", "begin", "--deploy-type", "stable", "--no-notify", env=ci(B))
    assert after.returncode == 0, after.stderr  # agent 2's record of A's lease gave way to the engine
    forced = agents.one("--json", "lock", "release", "--force")
    assert forced.returncode == 0, forced.stderr
    assert _json(forced)["action"] == "ended-lease" and agents.labels() is None


def test_killed_holder_on_this_agent_is_stale_at_once(agents: Agents) -> None:
    holder = agents.holder("agent3-state")
    labels = agents.labels()
    assert labels is not None and labels["ps.lock.pid"] == str(holder.pid)
    status = agents.one("lock", "status")
    assert status.returncode == 0 and f"held by pid {holder.pid} on " in status.stdout
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    status = agents.one("--json", "lock", "status")
    data = _json(status)
    assert data["engine"]["state"] == "stale"
    assert data["engine"]["note"] == f"pid {holder.pid} on {labels['ps.lock.host']} is gone"
    done = agents.two("--json", "lock", "release")
    assert done.returncode == 0, done.stderr
    assert _json(done)["action"] == "cleared-stale" and agents.labels() is None


def test_killed_holder_on_another_agent_is_taken_over_after_its_lease(agents: Agents) -> None:
    holder = agents.holder("agent3-state", PS_LOCK_AGENT="agent-3", PS_LOCK_LEASE="3s")
    labels = agents.labels()
    assert labels is not None and labels["ps.lock.host"] == "agent-3" and labels["ps.lock.lease"] == "3"
    holder.send_signal(signal.SIGKILL)  # agent 3 is gone: nobody renews its lease
    killed = time.time()
    holder.wait(timeout=10)
    expires = float(labels["ps.lock.expires"])
    status = _json(agents.one("--json", "lock", "status"))
    if time.time() < expires - 0.5:  # read before the lease ran out: the dead holder still counts
        assert status["engine"]["state"] == "held", status
    done = agents.two("pipeline", "begin", "--deploy-type", "stable", "--no-notify", env=ci(B))
    taken = time.time()
    assert done.returncode == 0, done.stderr
    assert f"took over the stale engine lock of pid {holder.pid} on agent-3" in done.stderr
    assert "lease ran out" in done.stderr
    assert taken >= expires - 0.5 and taken - killed < 60
    now = agents.labels()
    assert now is not None and now["ps.lock.pipeline"] == B and now["ps.lock.kind"] == "pipeline"
    assert agents.two("pipeline", "end", "--status", "success", "--no-notify", env=ci(B)).returncode == 0
    assert agents.labels() is None


def test_a_live_holder_is_refused_then_forced(agents: Agents) -> None:
    holder = agents.holder("agent3-state", PS_LOCK_AGENT="agent-3")
    refused = agents.one("lock", "release")
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"ps: deploy lock of app {agents.app} is held by live pid {holder.pid} "
                                     "on agent-3")
    forced = agents.one("--json", "lock", "release", "--force")
    assert forced.returncode == 0, forced.stderr
    assert _json(forced)["action"] == "removed-engine-lock" and agents.labels() is None
    assert holder.poll() is None  # another agent's process is not signalled
