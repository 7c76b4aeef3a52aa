"""The deployment history: every action appended as one JSON line to `<state_dir>/history.jsonl`.

Writers open the file with O_APPEND, take an exclusive flock for the single write() of a whole line
and fsync it, so concurrent writers (several processes, several CI runners on one host) never
interleave or lose lines. Readers skip a line they cannot parse and count it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_steps.config.objects import DEFAULT_TIMEZONE
from pipeline_steps.errors import BadInput
from pipeline_steps.secrets import mask_obj

if TYPE_CHECKING:
    from pipeline_steps.config import Config

HISTORY_FILE = "history.jsonl"


def acted_on(config: Config, services: Sequence[str] = ()) -> dict[str, list[str]]:
    """{"hosts": [...], "routers": [...]}: where a deploy of `services` (all when empty) acts, by name."""
    chosen = [config.services[n] for n in services if n in config.services] or list(config.services.values())
    hosts = [h.name for h in config.hosts if any(h in config.hosts_of(s) for s in chosen)]
    routers = [r.name for r in config.routers] if any(s.is_http for s in chosen) else []
    return {"hosts": hosts, "routers": routers}


@dataclass(frozen=True)
class HistoryEntry:
    """One action: what ran, on which builds, with which weights, how it ended, and who ran it."""

    time: str
    app: str
    type: str
    result: str  # ok | failed | rolled-back | ...
    build_ids: dict[str, str] = field(default_factory=dict)  # "<service>/<slot>" or service -> BUILD_ID
    weights: dict[str, Any] = field(default_factory=dict)  # service -> canary percent (or slot weights)
    who: str | None = None
    pipeline_url: str | None = None
    message: str = ""
    duration: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)  # the hosts the action acted on (issue 12)
    routers: list[str] = field(default_factory=list)  # the routers it changed or read

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistoryEntry:
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        rest = {k: v for k, v in data.items() if k not in cls.__dataclass_fields__}
        extra = {**(known.pop("extra", None) or {}), **rest}
        known.setdefault("time", "")
        known.setdefault("app", "")
        known.setdefault("type", "")
        known.setdefault("result", "")
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class HistoryRead:
    """Entries read back (oldest first) and how many lines could not be parsed."""

    entries: list[HistoryEntry]
    total: int
    corrupt: int


class HistoryLog:
    """Append-only JSONL log of deployment actions under a state directory."""

    def __init__(self, state_dir: str | os.PathLike[str], timezone: str = DEFAULT_TIMEZONE) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / HISTORY_FILE
        self.timezone = timezone

    @classmethod
    def for_config(cls, config: Config) -> HistoryLog:
        """The history log of the configured app."""
        return cls(config.state_dir, config.timezone)

    def append(self, entry: HistoryEntry) -> HistoryEntry:
        """Append one entry as a single line (secrets masked), flock-serialised and fsynced."""
        line = (json.dumps(mask_obj(entry.as_dict()), sort_keys=False, default=str,
                           separators=(",", ":")) + "\n").encode()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BadInput(f"cannot write history {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(line)
            while view:  # one write() in practice; a short write is finished under the same lock
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)  # drops the flock
        return entry

    def record(self, *, app: str, type: str, result: str, build_ids: dict[str, str] | None = None,
               weights: dict[str, Any] | None = None, who: str | None = None,
               pipeline_url: str | None = None, message: str = "", duration: float | None = None,
               time: str | None = None, hosts: Sequence[str] = (), routers: Sequence[str] = (),
               **extra: Any) -> HistoryEntry:
        """Build an entry stamped with the current time (config time zone) and append it."""
        from pipeline_steps.deploy.lock import now_iso

        entry = HistoryEntry(time=time or now_iso(self.timezone), app=app, type=type, result=result,
                             build_ids=dict(build_ids or {}), weights=dict(weights or {}), who=who,
                             pipeline_url=pipeline_url, message=message, duration=duration, extra=extra,
                             hosts=list(hosts), routers=list(routers))
        return self.append(entry)

    def read(self, limit: int | None = None, app: str | None = None,
             type: str | None = None) -> HistoryRead:
        """The last `limit` entries (oldest first) matching the app/type filters."""
        if limit is not None and limit < 0:
            raise BadInput(f"history limit must be >= 0, not {limit}")
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return HistoryRead([], 0, 0)
        except OSError as exc:
            raise BadInput(f"cannot read history {self.path}: {exc.strerror or exc}") from None
        entries: list[HistoryEntry] = []
        corrupt = total = 0
        for line in raw.splitlines():
            if not line.strip():
                continue
            total += 1
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                entry = HistoryEntry.from_dict(data)
            except (ValueError, TypeError):
                corrupt += 1
                continue
            if app is not None and entry.app != app:
                continue
            if type is not None and entry.type != type:
                continue
            entries.append(entry)
        if limit is not None:
            entries = entries[-limit:] if limit else []
        return HistoryRead(entries, total, corrupt)
