"""The deploy lock where the deploy acts: a labelled volume `ps-lock-<app>` on the first host's engine.

Two CI agents (two state dirs, two machines) deploying the same app reach the same engine, so the lock
lives there. Creating a volume whose name exists returns the existing volume untouched (the engine
serialises creations of one name), so "create `ps-lock-<app>` with my token, read the token back" is
an atomic test-and-set: my token back means taken, another token means held (its labels name the
holder: agent host, pid, user, pipeline, deploy type, start time, lease).

Labels cannot change, so the lease is renewed with *beat* volumes (`ps-lock-<app>.beat-<token>-<n>`,
label `ps.lock.expires`): the lock's expiry is the latest of its own and its beats'. A run renews it
from a heartbeat thread every lease/3; a pipeline's lease is renewed by each of its steps. A lock whose
expiry has passed (its agent is gone: kill -9, a lost machine), or whose holder pid on this very agent
is dead, is stale and taken over.

Removing the lock (release, take-over, `--force`) is race-safe: the remover first creates the
tombstone `ps-lock-<app>.end-<token>` with its own mark (one remover wins it), then removes the lock
only if it still carries that token. Nobody removes a lock without winning its token's tombstone, so
two agents taking over the same stale lock never remove each other's new one.

The lease of a run is `PS_LOCK_LEASE` (a duration, default 60s); `PS_LOCK_AGENT` names this agent in the
lock (default: the host name); `PS_LOCK_ENGINE=off` keeps the lock on this agent only (the kernel lock).
Expiry compares agents' clocks: keep them in time (NTP).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from pipeline_steps import errors
from pipeline_steps.deploy.lock.records import EngineHolder, EngineState, LeaseRefused
from pipeline_steps.errors import BadInput, CheckFailed, Unreachable
from pipeline_steps.waiting import poll_until

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import DockerHost
    from pipeline_steps.config import Config, Host

LEASE_ENV = "PS_LOCK_LEASE"
ENGINE_ENV = "PS_LOCK_ENGINE"
AGENT_ENV = "PS_LOCK_AGENT"  # this agent's name in the lock (default: the host name)
DEFAULT_RUN_LEASE = 60.0
TOMBSTONE_STALE = 60.0  # a remover that died mid-removal leaves its tombstone; older than this, ignored


def run_lease(env: dict[str, str] | None = None) -> float:
    """The lease of a run's engine lock: PS_LOCK_LEASE (a duration), default 60s."""
    from pipeline_steps.durations import parse_duration

    raw = (os.environ if env is None else env).get(LEASE_ENV)
    if not raw:
        return DEFAULT_RUN_LEASE
    try:
        value = parse_duration(raw)
    except (ValueError, TypeError, BadInput):
        raise BadInput(f"{LEASE_ENV}={raw!r}: not a duration (e.g. 60s, 2m)") from None
    if value <= 0:
        raise BadInput(f"{LEASE_ENV}={raw!r}: must be more than 0")
    return value


def volume_name(app: str) -> str:
    """`ps-lock-<app>`, in the characters a volume name allows."""
    safe = "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in app)
    return f"ps-lock-{safe}"


class EngineLock:
    """The deploy lock of `app` on one host's engine (opened lazily through the adapter factory)."""

    def __init__(self, host: Host, app: str, *, docker: DockerHost | None = None, agent: str | None = None,
                 timeout: float = 10.0) -> None:
        self.host = host
        self.app = app
        self.agent = agent or os.environ.get(AGENT_ENV) or socket.gethostname()
        self.name = volume_name(app)
        self.timeout = timeout
        self.took_over: EngineHolder | None = None  # the stale holder replaced by the last acquire
        self._docker = docker
        self._given = docker is not None  # a host handed in (tests, a caller's own) is never closed here
        self._calls = threading.Lock()  # the heartbeat thread shares the client

    @classmethod
    def for_config(cls, config: Config) -> EngineLock | None:
        """The engine lock of the configured app on its first host (None with PS_LOCK_ENGINE=off)."""
        if os.environ.get(ENGINE_ENV, "on").strip().lower() in ("0", "off", "no", "false"):
            return None
        return cls(config.hosts[0], config.app)

    # ---------------------------------------------------------------- engine calls

    @contextmanager
    def _engine(self) -> Iterator[DockerHost]:
        from pipeline_steps.adapters.interfaces import EngineError

        with self._calls:
            try:
                if self._docker is None:
                    from pipeline_steps.adapters.docker_host import open_host

                    self._docker = open_host(self.host, self.timeout)
                yield self._docker
            except EngineError as exc:
                raise errors.unreachable(f"Docker engine of host {self.host.name} ({self.host.endpoint})",
                                         str(exc) or type(exc).__name__, context="(deploy lock)") from None

    def close(self) -> None:
        """Close the engine client (it is opened again when needed)."""
        with self._calls:
            if self._docker is not None and not self._given:
                self._docker.close()
                self._docker = None

    # ---------------------------------------------------------------- reading

    def new_holder(self, kind: str, *, lease: float, pid: int | None = None, user: str = "",
                   pipeline_url: str | None = None, label: str | None = None,
                   deploy_type: str | None = None, since: str = "") -> EngineHolder:
        """A holder record for this agent with a fresh token (`kind`: run or pipeline)."""
        return EngineHolder(app=self.app, token=secrets.token_hex(8), kind=kind, host=self.agent,
                            pid=os.getpid() if pid is None else pid, user=user, pipeline_url=pipeline_url,
                            label=label, deploy_type=deploy_type, since=since,
                            expires=time.time() + lease, lease=lease)

    def read(self) -> EngineHolder | None:
        """The holder, its expiry the latest of its renewals (None: free)."""
        with self._engine() as docker:
            found = docker.volume(self.name)
            if found is None:
                return None
            holder = EngineHolder.from_labels(dict(found.labels))
            beats = docker.volumes({"ps.lock.app": self.app, "ps.lock.token": holder.token,
                                    "ps.lock.role": "beat"})
        expires = [holder.expires] + [_float(b.labels.get("ps.lock.expires")) for b in beats]
        return replace(holder, expires=max(expires))

    def state(self) -> EngineState:
        """held / stale / free, or unknown when the engine does not answer (never raises for that)."""
        try:
            holder = self.read()
        except Unreachable as exc:
            return EngineState("unknown", self.host.name, note=exc.message)
        if holder is None:
            return EngineState("free", self.host.name)
        reason = holder.stale_reason()
        return EngineState("stale" if reason else "held", self.host.name, holder, reason)

    # ---------------------------------------------------------------- taking

    def acquire(self, mine: EngineHolder, *, wait: float = 0.0, poll: float = 0.2,
                admit: Callable[[EngineHolder], bool] = lambda _h: False,
                waited: float | None = None) -> tuple[str, EngineHolder]:
        """Take the lock for `mine`, waiting up to `wait` s: ("took", mine) or ("admitted", theirs) when
        `admit` accepts the current holder (the caller's own pipeline's lease). A stale holder is taken
        over. Held after the wait: CheckFailed naming the holder (LeaseRefused for a pipeline's lease);
        `waited` is the wait the message names (the caller's whole wait)."""
        seen: list[EngineHolder] = []
        self.took_over = None

        def attempt() -> tuple[str, EngineHolder] | None:
            for _ in range(3):  # a stale holder removed: try again at once
                stamped = replace(mine, expires=time.time() + mine.lease)
                with self._engine() as docker:
                    got = docker.create_volume(self.name, {**stamped.labels(), "ps.lock.role": "lock"})
                if got.labels.get("ps.lock.token") == mine.token:
                    return "took", stamped
                current = self.read()
                if current is None:
                    continue  # released meanwhile
                if admit(current):
                    return "admitted", current
                if current.stale_reason() is None:
                    if current.kind == "pipeline":  # a lease lasts a pipeline: refused at once
                        raise self.held_error(current, mine, 0.0)
                    seen[:] = [current]
                    return None
                if self.end(current.token, by=mine.token):
                    self.took_over = current
            return None

        result = poll_until(attempt, timeout=wait, interval=max(poll, 0.01))
        if result is not None:
            return result
        holder = seen[0] if seen else self.read()
        if holder is None:
            raise CheckFailed(f"deploy lock of app {self.app} on the engine of host {self.host.name} "
                              "keeps changing hands; try again")
        raise self.held_error(holder, mine, wait if waited is None else waited)

    def held_error(self, holder: EngineHolder, mine: EngineHolder, wait: float) -> CheckFailed:
        """The one line for a lock held by someone else."""
        state = EngineState("held", self.host.name, holder)
        where = f" (engine lock on host {self.host.name})"
        if holder.kind == "pipeline":
            who = f"pipeline {mine.pipeline_url}" if mine.pipeline_url else "a run outside that pipeline"
            return LeaseRefused(f"deploy lock of app {self.app} is leased to {holder.describe()} since "
                                f"{holder.since}{where}; refused for {who} (wait for it, or `ps lock release "
                                "--force` ends the lease)", result={"lock": {"engine": state.as_dict()}})
        waited = f" (waited {wait:g}s)" if wait > 0 else ""
        return CheckFailed(f"deploy lock of app {self.app} is held by {holder.describe()} since "
                           f"{holder.since}{where}{waited}", result={"lock": {"engine": state.as_dict()}})

    def renew(self, holder: EngineHolder, lease: float | None = None) -> float:
        """Push the holder's expiry to now + lease (a new beat volume; older beats removed)."""
        expires = time.time() + (holder.lease if lease is None else lease)
        labels = {**holder.labels(), "ps.lock.role": "beat", "ps.lock.expires": f"{expires:.3f}"}
        name = f"{self.name}.beat-{holder.token}-{time.time_ns()}"
        with self._engine() as docker:
            docker.create_volume(name, labels)
            for old in docker.volumes({"ps.lock.app": self.app, "ps.lock.token": holder.token,
                                       "ps.lock.role": "beat"}):
                if old.name != name:
                    docker.remove_volume(old.name)
        return expires

    # ---------------------------------------------------------------- removing

    def end(self, token: str, *, by: str) -> bool:
        """Remove the lock of `token` and its beats, race-safe under its tombstone; True if we removed it."""
        tomb = f"{self.name}.end-{token}"
        mark = {"ps.lock.app": self.app, "ps.lock.token": token, "ps.lock.role": "end", "ps.lock.by": by,
                "ps.lock.at": f"{time.time():.3f}"}
        with self._engine() as docker:
            got = docker.create_volume(tomb, mark)
            if got.labels.get("ps.lock.by") != by:
                if time.time() - _float(got.labels.get("ps.lock.at")) < TOMBSTONE_STALE:
                    return False  # another remover is at it
                docker.remove_volume(tomb)  # its remover died mid-way
                got = docker.create_volume(tomb, mark)
                if got.labels.get("ps.lock.by") != by:
                    return False
            removed = False
            try:
                current = docker.volume(self.name)
                if current is not None and current.labels.get("ps.lock.token") == token:
                    docker.remove_volume(self.name)
                    removed = True
            finally:
                for left in docker.volumes({"ps.lock.app": self.app, "ps.lock.token": token}):
                    if left.name not in (self.name, tomb):
                        docker.remove_volume(left.name)
                docker.remove_volume(tomb)
        return removed

    def force(self) -> EngineHolder | None:
        """`ps lock release --force`: remove whoever holds it (the holder removed, or None when free)."""
        holder = self.read()
        if holder is None:
            return None
        self.end(holder.token, by=secrets.token_hex(8))
        return holder


class Heartbeat:
    """Renews a run's engine lock every lease/3 seconds until stopped (a daemon thread)."""

    def __init__(self, lock: EngineLock, holder: EngineHolder) -> None:
        self.lock = lock
        self.holder = holder
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ps-lock-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = max(self.holder.lease / 3.0, 0.1)
        while not self._stop.wait(interval):
            try:
                self.lock.renew(self.holder)
            except Exception:  # the next beat may get through; the lease covers two misses
                self.failures += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.lock.timeout + 5)


def _float(value: str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:
        return 0.0
