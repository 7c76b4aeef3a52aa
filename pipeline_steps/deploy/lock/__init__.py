"""The deploy lock: one deployment per app at a time, across processes, CI agents and pipelines.

    kernel.py   DeployLock: the kernel file lock on this agent (a fast first check) + the engine lock
    engine.py   EngineLock: the labelled volume `ps-lock-<app>` on the first host's engine (where the
                deploy acts), its heartbeat, stale take-over and forced release
    lease.py    the lock leased to a CI pipeline across its stages (`ps pipeline begin|end`)
    release.py  `ps lock release [--force]`: this agent's part, then the engine's
    records.py  Holder, Lease, EngineHolder, LockStatus, ReleaseResult (plain data)
"""

from pipeline_steps.deploy.lock.kernel import DeployLock, kernel_holders
from pipeline_steps.deploy.lock.records import (
    DEFAULT_LEASE_TTL,
    LEASE_FILE,
    LOCK_FILE,
    RECORD_FILE,
    EngineHolder,
    EngineState,
    Holder,
    Lease,
    LeaseRefused,
    LockStatus,
    ReleaseResult,
    now_iso,
)

__all__ = ["DEFAULT_LEASE_TTL", "LEASE_FILE", "LOCK_FILE", "RECORD_FILE", "DeployLock", "EngineHolder",
           "EngineState", "Holder", "Lease", "LeaseRefused", "LockStatus", "ReleaseResult", "kernel_holders",
           "now_iso"]
