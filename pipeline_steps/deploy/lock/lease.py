"""The deploy lock leased to a CI pipeline, from its first changing stage to `ps pipeline end`.

A CI pipeline runs its stages as separate processes (maybe on different agents), so neither a kernel
lock nor a run's engine lock can last from its first changing stage to its last one. For that the lock
is *leased* to the pipeline (`ps pipeline begin`): `<state_dir>/deploy.lease.json` on this agent, and
on the engine the lock volume of kind `pipeline` (engine.py), name the pipeline (its URL), the deploy
type and when the lease expires. While a lease is active, `acquire` (every changing step, `ps deploy`)
still takes the kernel lock for the step's own duration, and then refuses (exit 1, naming the pipeline)
unless the caller belongs to that pipeline. Each step of the pipeline renews the lease for its TTL;
`ps pipeline end` gives it back. A lease past its expiry (the pipeline died without `end`) is stale and
taken over by the next one; `ps lock release --force` ends an active lease by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline_steps.deploy.lock.records import (
    DEFAULT_LEASE_TTL,
    LEASE_FILE,
    RECORD_FILE,
    Lease,
    LeaseRefused,
    LockStatus,
    ReleaseResult,
    current_user,
    detected_pipeline_url,
    now_iso,
)
from pipeline_steps.errors import BadInput, CheckFailed, Unreachable
from pipeline_steps.files import atomic_write
from pipeline_steps.waiting import poll_until

if TYPE_CHECKING:
    from pipeline_steps.deploy.lock.engine import EngineLock
    from pipeline_steps.deploy.lock.records import EngineHolder


class LeaseMixin:
    """The lease half of DeployLock (kernel.py holds the lock half)."""

    state_dir: Path
    app: str
    timezone: str
    deploy_type: str | None
    engine: EngineLock | None
    engine_joined: bool
    _pipeline_url: str | None
    _user: str | None

    def __init__(self) -> None:
        self._engine_kind = "run"  # take_lease takes the engine lock as the pipeline's lease
        self._engine_ttl = DEFAULT_LEASE_TTL
        self._engine_label: str | None = None

    if TYPE_CHECKING:
        def acquire(self, wait: float = 0.0, poll: float = 0.1) -> object: ...
        def _unlock(self) -> None: ...
        def _open(self) -> int: ...
        def _try_lock(self, fd: int, shared: bool = False) -> bool: ...

    @property
    def lease_path(self) -> Path:
        return self.state_dir / LEASE_FILE

    @property
    def pipeline_url(self) -> str | None:
        """The pipeline this caller belongs to (given, or from the CI context)."""
        if self._pipeline_url is None:
            self._pipeline_url = detected_pipeline_url() or ""
        return self._pipeline_url or None

    def read_lease(self) -> Lease | None:
        """The lease on this agent's disk (None when missing or unreadable)."""
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
            if self.ended_elsewhere(lease):  # its `ps pipeline end` ran on another agent
                with contextlib.suppress(FileNotFoundError):
                    self.lease_path.unlink()
                return
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

    def _engine_lease(self) -> EngineHolder | None:
        """The engine lock when it is an active pipeline lease (None: none, stale, or no answer)."""
        if self.engine is None:
            return None
        try:
            state = self.engine.state()
        finally:
            self.engine.close()
        holder = state.holder
        return holder if state.state == "held" and holder is not None and holder.kind == "pipeline" else None

    def ended_elsewhere(self, lease: Lease) -> bool:
        """True when the engine answers and no longer holds this agent's lease record (the pipeline
        ended on another agent, or the lease was forced away there): the engine is the truth."""
        if self.engine is None:
            return False
        state = self.engine.state()
        if state.state == "unknown":
            return False
        holder = state.holder
        return state.state != "held" or holder is None or holder.kind != "pipeline" or \
            holder.pipeline_url != lease.pipeline_url

    def engine_leased(self) -> bool:
        """True when the engine lock is an active lease of some pipeline (step_guard then checks)."""
        return self._engine_lease() is not None

    def own_lease(self) -> Lease | None:
        """The active lease when it belongs to this caller's pipeline (this agent's, else the engine's)."""
        lease = self.read_lease()
        mine = lease is not None and bool(self.pipeline_url) and lease.pipeline_url == self.pipeline_url
        if lease is not None and not lease.expired() and mine:
            return lease
        theirs = self._engine_lease() if self.pipeline_url else None
        if theirs is not None and theirs.pipeline_url == self.pipeline_url:
            return _as_lease(theirs)
        return None

    def take_lease(self, *, ttl: float = DEFAULT_LEASE_TTL, wait: float = 0.0, label: str | None = None,
                   services: tuple[str, ...] = ()) -> tuple[Lease, bool, Lease | None]:
        """Lease the lock to this caller's pipeline: (lease, newly taken, stale lease taken over).

        Taking it again from the same pipeline only renews it (also from another agent: the engine
        lock names the pipeline). Another pipeline's active lease is refused (LeaseRefused, exit 1)
        after waiting up to `wait` seconds for it to end."""
        if not self.pipeline_url:
            raise BadInput("not in a CI pipeline (no CI_PIPELINE_URL / BUILD_URL): nothing to lease the "
                           "deploy lock to")
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

        retrying = Retrying(stop=stop_after_delay(max(wait, 0.0)), wait=wait_fixed(1.0),
                            retry=retry_if_exception_type(LeaseRefused), reraise=True)
        self._engine_kind, self._engine_ttl, self._engine_label = "pipeline", ttl, label
        try:
            retrying(self.acquire, wait=max(wait, 30.0))
        finally:
            self._engine_kind, self._engine_ttl, self._engine_label = "run", DEFAULT_LEASE_TTL, None
        try:
            joined = self.engine_joined  # this pipeline already holds the engine's lease (another agent)
            current = self.read_lease()
            if current is not None and current.pipeline_url == self.pipeline_url and not current.expired():
                lease = replace(current, renewed=time.time(), ttl=ttl)
                self._write_lease(lease)
                return lease, False, None
            stale = current if current is not None else None
            lease = Lease(app=self.app, pipeline_url=self.pipeline_url, deploy_type=self.deploy_type,
                          user=self._user or current_user(), host=socket.gethostname(),
                          since=now_iso(self.timezone), renewed=time.time(), ttl=ttl, label=label,
                          services=services)
            self._write_lease(lease)
            return lease, not joined, stale
        finally:
            self._unlock()

    def end_lease(self, wait: float = 30.0) -> Lease | None:
        """Give back this pipeline's lease, here and on the engine (None when it held none)."""
        if not self.pipeline_url:
            return None
        ended = self._end_local_lease(wait)
        on_engine = self._end_engine_lease()
        return ended or (_as_lease(on_engine) if on_engine is not None else None)

    def _end_local_lease(self, wait: float) -> Lease | None:
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

    def _end_engine_lease(self) -> EngineHolder | None:
        if self.engine is None:
            return None
        try:
            holder = self.engine.read()
            if holder is None or holder.kind != "pipeline" or holder.pipeline_url != self.pipeline_url:
                return None
            self.engine.end(holder.token, by=holder.token)
            return holder
        except Unreachable:
            return None
        finally:
            self.engine.close()


def end_lease_by_hand(lock: LeaseMixin, status: LockStatus, force: bool) -> ReleaseResult:
    """`ps lock release` with a lease on this agent and no live holder: an active lease only with force."""
    lease = status.lease
    assert lease is not None
    holder = status.holder
    if not lease.expired() and not force:
        raise CheckFailed(f"deploy lock of app {lock.app} is leased to {lease.describe()}; "
                          "`ps pipeline end` in that pipeline gives it back (--force ends it now)",
                          result={"lock": status.as_dict()})
    with contextlib.suppress(FileNotFoundError):
        lock.lease_path.unlink()
    with contextlib.suppress(FileNotFoundError):
        if status.state == "stale":
            (lock.state_dir / RECORD_FILE).unlink()
    what = "stale lease" if lease.expired() else "lease"
    return ReleaseResult(lock.app, "ended-lease", holder,
                         f"ended the {what} of app {lock.app} to {lease.describe()}")


def _as_lease(holder: EngineHolder) -> Lease:
    """The engine's pipeline lease in the shape of this agent's lease record."""
    return Lease(app=holder.app, pipeline_url=holder.pipeline_url or "", deploy_type=holder.deploy_type,
                 user=holder.user, host=holder.host, since=holder.since,
                 renewed=holder.expires - holder.lease, ttl=holder.lease, label=holder.label)
