"""What the deploy lock records: the local holder, the pipeline lease, the engine lock's holder, and the
status and release results shown to users (plain data, no I/O but the clock and the CI context)."""

from __future__ import annotations

import getpass
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from pipeline_steps.adapters.proc import pid_alive
from pipeline_steps.errors import CheckFailed, PsError

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
class EngineHolder:
    """Who holds the engine lock (from its labels): a run (`ps deploy`, one step) or a pipeline's lease."""

    app: str
    token: str
    kind: str  # run | pipeline
    host: str  # the CI agent's host name
    pid: int
    user: str = ""
    pipeline_url: str | None = None
    label: str | None = None
    deploy_type: str | None = None
    since: str = ""
    expires: float = 0.0  # epoch seconds: the last renewal plus the lease
    lease: float = 0.0

    def stale_reason(self, now: float | None = None) -> str | None:
        """Why the holder is gone (its lease ran out, or its pid on this agent is dead), else None."""
        now = time.time() if now is None else now
        if self.kind == "run" and self.host == socket.gethostname() and not pid_alive(self.pid):
            return f"pid {self.pid} on {self.host} is gone"
        if now >= self.expires:
            return f"its lease ran out {now - self.expires:.0f}s ago (not renewed: its agent is gone)"
        return None

    def describe(self) -> str:
        """`pid 123 on agent-1 (alice, https://ci/p/7) running canary-auto` or `pipeline URL (#7, stable)`."""
        if self.kind == "pipeline":
            extra = ", ".join(x for x in (f"#{self.label}" if self.label else None, self.deploy_type) if x)
            return f"pipeline {self.pipeline_url}" + (f" ({extra})" if extra else "") + f" (from {self.host})"
        who = ", ".join(x for x in (self.user, self.pipeline_url) if x)
        doing = f" running {self.deploy_type}" if self.deploy_type else ""
        return f"pid {self.pid} on {self.host} ({who}){doing}"

    def labels(self) -> dict[str, str]:
        return {"ps.lock.app": self.app, "ps.lock.token": self.token, "ps.lock.kind": self.kind,
                "ps.lock.host": self.host, "ps.lock.pid": str(self.pid), "ps.lock.user": self.user,
                "ps.lock.pipeline": self.pipeline_url or "", "ps.lock.label": self.label or "",
                "ps.lock.type": self.deploy_type or "", "ps.lock.since": self.since,
                "ps.lock.expires": f"{self.expires:.3f}", "ps.lock.lease": f"{self.lease:g}"}

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> EngineHolder:
        def num(key: str) -> float:
            try:
                return float(labels.get(key) or 0)
            except ValueError:
                return 0.0

        return cls(app=labels.get("ps.lock.app", ""), token=labels.get("ps.lock.token", ""),
                   kind=labels.get("ps.lock.kind", "run"), host=labels.get("ps.lock.host", ""),
                   pid=int(num("ps.lock.pid")), user=labels.get("ps.lock.user", ""),
                   pipeline_url=labels.get("ps.lock.pipeline") or None,
                   label=labels.get("ps.lock.label") or None, deploy_type=labels.get("ps.lock.type") or None,
                   since=labels.get("ps.lock.since", ""), expires=num("ps.lock.expires"),
                   lease=num("ps.lock.lease"))

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("token", None)
        return data


@dataclass(frozen=True)
class EngineState:
    """The engine lock as read: `held`, `stale` (its holder is gone), `free`, or `unknown` (no answer)."""

    state: str
    engine: str  # the host whose engine holds the lock
    holder: EngineHolder | None = None
    note: str | None = None

    def describe(self) -> str:
        where = f"engine lock on host {self.engine}"
        if self.state == "free":
            return f"{where} is free"
        if self.state == "unknown":
            return f"{where} unknown ({self.note})"
        assert self.holder is not None
        if self.state == "stale":
            return f"{where}: stale, left by {self.holder.describe()} since {self.holder.since} ({self.note})"
        left = max(0.0, self.holder.expires - time.time())
        return f"{where}: held by {self.holder.describe()} since {self.holder.since} (lease {left:.0f}s left)"

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "host": self.engine, "note": self.note,
                "holder": self.holder.public() if self.holder else None}


@dataclass(frozen=True)
class LockStatus:
    """`held` (a live process holds the flock), `free`, or `stale` (a record left by a dead holder);
    `engine`: the lock on the first host's engine, when there is one."""

    app: str
    state: str
    holder: Holder | None
    path: str
    note: str | None = None
    lease: Lease | None = None
    engine: EngineState | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"app": self.app, "state": self.state, "path": self.path, "note": self.note,
                "holder": self.holder.public() if self.holder else None,
                "lease": self.lease.as_dict() if self.lease else None,
                "engine": self.engine.as_dict() if self.engine else None}

    def describe(self) -> str:
        """One human line."""
        engine = self.engine
        if self.state == "free" and self.lease is None and engine is not None and engine.holder is not None:
            h = engine.holder  # only the engine knows a holder: another agent's
            if engine.state == "stale":
                return (f"deploy lock of app {self.app} is free; stale engine lock of {h.describe()} since "
                        f"{h.since} on host {engine.engine} ({engine.note})")
            verb = "leased to" if h.kind == "pipeline" else "held by"
            left = max(0.0, h.expires - time.time())
            return (f"deploy lock of app {self.app} is {verb} {h.describe()} since {h.since} (engine lock on "
                    f"host {engine.engine}, lease {left:.0f}s left)")
        return self._local_text() + self.lease_text() + self.engine_text()

    def _local_text(self) -> str:
        if self.state == "free":
            return f"deploy lock of app {self.app} is free"
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
        return text + (f"; {self.note}" if self.note else "")

    def lease_text(self) -> str:
        if self.lease is None:
            return ""
        if self.lease.expired():
            return f"; stale lease of {self.lease.describe()} (expired)"
        return f"; leased to {self.lease.describe()}"

    def engine_text(self) -> str:
        if self.engine is None or self.engine.state == "free":
            return ""
        return f"; {self.engine.describe()}"


@dataclass(frozen=True)
class ReleaseResult:
    app: str
    action: str  # nothing | cleared-stale | released | signalled | ended-lease | removed-engine-lock
    holder: Holder | None
    message: str
    engine: EngineHolder | None = None


def current_user() -> str:
    """Who runs ps: the CI's user, else the login name."""
    for var in ("GITLAB_USER_LOGIN", "BUILD_USER_ID", "USER", "LOGNAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def detected_pipeline_url() -> str | None:
    """The pipeline of the CI context (None outside CI)."""
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
