"""DeployLock: the kernel lock on this agent (a fast first check), then the engine lock where the deploy
acts (engine.py), and the pipeline lease on both (lease.py).

The kernel lock is an `fcntl.flock` on `<state_dir>/deploy.lock`. The kernel releases it when the
holding process exits, however it exits. Beside it, `<state_dir>/deploy.lock.json` records who holds it
(pid, host, user, pipeline URL, deploy type, since), written atomically. A record whose flock is free
(its writer died) is stale: it is reported as such and taken over by the next `acquire`.

Then the engine lock (engine.py), when the config has one: a run takes it with a heartbeat and gives it
back at the end; an engine that does not answer leaves the kernel lock alone in force (a warning).

A flock held by a live process cannot be taken away from outside; `release(force=True)` (release.py)
therefore asks the holder to stop (SIGTERM to the recorded pid, on this host, when the kernel confirms
that pid holds the lock) and waits for the kernel to free the lock. The engine lock of a holder on
another agent is removed by `release(force=True)` (that agent's process is not stopped).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from pipeline_steps.config.objects import DEFAULT_TIMEZONE
from pipeline_steps.deploy.lock.lease import LeaseMixin
from pipeline_steps.deploy.lock.records import (
    LOCK_FILE,
    RECORD_FILE,
    Holder,
    LeaseRefused,
    LockStatus,
    ReleaseResult,
    current_user,
    now_iso,
)
from pipeline_steps.errors import BadInput, CheckFailed, Unreachable
from pipeline_steps.files import atomic_write

if TYPE_CHECKING:
    from pipeline_steps.config import Config
    from pipeline_steps.deploy.lock.engine import EngineLock, Heartbeat
    from pipeline_steps.deploy.lock.records import EngineHolder

# kept importable from here
__all__ = ["DeployLock", "kernel_holders"]


class _Busy(Exception):
    """The flock is held by someone else (internal, drives the bounded wait)."""


def kernel_holders(path: Path) -> set[int] | None:
    """Pids the kernel lists in /proc/locks as holding a flock on `path` (None where unknown)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids: set[int] = set()
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->" or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == want:
                pids.add(int(fields[4]))
        except ValueError:
            continue
    return pids


class DeployLock(LeaseMixin):
    """`with DeployLock(state_dir, app).acquire(wait=60):` - one deployment of `app` at a time.

    With `engine` (DeployLock.for_config gives the first host's), the lock is also taken on that
    engine, so two CI agents exclude each other; an engine that does not answer leaves the kernel
    lock alone in force (`warn` says so)."""

    def __init__(self, state_dir: str | os.PathLike[str], app: str, *, timezone: str = DEFAULT_TIMEZONE,
                 deploy_type: str | None = None, pipeline_url: str | None = None,
                 user: str | None = None, engine: EngineLock | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.state_dir = Path(state_dir)
        self.app = app
        self.timezone = timezone
        self.deploy_type = deploy_type
        self._pipeline_url = pipeline_url
        self._user = user
        self.engine = engine
        self.warnings: list[str] = []  # what was said through `warn` (kept when no one listens)
        self.warn = warn or self.warnings.append
        self.lock_path = self.state_dir / LOCK_FILE
        self.record_path = self.state_dir / RECORD_FILE
        self._fd: int | None = None
        self.holder: Holder | None = None
        self.took_over: Holder | None = None  # the stale record replaced by the last acquire
        self.engine_holder: EngineHolder | None = None  # the engine lock taken (or joined) by acquire
        self.engine_joined = False  # acquire found this pipeline's lease on the engine
        self._engine_took = False
        self._heartbeat: Heartbeat | None = None

    @classmethod
    def for_config(cls, config: Config, deploy_type: str | None = None, pipeline_url: str | None = None,
                   warn: Callable[[str], None] | None = None) -> DeployLock:
        """The deploy lock of the configured app (state_dir, app and time zone from ps.yaml; the engine
        lock on the first host)."""
        from pipeline_steps.deploy.lock.engine import EngineLock

        return cls(config.state_dir, config.app, timezone=config.timezone, deploy_type=deploy_type,
                   pipeline_url=pipeline_url, engine=EngineLock.for_config(config), warn=warn)

    # ------------------------------------------------------------------ helpers

    def _open(self) -> int:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            return os.open(self.lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BadInput(f"cannot open deploy lock {self.lock_path}: {exc.strerror or exc}") from None

    def read_record(self) -> Holder | None:
        """The holder record on disk (None when missing or unreadable)."""
        try:
            data = json.loads(self.record_path.read_text(encoding="utf-8"))
            return Holder.from_dict(data) if isinstance(data, dict) else None
        except (OSError, ValueError, TypeError):
            return None

    def _try_lock(self, fd: int, shared: bool = False) -> bool:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    # ------------------------------------------------------------------ acquire / release

    def acquire(self, wait: float = 0.0, poll: float = 0.1) -> DeployLock:
        """Take the lock, waiting up to `wait` seconds; CheckFailed naming the holder after that."""
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

        if self._fd is not None:
            return self
        started = time.monotonic()
        fd = self._open()

        def attempt() -> None:
            if not self._try_lock(fd):
                raise _Busy()

        try:
            Retrying(stop=stop_after_delay(max(wait, 0.0)), wait=wait_fixed(max(poll, 0.01)),
                     retry=retry_if_exception_type(_Busy), reraise=True)(attempt)
        except _Busy:
            os.close(fd)
            status = self.local_status()
            holder = status.holder
            if holder is None:
                msg = f"deploy lock of app {self.app} is held by an unknown process ({self.lock_path})"
            else:
                msg = (f"deploy lock of app {self.app} is held by {holder.describe()} since {holder.since}")
            waited = f" (waited {wait:g}s)" if wait > 0 else ""
            raise CheckFailed(msg + waited, result={"lock": status.as_dict()}) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        try:
            self._check_lease()
        except LeaseRefused:
            self._fd = None
            os.close(fd)
            raise
        previous = self.read_record()
        self.took_over = previous if previous is not None else None
        self.holder = Holder(app=self.app, pid=os.getpid(), host=socket.gethostname(),
                             user=self._user or current_user(),
                             pipeline_url=self.pipeline_url,
                             deploy_type=self.deploy_type, since=now_iso(self.timezone),
                             token=secrets.token_hex(8))
        try:
            atomic_write(self.record_path, json.dumps(asdict(self.holder), indent=2) + "\n")
        except OSError as exc:
            self._unlock()
            raise BadInput(f"cannot write deploy lock record {self.record_path}: {exc}") from None
        try:
            self._engine_acquire(max(0.0, wait - (time.monotonic() - started)), poll, wait)
        except BaseException:
            self._unlock()
            raise
        return self

    def _engine_acquire(self, wait: float, poll: float, waited: float) -> None:
        """Under the kernel lock: take the engine lock too (a run's, or this pipeline's lease)."""
        from pipeline_steps.deploy.lock.engine import Heartbeat, run_lease

        if self.engine is None:
            return
        assert self.holder is not None
        kind = self._engine_kind
        lease = run_lease() if kind == "run" else self._engine_ttl
        mine = self.engine.new_holder(kind, lease=lease, user=self.holder.user,
                                      pipeline_url=self.pipeline_url, label=self._engine_label,
                                      deploy_type=self.deploy_type, since=self.holder.since)
        try:
            how, holder = self.engine.acquire(mine, wait=wait, poll=max(poll, 0.2), admit=self._ours,
                                              waited=waited)
            if self.engine.took_over is not None:
                gone = self.engine.took_over
                self.warn(f"took over the stale engine lock of {gone.describe()} since {gone.since} "
                          f"({gone.stale_reason() or 'released meanwhile'})")
            if how == "admitted":  # a step of this pipeline: renew its lease, hold nothing more
                self.engine.renew(holder, self._engine_ttl if kind == "pipeline" else None)
        except Unreachable as exc:
            self.warn(f"{exc.message}; the deploy lock holds on this agent only")
            return
        self.engine_holder, self.engine_joined = holder, how == "admitted"
        self._engine_took = how == "took"
        if how == "took" and kind == "run":
            self._heartbeat = Heartbeat(self.engine, holder)

    def _ours(self, holder: EngineHolder) -> bool:
        """The engine lock is this caller's pipeline's lease."""
        mine = self.pipeline_url
        return holder.kind == "pipeline" and bool(mine) and holder.pipeline_url == mine

    def _engine_release(self) -> None:
        """Give back the engine lock a run took (a pipeline's lease stays until `ps pipeline end`)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        holder, took = self.engine_holder, self._engine_took
        self.engine_holder, self.engine_joined, self._engine_took = None, False, False
        if self.engine is None:
            return
        try:
            if holder is not None and took and holder.kind == "run":
                self.engine.end(holder.token, by=holder.token)
        except Unreachable as exc:
            self.warn(f"{exc.message}; the engine lock goes stale in {holder.lease if holder else 0:g}s")
        finally:
            self.engine.close()

    def _unlock(self) -> None:
        """Give our lock back: the engine lock, our own record, then the flock."""
        if self._fd is None:
            return
        try:
            self._engine_release()
        finally:
            current = self.read_record()
            if current is not None and self.holder is not None and current.token == self.holder.token:
                with contextlib.suppress(FileNotFoundError):
                    self.record_path.unlink()
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
            self.holder = None

    def __enter__(self) -> DeployLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._unlock()

    # ------------------------------------------------------------------ status / forced release

    def status(self) -> LockStatus:
        """held / free / stale, with the holder record, the lease and the engine lock (read-only)."""
        status = self.local_status()
        if self.engine is None:
            return status
        engine = self.engine.state()
        lease = status.lease
        if lease is not None and not lease.expired() and engine.state != "unknown" and not (
                engine.holder is not None and engine.state == "held" and engine.holder.kind == "pipeline"
                and engine.holder.pipeline_url == lease.pipeline_url):
            lease = None  # this agent's record of a lease that ended on another agent
        return replace(status, engine=engine, lease=lease)

    def local_status(self) -> LockStatus:
        """The kernel lock and the lease on this agent only."""
        status = self._status()
        lease = self.read_lease()
        return replace(status, lease=lease) if lease is not None else status

    def _status(self) -> LockStatus:
        from pipeline_steps.adapters.proc import pid_alive

        record = self.read_record()
        path = str(self.lock_path)
        if self._fd is not None:
            return LockStatus(self.app, "held", self.holder, path, "held by this process")
        if not self.lock_path.exists():
            return LockStatus(self.app, "stale" if record else "free", record, path,
                              "lock file missing" if record else None)
        fd = self._open()
        try:
            free = self._try_lock(fd, shared=True)
        finally:
            os.close(fd)  # closing drops the probe's shared lock at once
        if free:
            if record is None:
                return LockStatus(self.app, "free", None, path)
            return LockStatus(self.app, "stale", record, path, _stale_reason(record))
        note = None
        if record is not None and record.host == socket.gethostname() and not pid_alive(record.pid):
            owners = kernel_holders(self.lock_path)
            note = (f"recorded pid {record.pid} is gone but the lock is still held"
                    + (f" by pid {', '.join(map(str, sorted(owners)))}" if owners else "")
                    + " (a child that inherited it?)")
        return LockStatus(self.app, "held", record, path, note)

    def release(self, force: bool = False, wait: float = 10.0) -> ReleaseResult:
        """Release the lock this object holds; otherwise (`ps lock release`) clear a stale record, and
        stop a live holder only with force (SIGTERM to its pid on this host, then wait for the kernel);
        then the engine lock: a stale one is cleared, a live holder's removed only with force."""
        if self._fd is not None:
            holder = self.holder
            self._unlock()
            return ReleaseResult(self.app, "released", holder, f"released deploy lock of app {self.app}")
        from pipeline_steps.deploy.lock.release import release_engine, release_local

        local = release_local(self, force, wait)
        return local if self.engine is None else release_engine(self.engine, local, force)


def _stale_reason(record: Holder) -> str:
    from pipeline_steps.adapters.proc import pid_alive

    if record.host == socket.gethostname() and not pid_alive(record.pid):
        return f"pid {record.pid} is gone"
    return f"pid {record.pid} no longer holds the lock"
