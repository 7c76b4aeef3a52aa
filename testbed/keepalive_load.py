"""A bounded keep-alive HTTP load over several nginx locations, checking every answer.

Each worker thread keeps one HTTP/1.1 connection to nginx open and reuses it, as browsers and API
clients do. Request i goes to route i % len(routes) (path `<route.path>r<i>`), at a fixed rate (open loop).
An answer counts as ok only when it is 2xx, every address in its `X-Upstream` header is a server of that
route's upstream, its `X-Slot` is the slot of the server that answered, and its JSON `path` is the path
asked for (the answer is this request's, from the right service).

The one tolerated drop: a request sent on a *reused* connection that nginx closed (a reload closes idle
keep-alive connections) before any byte of the answer arrived is retried once on a new connection. A
timeout, a reset or refusal on a fresh connection, a reset after some bytes, or a second drop are failures.
The HTTP client is written on raw sockets so "no byte of the answer arrived" is known exactly.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Route:
    """One nginx location: the path prefix sent, and the upstream's servers ("<address>:port" -> slot)."""

    name: str
    path: str
    servers: dict[str, str]


@dataclass(frozen=True)
class Record:
    """One request: when it was sent (seconds after the load started), where, and what came back."""

    t: float
    route: str
    slot: str | None
    status: int | None
    error: str | None
    retried: bool
    reused: bool
    latency: float


@dataclass
class KeepAliveReport:
    """Counts of one load run, and every request's record."""

    rate: float
    started: float  # time.monotonic() of the start
    duration: float = 0.0
    records: list[Record] = field(default_factory=list)
    connections: int = 0

    @property
    def sent(self) -> int:
        return len(self.records)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if r.error)

    @property
    def retried(self) -> int:
        return sum(1 for r in self.records if r.retried)

    @property
    def reused(self) -> int:
        return sum(1 for r in self.records if r.reused)

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.duration if self.duration > 0 else 0.0

    def by_slot(self, route: str | None = None, since: float | None = None) -> dict[str, int]:
        """Ok answers per slot (of one route; of requests sent at or after monotonic time `since`)."""
        counts: Counter[str] = Counter()
        for r in self.records:
            if r.error is None and (route is None or r.route == route) and \
                    (since is None or self.started + r.t >= since):
                counts[r.slot or "?"] += 1
        return dict(counts)

    def errors(self, limit: int = 10) -> list[str]:
        return [f"+{r.t:.2f}s {r.route}: {r.error}" for r in self.records if r.error][:limit]

    def summary(self) -> str:
        routes = sorted({r.route for r in self.records})
        slots = "; ".join(f"{name} " + " ".join(f"{k}={v}" for k, v in sorted(self.by_slot(name).items()))
                          for name in routes) or "-"
        return (f"sent {self.sent} in {self.duration:.1f}s ({self.achieved_rate:.1f}/s), "
                f"{self.failed} failed, "
                f"{self.retried} retried after a keep-alive close, {self.reused} on reused connections "
                f"({self.connections} opened); by slot: {slots}")


class _Dropped(Exception):
    """The connection went away; `got` bytes of the answer had arrived."""

    def __init__(self, what: str, got: int) -> None:
        super().__init__(what)
        self.what = what
        self.got = got


def _read_answer(sock: socket.socket, deadline: float) -> tuple[int, dict[str, str], bytes, bool]:
    """Read one HTTP/1.x answer: status, headers (lower-case names), body, whether to keep the connection."""
    buf = b""
    got = 0

    def more() -> bytes:
        nonlocal got
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError) as exc:
            raise _Dropped(f"{type(exc).__name__}", got) from None
        if not chunk:
            raise _Dropped("closed by nginx", got)
        got += len(chunk)
        return chunk

    while b"\r\n\r\n" not in buf:
        buf += more()
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    proto, status, *_ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    keep = proto == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += more()
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                buf += more()
            body, buf = body + buf[:size], buf[size + 2:]
            if size == 0:
                break
    elif "content-length" in headers:
        length = int(headers["content-length"])
        while len(buf) < length:
            buf += more()
        body, buf = buf[:length], buf[length:]
    else:
        keep = False
        try:
            while True:
                buf += more()
        except _Dropped as exc:
            if exc.what != "closed by nginx":
                raise
        body, buf = buf, b""
    if buf:
        raise ValueError(f"{len(buf)} unexpected bytes after the answer")
    return int(status), headers, body, keep


class KeepAliveLoad:
    """`with KeepAliveLoad(port, routes, rate=90, max_seconds=60) as load: ...; report = load.stop()`."""

    def __init__(self, port: int, routes: list[Route], *, rate: float = 90.0, max_seconds: float = 60.0,
                 max_requests: int | None = None, timeout: float = 5.0, workers: int = 32,
                 host: str | None = None) -> None:
        from testbed.load import _loopback
        from testbed.ports import address

        host = host or address()
        if host != "localhost" and not _loopback(host):
            raise ValueError(f"KeepAliveLoad only sends to the loopback interface, not {host}")
        if rate <= 0 or max_seconds <= 0 or not routes:
            raise ValueError("rate and max_seconds must be > 0, and routes not empty")
        self.host, self.port, self.routes = host, port, routes
        self.rate, self.max_seconds = float(rate), float(max_seconds)
        self.timeout, self.workers = timeout, workers
        self.max_requests = max_requests if max_requests is not None else int(rate * max_seconds) + 1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next = 0
        self._t_end: float | None = None
        self._report = KeepAliveReport(rate=self.rate, started=0.0)

    # ---------------------------------------------------------------- control

    def start(self) -> KeepAliveLoad:
        if self._threads:
            raise RuntimeError("load already started")
        self._report.started = time.monotonic()
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"keepalive-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self._report.records)

    def wait_more(self, n: int, timeout: float = 30.0) -> None:
        """Block until n more requests have been answered (or the load ended, or `timeout`)."""
        target = self.sent + n
        deadline = time.monotonic() + timeout
        while self.sent < target and self.running and time.monotonic() < deadline:
            self._stop.wait(0.02)

    def stop(self) -> KeepAliveReport:
        """End the load (requests in flight finish) and return the report."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout * 2 + 5)
        return self.report()

    def report(self) -> KeepAliveReport:
        with self._lock:
            rep = self._report
            end = self._t_end if self._t_end is not None and not self.running else time.monotonic()
            out = KeepAliveReport(rate=rep.rate, started=rep.started, duration=max(0.0, end - rep.started),
                                  records=sorted(rep.records, key=lambda r: r.t), connections=rep.connections)
        return out

    def __enter__(self) -> KeepAliveLoad:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---------------------------------------------------------------- workers

    def _claim(self) -> tuple[int, float] | None:
        with self._lock:
            t0 = self._report.started
            if self._stop.is_set() or self._next >= self.max_requests:
                return None
            due = t0 + self._next / self.rate
            if due - t0 >= self.max_seconds:
                return None
            self._next += 1
            return self._next - 1, due

    def _work(self) -> None:
        sock: socket.socket | None = None
        try:
            while True:
                claim = self._claim()
                if claim is None:
                    return
                index, due = claim
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                sock = self._one(index, sock)
        finally:
            if sock is not None:
                sock.close()
            with self._lock:
                self._t_end = time.monotonic()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._report.connections += 1
        return sock

    def _one(self, index: int, sock: socket.socket | None) -> socket.socket | None:
        """Send request `index` (on `sock` if open); record it; return the connection to keep, if any."""
        route = self.routes[index % len(self.routes)]
        path = f"{route.path}r{index}"
        request = (f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                   "User-Agent: ps-testbed-keepalive\r\nAccept: application/json\r\n\r\n").encode()
        started = time.monotonic()
        deadline = started + self.timeout
        first_reused = sock is not None
        retried = False
        error: str | None = None
        slot: str | None = None
        status: int | None = None
        while True:
            reused = sock is not None
            try:
                if sock is None:
                    sock = self._connect()
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                try:
                    sock.sendall(request)
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
                    raise _Dropped(type(exc).__name__, 0) from None
                status, headers, body, keep = _read_answer(sock, deadline)
                error, slot = _check(route, path, status, headers, body)
                if not keep:
                    sock.close()
                    sock = None
                break
            except _Dropped as exc:
                if sock is not None:
                    sock.close()
                sock = None
                if reused and exc.got == 0 and not retried:
                    retried = True  # nginx closed a kept-alive connection (a reload): one retry allowed
                    continue
                error = (f"{exc.what} after {exc.got} bytes of the answer on a "
                         f"{'reused' if reused else 'new'} connection" + (" (the retry)" if retried else ""))
                break
            except (OSError, ValueError) as exc:
                if sock is not None:
                    sock.close()
                sock = None
                where = "reused" if reused else "new"
                error = f"{type(exc).__name__}: {exc} on a {where} connection"[:200]
                break
        record = Record(t=round(started - self._report.started, 4), route=route.name, slot=slot,
                        status=status, error=error, retried=retried, reused=first_reused,
                        latency=time.monotonic() - started)
        with self._lock:
            self._report.records.append(record)
        return sock


def _check(route: Route, path: str, status: int, headers: dict[str, str],
           body: bytes) -> tuple[str | None, str | None]:
    """(error or None, slot): the answer is ok only if it is really this route's, from its upstream."""
    slot = headers.get("x-slot")
    if not 200 <= status < 300:
        return f"HTTP {status} (X-Upstream {headers.get('x-upstream', '-')})", slot
    upstream = headers.get("x-upstream", "")
    addresses = [a.strip() for part in upstream.split(" : ") for a in part.split(",") if a.strip()]
    if not addresses:
        return f"HTTP {status} without an X-Upstream header", slot
    stray = [a for a in addresses if a not in route.servers]
    if stray:
        return f"answered through {', '.join(stray)}: not a server of {route.name}'s upstream", slot
    if route.servers[addresses[-1]] != slot:
        return f"X-Slot {slot} from {addresses[-1]}, the {route.servers[addresses[-1]]} server", slot
    try:
        data: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "body is not JSON", slot
    if not isinstance(data, dict) or data.get("path") != path:
        return f"answer for path {data.get('path') if isinstance(data, dict) else '?'}, not {path}", slot
    return None, slot
