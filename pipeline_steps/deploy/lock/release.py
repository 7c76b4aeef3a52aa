"""`ps lock release [--force]`: the kernel lock's part on this agent, then the engine lock's part."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

from pipeline_steps.deploy.lock.kernel import kernel_holders
from pipeline_steps.deploy.lock.lease import end_lease_by_hand
from pipeline_steps.deploy.lock.records import ReleaseResult
from pipeline_steps.errors import CheckFailed, Unreachable
from pipeline_steps.waiting import poll_until

if TYPE_CHECKING:
    from pipeline_steps.deploy.lock.engine import EngineLock
    from pipeline_steps.deploy.lock.kernel import DeployLock


def release_local(lock: DeployLock, force: bool, wait: float) -> ReleaseResult:
    """`ps lock release` on this agent: clear a stale record or lease; a live holder only with force
    (SIGTERM to its pid on this host, when the kernel confirms it holds the lock; then wait)."""
    status = lock.local_status()
    holder = status.holder
    if status.lease is not None and not status.lease.expired() and lock.ended_elsewhere(status.lease):
        with contextlib.suppress(FileNotFoundError):
            lock.lease_path.unlink()
        status = replace(status, lease=None)
    if status.lease is not None and status.state != "held":
        return end_lease_by_hand(lock, status, force)
    if status.state == "free":
        return ReleaseResult(lock.app, "nothing", None, f"deploy lock of app {lock.app} is free")
    if status.state == "stale":
        with contextlib.suppress(FileNotFoundError):
            lock.record_path.unlink()
        return ReleaseResult(lock.app, "cleared-stale", holder,
                             f"cleared stale deploy lock record of app {lock.app} "
                             f"({holder.describe() if holder else 'unknown'})")
    # held by a live process
    if holder is None:
        raise CheckFailed(f"deploy lock of app {lock.app} is held by a process with no holder record; "
                          "find it with `fuser` or /proc/locks", result={"lock": status.as_dict()})
    if not force:
        raise CheckFailed(f"deploy lock of app {lock.app} is held by live {holder.describe()} "
                          f"since {holder.since}; a running deploy keeps it until it exits "
                          "(--force stops that process)", result={"lock": status.as_dict()})
    if holder.host != socket.gethostname():
        raise CheckFailed(f"deploy lock of app {lock.app} is held by {holder.describe()}: "
                          f"not a process of this host ({socket.gethostname()})",
                          result={"lock": status.as_dict()})
    owners = kernel_holders(lock.lock_path)
    if owners is not None and owners and holder.pid not in owners:
        raise CheckFailed(f"deploy lock of app {lock.app}: recorded pid {holder.pid} does not hold it "
                          f"(the kernel lists pid {', '.join(map(str, sorted(owners)))}); not signalling",
                          result={"lock": status.as_dict()})
    try:
        os.kill(holder.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise CheckFailed(f"not allowed to signal pid {holder.pid} holding the deploy lock of app "
                          f"{lock.app}", result={"lock": status.as_dict()}) from None
    if poll_until(lambda: lock._status().state != "held" or None, timeout=wait, interval=0.1) is None:
        raise CheckFailed(f"sent SIGTERM to pid {holder.pid} but it still holds the deploy lock of app "
                          f"{lock.app} after {wait:g}s", result={"lock": lock.local_status().as_dict()})
    current = lock.read_record()
    if current is not None and current.token == holder.token:
        with contextlib.suppress(FileNotFoundError):
            lock.record_path.unlink()
    return ReleaseResult(lock.app, "signalled", holder,
                         f"stopped {holder.describe()}; deploy lock of app {lock.app} is free")


def release_engine(lock: EngineLock, local: ReleaseResult, force: bool) -> ReleaseResult:
    """`ps lock release` after the kernel lock's part (`local`): clear a stale engine lock; a live
    holder's (a run on another agent, a pipeline's lease) is refused naming it, removed with force."""
    state = lock.state()
    holder = state.holder
    if state.state == "unknown":
        if force:
            raise Unreachable(f"{state.note}; the engine lock was not released")
        return replace(local, message=f"{local.message}; {state.describe()}")
    if holder is None:
        return local
    where = f"engine lock on host {lock.host.name}"
    if state.state == "held" and not force:
        if holder.kind == "pipeline":
            raise CheckFailed(f"deploy lock of app {lock.app} is leased to {holder.describe()} since "
                              f"{holder.since} ({where}); `ps pipeline end` in that pipeline gives it back "
                              "(--force ends it now)", result={"lock": {"engine": state.as_dict()}})
        raise CheckFailed(f"deploy lock of app {lock.app} is held by live {holder.describe()} since "
                          f"{holder.since} ({where}); a running deploy keeps it until it ends (--force "
                          "removes it; that process is not stopped)",
                          result={"lock": {"engine": state.as_dict()}})
    try:
        lock.force()
    finally:
        lock.close()
    if state.state == "stale":
        action, text = "cleared-stale", f"cleared the stale {where} of {holder.describe()} ({state.note})"
    elif holder.kind == "pipeline":
        action, text = "ended-lease", f"ended the lease of app {lock.app} to {holder.describe()} ({where})"
    else:
        action, text = "removed-engine-lock", f"removed the {where} of live {holder.describe()}"
    if local.action != "nothing":
        return replace(local, message=f"{local.message}; {text}", engine=holder)
    return ReleaseResult(lock.app, action, None, text, engine=holder)
