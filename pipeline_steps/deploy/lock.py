"""The deploy lock: one deployment per app at a time, across processes and CI runners on one host.

The lock itself is an `fcntl.flock` on `<state_dir>/deploy.lock`. The kernel releases it when the
holding process exits, however it exits, so a killed deploy never leaves a held lock behind.
Beside it, `<state_dir>/deploy.lock.json` records who holds it (pid, host, user, pipeline URL, deploy
type, since), written atomically. A record whose flock is free (its writer died) is stale: it is
reported as such and taken over by the next `acquire`.

A flock held by a live process cannot be taken away from outside; `release(force=True)` therefore
asks the holder to stop (SIGTERM to the recorded pid, on this host, when the kernel confirms that pid
holds the lock) and waits for the kernel to free the lock.

A CI pipeline runs its stages as separate processes, so a kernel lock cannot last from its first
changing stage to its last one. For that the lock can be *leased* to a pipeline (`ps pipeline begin`):
`<state_dir>/deploy.lease.json` names the pipeline (its URL), the deploy type and when the lease
expires. While a lease is active, `acquire` (every changing step, `ps deploy`) still takes the flock for
the step's own duration, and then refuses (exit 1, naming the pipeline) unless the caller belongs to
that pipeline. Each step of the pipeline renews the lease for its TTL; `ps pipeline end` gives it back.
A lease past its expiry (the pipeline died without `end`) is stale and taken over by the next one;
`ps lock release --force` ends an active lease by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import secrets
import signal
import socket
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pipeline_steps.adapters.proc import pid_alive
from pipeline_steps.config.objects import DEFAULT_TIMEZONE
from pipeline_steps.errors import BadInput, CheckFailed, PsError
from pipeline_steps.files import atomic_write
from pipeline_steps.waiting import poll_until

if TYPE_CHECKING:
    from pipeline_steps.config import Config

LOCK_FILE = "deploy.lock"
RECORD_FILE = "deploy.lock.json"
LEASE_FILE = "deploy.lease.json"
DEFAULT_LEASE_TTL = 5400.0  # 90 minutes: longer than a pipeline's timeout, renewed by every step


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) the deploy lock."""

    app: str
    pid: int
    host: str
    user: str
    pipeline_url: str | None = None
    deploy_type: str | None = None
    since: str = ""
    token: str = ""

    def describe(self) -> str:
        """`pid 123 (alice, https://ci/pipelines/7) running canary-auto`."""
        who = ", ".join(x for x in (self.user, self.pipeline_url) if x)
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        doing = f" running {self.deploy_type}" if self.deploy_type else ""
        return f"pid {self.pid}{where} ({who}){doing}"

    def public(self) -> dict[str, Any]:
        """The record as shown to users (without the ownership token)."""
        data = asdict(self)
        data.pop("token", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Holder:
        return cls(app=str(data.get("app", "")), pid=int(data.get("pid", 0)), host=str(data.get("host", "")),
                   user=str(data.get("user", "")), pipeline_url=data.get("pipeline_url") or None,
                   deploy_type=data.get("deploy_type") or None, since=str(data.get("since", "")),
                   token=str(data.get("token", "")))


@dataclass(frozen=True)
class Lease:
    """The deploy lock leased to one CI pipeline, from its first changing stage to `ps pipeline end`."""

    app: str
    pipeline_url: str
    deploy_type: str | None = None
    user: str = ""
    host: str = ""
    since: str = ""
    renewed: float = 0.0  # epoch seconds of the last step of the pipeline
    ttl: float = DEFAULT_LEASE_TTL
    label: str | None = None  # CI_PIPELINE_ID / BUILD_TAG, for people
    services: tuple[str, ...] = ()

    @property
    def expires(self) -> float:
        return self.renewed + self.ttl

    def expired(self, now: float | None = None) -> bool:
        """True when the pipeline's last step is older than the TTL (it ended without `end`)."""
        return (time.time() if now is None else now) >= self.expires

    def describe(self) -> str:
        """`pipeline https://ci/pipelines/7 (#1007, canary-auto) since ...`."""
        extra = ", ".join(x for x in (f"#{self.label}" if self.label else None, self.deploy_type) if x)
        left = max(0.0, self.expires - time.time())
        return (f"pipeline {self.pipeline_url}" + (f" ({extra})" if extra else "")
                + f" since {self.since}, lease expires in {left:.0f}s")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["services"] = list(self.services)
        data["expires"] = self.expires
        data["expired"] = self.expired()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lease:
        return cls(app=str(data.get("app", "")), pipeline_url=str(data.get("pipeline_url", "")),
                   deploy_type=data.get("deploy_type") or None, user=str(data.get("user", "")),
                   host=str(data.get("host", "")), since=str(data.get("since", "")),
                   renewed=float(data.get("renewed", 0.0)), ttl=float(data.get("ttl", DEFAULT_LEASE_TTL)),
                   label=data.get("label") or None, services=tuple(data.get("services") or ()))


class LeaseRefused(CheckFailed):
    """The deploy lock is leased to another pipeline (exit 1)."""


@dataclass(frozen=True)
class LockStatus:
    """`held` (a live process holds the flock), `free`, or `stale` (a record left by a dead holder)."""

    app: str
    state: str
    holder: Holder | None
    path: str
    note: str | None = None
    lease: Lease | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"app": self.app, "state": self.state, "path": self.path, "note": self.note,
                "holder": self.holder.public() if self.holder else None,
                "lease": self.lease.as_dict() if self.lease else None}

    def describe(self) -> str:
        """One human line."""
        if self.state == "free":
            return f"deploy lock of app {self.app} is free" + self.lease_text()
        if self.holder is None:
            text = f"deploy lock of app {self.app} is held by an unknown process (no holder record)"
        elif self.state == "stale":
            text = (f"deploy lock of app {self.app} is free; stale record of {self.holder.describe()} "
                    f"since {self.holder.since}")
        else:
            text = (f"deploy lock of app {self.app} is held by {self.holder.describe()} "
                    f"since {self.holder.since}")
            if self.holder.deploy_type:
                text += f" ({self.holder.deploy_type})"
        return text + (f"; {self.note}" if self.note else "") + self.lease_text()

    def lease_text(self) -> str:
        if self.lease is None:
            return ""
        if self.lease.expired():
            return f"; stale lease of {self.lease.describe()} (expired)"
        return f"; leased to {self.lease.describe()}"


@dataclass(frozen=True)
class ReleaseResult:
    app: str
    action: str  # nothing | cleared-stale | released | signalled | ended-lease
    holder: Holder | None
    message: str


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


def _current_user() -> str:
    for var in ("GITLAB_USER_LOGIN", "BUILD_USER_ID", "USER", "LOGNAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _pipeline_url() -> str | None:
    from pipeline_steps import context

    try:
        return context.detect().pipeline_url
    except PsError:
        return None
    except Exception:
        return None


def now_iso(timezone: str) -> str:
    """The current time, ISO 8601 in the configured time zone (seconds)."""
    from zoneinfo import ZoneInfo

    try:
        tz = ZoneInfo(timezone)
    except Exception:
        tz = None
    return datetime.now(tz).astimezone(tz).isoformat(timespec="seconds")


class DeployLock:
    """`with DeployLock(state_dir, app).acquire(wait=60):` - one deployment of `app` at a time."""

    def __init__(self, state_dir: str | os.PathLike[str], app: str, *, timezone: str = DEFAULT_TIMEZONE,
                 deploy_type: str | None = None, pipeline_url: str | None = None,
                 user: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.app = app
        self.timezone = timezone
        self.deploy_type = deploy_type
        self._pipeline_url = pipeline_url
        self._user = user
        self.lock_path = self.state_dir / LOCK_FILE
        self.record_path = self.state_dir / RECORD_FILE
        self.lease_path = self.state_dir / LEASE_FILE
        self._fd: int | None = None
        self.holder: Holder | None = None
        self.took_over: Holder | None = None  # the stale record replaced by the last acquire

    @classmethod
    def for_config(cls, config: Config, deploy_type: str | None = None,
                   pipeline_url: str | None = None) -> DeployLock:
        """The deploy lock of the configured app (state_dir, app and time zone from ps.yaml)."""
        return cls(config.state_dir, config.app, timezone=config.timezone, deploy_type=deploy_type,
                   pipeline_url=pipeline_url)

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
        fd = self._open()

        def attempt() -> None:
            if not self._try_lock(fd):
                raise _Busy()

        try:
            Retrying(stop=stop_after_delay(max(wait, 0.0)), wait=wait_fixed(max(poll, 0.01)),
                     retry=retry_if_exception_type(_Busy), reraise=True)(attempt)
        except _Busy:
            os.close(fd)
            status = self.status()
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
                             user=self._user or _current_user(),
                             pipeline_url=self.pipeline_url,
                             deploy_type=self.deploy_type, since=now_iso(self.timezone),
                             token=secrets.token_hex(8))
        try:
            atomic_write(self.record_path, json.dumps(asdict(self.holder), indent=2) + "\n")
        except OSError as exc:
            self._unlock()
            raise BadInput(f"cannot write deploy lock record {self.record_path}: {exc}") from None
        return self

    def _unlock(self) -> None:
        """Give our lock back: our own record is removed first, then the flock is dropped."""
        if self._fd is None:
            return
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

    # ------------------------------------------------------------------ the pipeline lease

    @property
    def pipeline_url(self) -> str | None:
        """The pipeline this caller belongs to (given, or from the CI context)."""
        if self._pipeline_url is None:
            self._pipeline_url = _pipeline_url() or ""
        return self._pipeline_url or None

    def read_lease(self) -> Lease | None:
        """The lease on disk (None when missing or unreadable)."""
        try:
            data = json.loads(self.lease_path.read_text(encoding="utf-8"))
            return Lease.from_dict(data) if isinstance(data, dict) else None
        except (OSError, ValueError, TypeError):
            return None

    def _check_lease(self) -> None:
        """Under the flock: refuse when an active lease belongs to another pipeline; renew ours."""
        lease = self.read_lease()
        if lease is None or lease.expired():
            return
        if lease.pipeline_url != self.pipeline_url:
            who = f"pipeline {self.pipeline_url}" if self.pipeline_url else "a run outside that pipeline"
            raise LeaseRefused(f"deploy lock of app {self.app} is leased to {lease.describe()}; refused for "
                               f"{who} (wait for it, or `ps lock release --force` ends the lease)",
                               result={"lease": lease.as_dict()})
        self._write_lease(replace(lease, renewed=time.time()))

    def _write_lease(self, lease: Lease) -> None:
        try:
            atomic_write(self.lease_path, json.dumps(lease.as_dict(), indent=2) + "\n")
        except OSError as exc:
            raise BadInput(f"cannot write deploy lease {self.lease_path}: {exc}") from None

    def own_lease(self) -> Lease | None:
        """The active lease when it belongs to this caller's pipeline."""
        lease = self.read_lease()
        mine = lease is not None and bool(self.pipeline_url) and lease.pipeline_url == self.pipeline_url
        if lease is None or lease.expired() or not mine:
            return None
        return lease

    def take_lease(self, *, ttl: float = DEFAULT_LEASE_TTL, wait: float = 0.0, label: str | None = None,
                   services: tuple[str, ...] = ()) -> tuple[Lease, bool, Lease | None]:
        """Lease the lock to this caller's pipeline: (lease, newly taken, stale lease taken over).

        Taking it again from the same pipeline only renews it. Another pipeline's active lease is
        refused (LeaseRefused, exit 1) after waiting up to `wait` seconds for it to end."""
        if not self.pipeline_url:
            raise BadInput("not in a CI pipeline (no CI_PIPELINE_URL / BUILD_URL): nothing to lease the "
                           "deploy lock to")
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

        retrying = Retrying(stop=stop_after_delay(max(wait, 0.0)), wait=wait_fixed(1.0),
                            retry=retry_if_exception_type(LeaseRefused), reraise=True)
        retrying(self.acquire, wait=max(wait, 30.0))
        try:
            current = self.read_lease()
            if current is not None and current.pipeline_url == self.pipeline_url and not current.expired():
                lease = replace(current, renewed=time.time(), ttl=ttl)
                self._write_lease(lease)
                return lease, False, None
            stale = current if current is not None else None
            lease = Lease(app=self.app, pipeline_url=self.pipeline_url, deploy_type=self.deploy_type,
                          user=self._user or _current_user(), host=socket.gethostname(),
                          since=now_iso(self.timezone), renewed=time.time(), ttl=ttl, label=label,
                          services=services)
            self._write_lease(lease)
            return lease, True, stale
        finally:
            self._unlock()

    def end_lease(self, wait: float = 30.0) -> Lease | None:
        """Give back this pipeline's lease (None when it held none: ended, expired, or another's)."""
        if not self.pipeline_url:
            return None
        lease = self.read_lease()
        if lease is None or lease.pipeline_url != self.pipeline_url:
            return None
        fd = self._open()
        try:
            # a step of this pipeline may still be finishing
            if poll_until(lambda: self._try_lock(fd) or None, timeout=wait, interval=0.1) is None:
                raise CheckFailed(f"deploy lock of app {self.app} stays busy; lease of "
                                  f"{lease.describe()} not ended")
            lease = self.read_lease()
            if lease is None or lease.pipeline_url != self.pipeline_url:
                return None
            with contextlib.suppress(FileNotFoundError):
                self.lease_path.unlink()
            return lease
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ status / forced release

    def status(self) -> LockStatus:
        """held / free / stale, with the holder record (read-only: nothing is changed)."""
        status = self._status()
        lease = self.read_lease()
        return replace(status, lease=lease) if lease is not None else status

    def _status(self) -> LockStatus:
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
        stop a live holder only with force (SIGTERM to its pid on this host, then wait for the kernel)."""
        if self._fd is not None:
            holder = self.holder
            self._unlock()
            return ReleaseResult(self.app, "released", holder, f"released deploy lock of app {self.app}")
        status = self.status()
        holder = status.holder
        lease = status.lease
        if lease is not None and status.state != "held":
            if not lease.expired() and not force:
                raise CheckFailed(f"deploy lock of app {self.app} is leased to {lease.describe()}; "
                                  "`ps pipeline end` in that pipeline gives it back (--force ends it now)",
                                  result={"lock": status.as_dict()})
            with contextlib.suppress(FileNotFoundError):
                self.lease_path.unlink()
            with contextlib.suppress(FileNotFoundError):
                if status.state == "stale":
                    self.record_path.unlink()
            what = "stale lease" if lease.expired() else "lease"
            return ReleaseResult(self.app, "ended-lease", holder,
                                 f"ended the {what} of app {self.app} to {lease.describe()}")
        if status.state == "free":
            return ReleaseResult(self.app, "nothing", None, f"deploy lock of app {self.app} is free")
        if status.state == "stale":
            with contextlib.suppress(FileNotFoundError):
                self.record_path.unlink()
            return ReleaseResult(self.app, "cleared-stale", holder,
                                 f"cleared stale deploy lock record of app {self.app} "
                                 f"({holder.describe() if holder else 'unknown'})")
        # held by a live process
        if holder is None:
            raise CheckFailed(f"deploy lock of app {self.app} is held by a process with no holder record; "
                              "find it with `fuser` or /proc/locks", result={"lock": status.as_dict()})
        if not force:
            raise CheckFailed(f"deploy lock of app {self.app} is held by live {holder.describe()} "
                              f"since {holder.since}; a running deploy keeps it until it exits "
                              "(--force stops that process)", result={"lock": status.as_dict()})
        if holder.host != socket.gethostname():
            raise CheckFailed(f"deploy lock of app {self.app} is held by {holder.describe()}: "
                              f"not a process of this host ({socket.gethostname()})",
                              result={"lock": status.as_dict()})
        owners = kernel_holders(self.lock_path)
        if owners is not None and owners and holder.pid not in owners:
            raise CheckFailed(f"deploy lock of app {self.app}: recorded pid {holder.pid} does not hold it "
                              f"(the kernel lists pid {', '.join(map(str, sorted(owners)))}); not signalling",
                              result={"lock": status.as_dict()})
        try:
            os.kill(holder.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise CheckFailed(f"not allowed to signal pid {holder.pid} holding the deploy lock of app "
                              f"{self.app}", result={"lock": status.as_dict()}) from None
        if poll_until(lambda: self.status().state != "held" or None, timeout=wait, interval=0.1) is None:
            raise CheckFailed(f"sent SIGTERM to pid {holder.pid} but it still holds the deploy lock of app "
                              f"{self.app} after {wait:g}s", result={"lock": self.status().as_dict()})
        current = self.read_record()
        if current is not None and current.token == holder.token:
            with contextlib.suppress(FileNotFoundError):
                self.record_path.unlink()
        return ReleaseResult(self.app, "signalled", holder,
                             f"stopped {holder.describe()}; deploy lock of app {self.app} is free")


def _stale_reason(record: Holder) -> str:
    if record.host == socket.gethostname() and not pid_alive(record.pid):
        return f"pid {record.pid} is gone"
    return f"pid {record.pid} no longer holds the lock"
