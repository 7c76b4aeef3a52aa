"""nginx's own access log as the canary's measurements: the JSON log_format ps adds, and a reader.

ps defines `log_format ps_json escape=json '{...}'` (in its include, at http level) and the server that
proxies to ps's upstreams logs with `access_log <file> ps_json;`. Each line has the time, the status the
client got, every upstream address nginx tried (`$upstream_addr`, `a, b` after a retry), the times, the
upstream group (`$proxy_host`, the name in `proxy_pass http://shop_web;`) and the request id.

AccessLogTail reads only what was written after it was opened (an old line never passes a check), keeps a
partial last line until nginx finishes it, and follows rotation like `tail -F`: a renamed file is read to
its end before the new file is read from its start; a truncated file (copytruncate) is read from 0.
SlotMap then gives each line its (upstream, slot) from the last address nginx tried.

SourceLogTail is the same reader over a LogSource instead of a local path: the access log of a router
in a container on a remote host, read through that host's engine by offset (adapters/nginx/files.py gives
the source). A renamed file cannot be read to its end there: its last unread lines are lost, counted in
`rotations`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline_steps.analysis.stats import Samples
from pipeline_steps.upstreams import last_upstream

FORMAT_NAME = "ps_json"
# key -> nginx variable; all values are JSON strings (escape=json), parsed by parse_line.
FIELDS: tuple[tuple[str, str], ...] = (
    ("time", "$msec"),
    ("status", "$status"),
    ("upstream", "$proxy_host"),
    ("upstream_addr", "$upstream_addr"),
    ("upstream_status", "$upstream_status"),
    ("request_time", "$request_time"),
    ("upstream_response_time", "$upstream_response_time"),
    ("request_id", "$request_id"),
)
READ_CHUNK = 1 << 20
Directive = dict[str, Any]


def log_format_directive(name: str = FORMAT_NAME) -> Directive:
    """The crossplane directive `log_format ps_json escape=json '{"time":"$msec",...}'` (http level)."""
    body = "{" + ",".join(f'"{key}":"{var}"' for key, var in FIELDS) + "}"
    return {"directive": "log_format", "args": [name, "escape=json", body]}


def access_log_directive(path: str | os.PathLike[str], name: str = FORMAT_NAME) -> Directive:
    """The crossplane directive `access_log <path> ps_json;` for the user's server (no buffer=: ps must
    see each line as soon as the request ends)."""
    return {"directive": "access_log", "args": [str(path), name]}


@dataclass(frozen=True)
class LogRecord:
    """One request as nginx logged it."""

    time: float  # epoch seconds ($msec, when the request ended)
    status: int
    upstream: str  # $proxy_host: the upstream group
    address: str  # the last address nginx tried: the server that gave the answer
    addresses: tuple[str, ...]
    request_time: float  # seconds
    upstream_time: float | None  # seconds, of the last attempt
    request_id: str = ""

    @property
    def latency(self) -> float:
        """The answering server's time (the last attempt), or the whole request's when nginx has none."""
        return self.upstream_time if self.upstream_time is not None else self.request_time


def _last_number(value: str) -> float | None:
    """The last of nginx's comma / ` : ` separated times, None for `-` or empty."""
    last = value.split(",")[-1].split(" : ")[-1].strip()
    try:
        return float(last)
    except ValueError:
        return None


def parse_line(line: str | bytes) -> LogRecord | None:
    """A LogRecord from one ps_json line, or None when the line is not one."""
    try:
        data = json.loads(line)
        addr = str(data.get("upstream_addr") or "")
        addresses = tuple(a.strip() for part in addr.split(",") for a in part.split(" : ") if a.strip())
        return LogRecord(time=float(data["time"]), status=int(data["status"]),
                         upstream=str(data.get("upstream") or ""),
                         address=last_upstream(addr) if addr else "", addresses=addresses,
                         request_time=float(data.get("request_time") or 0.0),
                         upstream_time=_last_number(str(data.get("upstream_response_time") or "")),
                         request_id=str(data.get("request_id") or ""))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


class AccessLogTail:
    """Lines appended to an nginx access log since this tail was opened.

    `AccessLogTail(path)` starts at the file's current end (`from_start=True`: at its beginning); each
    `read()` returns the complete new lines as LogRecords. Not thread-safe; `close()` when done.
    """

    def __init__(self, path: str | os.PathLike[str], *, from_start: bool = False) -> None:
        self.path = Path(path)
        self.malformed = 0  # complete lines that were not ps_json
        self.rotations = 0
        self.truncations = 0
        self._fh: Any = None
        self._ino: tuple[int, int] | None = None
        self._partial = b""
        self._skip_to_newline = False
        self._open(at_end=not from_start)

    def _open(self, at_end: bool) -> None:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 (kept open to follow a renamed file)
        except FileNotFoundError:
            self._fh, self._ino = None, None  # every line of a file that appears later is new
            return
        st = os.fstat(fh.fileno())
        self._fh, self._ino, self._partial = fh, (st.st_dev, st.st_ino), b""
        self._skip_to_newline = False
        if at_end and st.st_size:
            fh.seek(st.st_size - 1)
            self._skip_to_newline = fh.read(1) != b"\n"  # opened inside a line: it is not ours

    def read(self) -> list[LogRecord]:
        """The complete lines written since the last read (or the start)."""
        if self._fh is None:
            self._open(at_end=False)
            if self._fh is None:
                return []
        data = self._drain()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None  # renamed away, the new file not created yet: keep reading the old one
        if st is not None and (st.st_dev, st.st_ino) != self._ino:
            data += self._drain()  # what nginx wrote into the renamed file before it reopened
            lines = self._split(data, final=True)
            self._fh.close()
            self.rotations += 1
            self._open(at_end=False)
            return self._parse(lines) + self.read()
        if st is not None and st.st_size < self._fh.tell():
            self.truncations += 1  # copytruncate: the partial line before it is gone
            self._fh.seek(0)
            lines = self._split(data, final=True)
            self._skip_to_newline = False
            return self._parse(lines + self._split(self._drain(), final=False))
        return self._parse(self._split(data, final=False))

    def _drain(self) -> bytes:
        chunks = []
        while chunk := self._fh.read(READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)

    def _split(self, data: bytes, final: bool) -> list[bytes]:
        """Complete lines of partial + data; the rest stays partial (dropped when `final`)."""
        buffer = self._partial + data
        if self._skip_to_newline:
            cut = buffer.find(b"\n")
            if cut < 0:
                self._partial = b"" if final else buffer
                return []
            buffer, self._skip_to_newline = buffer[cut + 1:], False
        *lines, rest = buffer.split(b"\n")
        self._partial = b"" if final else rest
        return [ln for ln in lines if ln.strip()]

    def _parse(self, lines: Sequence[bytes]) -> list[LogRecord]:
        out = []
        for line in lines:
            record = parse_line(line)
            if record is None:
                self.malformed += 1
            else:
                out.append(record)
        return out

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> AccessLogTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LogSource(Protocol):
    """A log file read by offset (through a Docker engine, say): None when the file does not exist."""

    def read_from(self, offset: int) -> tuple[str, int, bytes] | None:
        """(identity of the file, its size, its bytes from `offset` on)."""
        ...

    def close(self) -> None: ...


class SourceLogTail(AccessLogTail):
    """AccessLogTail over a LogSource: lines written after it was opened, partial lines kept, a new
    identity (rotation) or a smaller size (truncation) read from 0."""

    def __init__(self, source: LogSource, *, from_start: bool = False) -> None:
        self.source = source
        self.path = Path(getattr(source, "path", "") or ".")
        self.malformed = self.rotations = self.truncations = 0
        self._partial = b""
        self._skip_to_newline = False
        self._ident: str | None = None
        self._offset = 0
        self._fh = None
        found = source.read_from(1 << 62)
        if found is not None:
            self._ident, size, _ = found
            if not from_start and size:
                self._offset = size
                last = source.read_from(size - 1)
                self._skip_to_newline = last is not None and last[0] == self._ident and last[2][:1] != b"\n"

    def read(self) -> list[LogRecord]:
        """The complete lines written since the last read (or the start)."""
        found = self.source.read_from(self._offset)
        if found is None:
            return []  # renamed away and not created yet (or never there): nothing new to read
        ident, size, data = found
        if self._ident is not None and ident != self._ident:
            self.rotations += 1  # the renamed file's unread end is out of reach here
            lines = self._split(b"", final=True)
            self._ident, self._offset, self._skip_to_newline = ident, 0, False
            return self._parse(lines) + self.read()
        if self._ident is not None and size < self._offset:
            self.truncations += 1
            lines = self._split(b"", final=True)
            self._offset, self._skip_to_newline = 0, False
            return self._parse(lines) + self.read()
        self._ident = ident
        self._offset += len(data)
        return self._parse(self._split(data, final=False))

    def close(self) -> None:
        self.source.close()


@dataclass(frozen=True)
class SlotMap:
    """upstream name -> server address -> slot: which slot of which service answered a request."""

    upstreams: Mapping[str, Mapping[str, str]]

    def locate(self, record: LogRecord) -> tuple[str, str] | None:
        """(upstream, slot) of the server that answered, None for a foreign upstream or server.

        With the sticky split nginx proxies to `<up>__stable` / `<up>__canary` (pipeline_steps/sticky.py):
        those requests are the service's upstream's too."""
        name = self.upstream_of(record.upstream)
        servers = self.upstreams.get(name)
        if servers is None:
            return None
        slot = servers.get(record.address)
        return (name, slot) if slot is not None else None

    def upstream_of(self, proxied: str) -> str:
        """The judged upstream a request went through (`shop_web__canary` -> `shop_web`)."""
        base, sep, slot = proxied.rpartition("__")
        return base if sep and slot in ("stable", "canary") and base in self.upstreams else proxied

    @classmethod
    def from_config(cls, config: Any, services: Iterable[str] | None = None) -> SlotMap:
        """Every host's slot ports of the services (all by default) from ps.yaml."""
        from pipeline_steps.upstreams import slot_address

        names = list(services) if services is not None else list(config.services)
        return cls({config.services[n].upstream: {slot_address(h, port): slot
                                                  for h in config.hosts_of(config.services[n])
                                                  for slot, port in config.services[n].slots.items()}
                    for n in names})

    @classmethod
    def from_include(cls, config: Any, include: Any, services: Iterable[str] | None = None) -> SlotMap:
        """The server lines of the live include (an UpstreamFile) that are slots of the services."""
        from pipeline_steps.upstreams import locate

        names = list(services) if services is not None else list(config.services)
        out: dict[str, dict[str, str]] = {}
        for name in names:
            service = config.services[name]
            upstream = include.get(service.upstream)
            servers = out.setdefault(service.upstream, {})
            for server in upstream.servers if upstream is not None else []:
                where = locate(service, config.hosts_of(service), server)
                if where is not None:
                    servers[server.address] = where[1]
        return cls(out)


@dataclass
class Window:
    """The requests of one judged hold, per (upstream, slot), and what could not be attributed."""

    slots: SlotMap
    samples: dict[tuple[str, str], Samples] = field(default_factory=dict)
    foreign: int = 0  # lines of upstreams ps does not judge
    unattributed: int = 0  # lines of a judged upstream whose last address is none of its slots

    def add(self, records: Iterable[LogRecord]) -> int:
        """Sort records into their slots; the number attributed."""
        added = 0
        for record in records:
            where = self.slots.locate(record)
            if where is None:
                if self.slots.upstream_of(record.upstream) in self.slots.upstreams:
                    self.unattributed += 1
                else:
                    self.foreign += 1
                continue
            self.samples.setdefault(where, Samples()).add(record.status, record.latency)
            added += 1
        return added

    def side(self, upstream: str, slot: str) -> Samples:
        """The samples of one slot (empty when it has none yet)."""
        return self.samples.get((upstream, slot), Samples())
