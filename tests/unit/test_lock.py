"""The deploy lock across real processes: waiting, naming the holder, stale records, release."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.deploy.lock import DeployLock, kernel_holders
from pipeline_steps.errors import CheckFailed

REPO = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent("""
    import select, sys
    from pipeline_steps.deploy.lock import DeployLock
    state_dir, hold = sys.argv[1], float(sys.argv[2])
    lock = DeployLock(state_dir, "shop", deploy_type="canary-auto", timezone="Asia/Seoul")
    lock.acquire(wait=float(sys.argv[3]) if len(sys.argv) > 3 else 0)
    print("held", flush=True)
    select.select([sys.stdin], [], [], hold)  # held until told (a line on stdin), at most `hold` s
    lock.release()
    print("released", flush=True)
""")


class Holders:
    """Starts holder processes (another `ps deploy`, as far as the lock can tell) and reaps them."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, hold: float = 30.0, **env: str) -> subprocess.Popen[str]:
        full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "USER": "alice",
                    "CI_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567",
                    "CI_PIPELINE_URL": "https://gitlab.example.com/shop/-/pipelines/42", **env}
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(self.state_dir), str(hold)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=full_env)
        self.procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        return proc

    @staticmethod
    def release(proc: subprocess.Popen[str]) -> None:
        """Tell a holder to release the lock now."""
        assert proc.stdin is not None
        proc.stdin.write("release\n")
        proc.stdin.flush()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe:
                    pipe.close()


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[Holders]:
    h = Holders(tmp_path / "state")
    yield h
    h.close()


def lock_of(tmp_path: Path, **kw: Any) -> DeployLock:
    return DeployLock(tmp_path / "state", "shop", **kw)


def test_second_process_waits_then_fails_naming_the_holder(tmp_path: Path, holders: Holders) -> None:
    holder = holders.start()
    lock = lock_of(tmp_path)
    started = time.monotonic()
    with pytest.raises(CheckFailed) as failed:
        lock.acquire(wait=0.6, poll=0.05)
    waited = time.monotonic() - started
    assert 0.6 <= waited < 5
    message = failed.value.message
    assert message.startswith(f"deploy lock of app shop is held by pid {holder.pid} (alice, "
                              "https://gitlab.example.com/shop/-/pipelines/42) running canary-auto since ")
    assert "+09:00" in message and "waited 0.6s" in message
    assert failed.value.exit_code == 1
    result: dict[str, Any] = failed.value.result or {}
    assert result["lock"]["state"] == "held"
    assert not lock.held


def test_waiter_gets_the_lock_once_the_holder_finishes(tmp_path: Path, holders: Holders,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    holder = holders.start()
    lock = lock_of(tmp_path, pipeline_url="https://ci/p/2", user="bob")
    try_lock = lock._try_lock

    told: list[bool] = []

    def try_then_release(fd: int, shared: bool = False) -> bool:  # the holder lets go once we wait
        got = try_lock(fd, shared)
        if not got and not told:
            told.append(True)
            holders.release(holder)
        return got

    monkeypatch.setattr(lock, "_try_lock", try_then_release)
    with lock.acquire(wait=10, poll=0.05):
        assert holder.wait(timeout=10) == 0
        record = json.loads((tmp_path / "state" / "deploy.lock.json").read_text())
        assert record["pid"] == os.getpid() and record["user"] == "bob"
        assert record["pipeline_url"] == "https://ci/p/2"
        assert lock.took_over is None  # the holder cleaned up its record
    assert not (tmp_path / "state" / "deploy.lock.json").exists()
    assert lock_of(tmp_path).status().state == "free"
    assert told  # the waiter did wait for the holder


def test_killed_holder_leaves_a_stale_record_that_is_taken_over(tmp_path: Path, holders: Holders) -> None:
    holder = holders.start()
    assert lock_of(tmp_path).status().state == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    status = lock_of(tmp_path).status()
    assert status.state == "stale"
    assert status.holder is not None and status.holder.pid == holder.pid
    assert status.note == f"pid {holder.pid} is gone"
    assert "stale record of pid" in status.describe()
    lock = lock_of(tmp_path)
    lock.acquire(wait=0)  # no waiting: the kernel freed the flock when the holder died
    try:
        assert lock.took_over is not None and lock.took_over.pid == holder.pid
        assert lock.status().state == "held"
    finally:
        lock.release()


def test_holder_record_has_who_where_and_since(tmp_path: Path, holders: Holders) -> None:
    holder = holders.start()
    status = lock_of(tmp_path).status()
    assert status.state == "held" and status.holder is not None
    h = status.holder
    assert (h.pid, h.user, h.deploy_type, h.app) == (holder.pid, "alice", "canary-auto", "shop")
    assert h.pipeline_url == "https://gitlab.example.com/shop/-/pipelines/42"  # from the CI context
    assert h.host == os.uname().nodename
    assert h.since.endswith("+09:00")
    assert "token" not in status.as_dict()["holder"]
    assert kernel_holders(tmp_path / "state" / "deploy.lock") == {holder.pid}


def test_two_lock_objects_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    first = lock_of(tmp_path).acquire()
    try:
        with pytest.raises(CheckFailed, match=f"held by pid {os.getpid()}"):
            lock_of(tmp_path).acquire(wait=0.2, poll=0.05)
        assert first.acquire() is first  # re-acquiring what we hold is a no-op
    finally:
        first.release()
    with lock_of(tmp_path) as again:
        assert again.held
    assert not again.held


def test_release_clears_a_stale_record_only(tmp_path: Path, holders: Holders) -> None:
    assert lock_of(tmp_path).release().action == "nothing"
    holder = holders.start()
    with pytest.raises(CheckFailed, match=f"held by live pid {holder.pid}"):
        lock_of(tmp_path).release()
    assert holder.poll() is None  # refusing did not touch the holder
    holder.kill()
    holder.wait(timeout=10)
    result = lock_of(tmp_path).release()
    assert result.action == "cleared-stale" and result.holder is not None
    assert not (tmp_path / "state" / "deploy.lock.json").exists()
    assert lock_of(tmp_path).status().state == "free"


def test_forced_release_stops_a_live_holder(tmp_path: Path, holders: Holders) -> None:
    holder = holders.start()
    result = lock_of(tmp_path).release(force=True, wait=10)
    assert result.action == "signalled"
    assert holder.wait(timeout=10) == -signal.SIGTERM
    assert lock_of(tmp_path).status().state == "free"
    assert not (tmp_path / "state" / "deploy.lock.json").exists()


def test_releasing_our_lock_keeps_a_record_that_is_not_ours(tmp_path: Path) -> None:
    lock = lock_of(tmp_path).acquire()
    record = tmp_path / "state" / "deploy.lock.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "token": "someone-else"}))
    assert lock.release().action == "released"
    assert record.exists()


def test_lock_held_without_a_record_names_an_unknown_process(tmp_path: Path) -> None:
    lock = lock_of(tmp_path).acquire()
    try:
        (tmp_path / "state" / "deploy.lock.json").unlink()
        with pytest.raises(CheckFailed, match="held by an unknown process"):
            lock_of(tmp_path).acquire(wait=0)
    finally:
        lock.release()


# ---------------------------------------------------------------- the CLI


def test_cli_lock_status_and_release(ps: Any, project: Callable[..., Path], workdir: Path) -> None:
    project({"app": "shop", "registry": "127.0.0.1:5000", "state_dir": "state",
             "services": {"web": {"context": ".", "slots": {"stable": 8081, "canary": 8082}}}})
    done = ps("lock", "status")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "deploy lock of app shop is free"

    holders = Holders(workdir / "state")
    try:
        holder = holders.start()
        done = ps("--json", "lock", "status")
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert data["step"] == "lock" and data["state"] == "held"
        assert data["holder"]["pid"] == holder.pid
        assert data["holder"]["pipeline_url"] == "https://gitlab.example.com/shop/-/pipelines/42"

        done = ps("lock", "release")
        assert done.returncode == 1
        assert done.stderr.startswith(f"ps: deploy lock of app shop is held by live pid {holder.pid}")
        assert "Traceback" not in done.stderr

        holder.kill()
        holder.wait(timeout=10)
        done = ps("lock", "status")
        assert done.returncode == 0 and "stale record of pid" in done.stdout
        done = ps("--json", "lock", "release")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["action"] == "cleared-stale"
        assert ps("lock", "status").stdout.strip() == "deploy lock of app shop is free"
    finally:
        holders.close()


def test_cli_lock_needs_a_config(ps: Any) -> None:
    done = ps("lock", "status")
    assert done.returncode == 2
    assert "config file not found" in done.stderr and "Traceback" not in done.stderr


def test_cli_lock_help_explains_force(ps: Any) -> None:
    done = ps("lock", "release", "--help")
    assert done.returncode == 0
    assert "cannot be broken from outside" in done.stdout and "SIGTERM" in done.stdout
