"""A bounded HTTP load generator: N requests per second, every request on a new connection.

A new TCP connection per request means a request that lands during an nginx reload really tests the
reload (no kept-alive connection to an old worker hides it). The load is bounded in requests and in
seconds and stops by itself; `stop()` ends it early and returns the LoadReport.

The per-request timeout (5 s) only has to outlast a TCP SYN retransmission or two (1 s, 3 s) on a
busy 2-core bed; a request dropped by a reload fails fast (refused, reset, 502), not slowly.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit


@dataclass
class LoadReport:
    """What the load saw: requests sent and failed, answers per slot (X-Slot) and status."""

    url: str
    rate: float
    sent: int = 0
    failed: int = 0
    by_slot: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # a sample: "+1.23s <what>"
    failure_times: list[float] = field(default_factory=list)  # seconds after start (first 1000)
    duration: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p95, p99, max

    @property
    def ok(self) -> int:
        return self.sent - self.failed

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.duration if self.duration > 0 else 0.0

    def summary(self) -> str:
        """`sent 600 requests in 6.0s (100.0/s), 0 failed; by slot: canary=300 stable=300`."""
        slots = " ".join(f"{k}={v}" for k, v in sorted(self.by_slot.items())) or "-"
        return (f"sent {self.sent} requests in {self.duration:.1f}s ({self.achieved_rate:.1f}/s), "
                f"{self.failed} failed; by slot: {slots}")

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "rate": self.rate, "sent": self.sent, "failed": self.failed,
                "ok": self.ok, "by_slot": self.by_slot, "by_status": self.by_status,
                "errors": self.errors, "duration": round(self.duration, 3),
                "achieved_rate": round(self.achieved_rate, 2), "latency_ms": self.latency_ms}


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoadGenerator:
    """`with LoadGenerator(url, rate=100, max_seconds=30) as load: ...; report = load.stop()`."""

    MAX_ERRORS = 20

    def __init__(self, url: str, rate: float = 100.0, max_seconds: float = 60.0,
                 max_requests: int | None = None, timeout: float = 5.0, workers: int | None = None,
                 ok_status: range = range(200, 400), headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"LoadGenerator needs an http:// URL, not {url!r}")
        if parts.hostname != "localhost" and not _loopback(parts.hostname):
            raise ValueError(f"LoadGenerator only sends to the loopback interface, not {parts.hostname}")
        if rate <= 0 or max_seconds <= 0:
            raise ValueError("rate and max_seconds must be > 0")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.rate = float(rate)
        self.max_seconds = float(max_seconds)
        self.max_requests = int(max_requests) if max_requests is not None else int(rate * max_seconds) + 1
        self.timeout = timeout
        self.workers = workers or max(4, min(48, int(rate // 4) + 1))  # room for 1 s stragglers
        self.ok_status = ok_status
        self.headers = {"User-Agent": "ps-testbed-load", "Connection": "close", **(headers or {})}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next = 0
        self._t0 = 0.0
        self._t_end: float | None = None
        self._latencies: list[float] = []
        self._report = LoadReport(url=url, rate=self.rate)

    # ---------------------------------------------------------------- control

    def start(self) -> LoadGenerator:
        """Start the worker threads; returns at once."""
        if self._threads:
            raise RuntimeError("load already started")
        self._t0 = time.monotonic()
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def wait(self, timeout: float | None = None) -> LoadReport:
        """Block until the load has ended by itself (its bounds), then return the report."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.report()

    def stop(self) -> LoadReport:
        """End the load now (requests in flight finish) and return the report."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self.report()

    def report(self) -> LoadReport:
        """The counts so far."""
        with self._lock:
            rep = self._report
            end = self._t_end if self._t_end is not None and not self.running else time.monotonic()
            rep.duration = max(0.0, end - self._t0) if self._t0 else 0.0
            lat = sorted(self._latencies)
            rep.latency_ms = {"p50": round(_percentile(lat, 0.5) * 1000, 1),
                              "p95": round(_percentile(lat, 0.95) * 1000, 1),
                              "p99": round(_percentile(lat, 0.99) * 1000, 1),
                              "max": round((lat[-1] if lat else 0.0) * 1000, 1)}
            return LoadReport(**{**rep.__dict__, "by_slot": dict(rep.by_slot),
                                 "by_status": dict(rep.by_status), "errors": list(rep.errors),
                                 "failure_times": list(rep.failure_times)})

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---------------------------------------------------------------- workers

    def _claim(self) -> float | None:
        """The due time of the next request, or None when the load is over."""
        with self._lock:
            if self._stop.is_set() or self._next >= self.max_requests:
                return None
            due = self._t0 + self._next / self.rate
            if due - self._t0 >= self.max_seconds:
                return None
            self._next += 1
            return due

    def _work(self) -> None:
        try:
            while True:
                due = self._claim()
                if due is None:
                    return
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    with self._lock:
                        self._next -= 1  # claimed but never sent
                    return
                self._one(due)
        finally:
            with self._lock:
                self._t_end = time.monotonic()

    def _one(self, due: float) -> None:
        started = time.monotonic()
        slot: str | None = None
        status: int | None = None
        error: str | None = None
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", self.path, headers=self.headers)
            response = conn.getresponse()
            response.read()
            status = response.status
            slot = response.getheader("X-Slot")
            if status not in self.ok_status:  # who answered it, when the answer says
                build = response.getheader("X-Build-Id")
                error = f"HTTP {status}" + (f" ({slot} {build})" if slot and build else "")
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"[:160]
        finally:
            conn.close()
        elapsed = time.monotonic() - started
        with self._lock:
            rep = self._report
            rep.sent += 1
            key = str(status) if status is not None else "error"
            rep.by_status[key] = rep.by_status.get(key, 0) + 1
            if error is None:
                self._latencies.append(elapsed)
                if slot:
                    rep.by_slot[slot] = rep.by_slot.get(slot, 0) + 1
            else:
                rep.failed += 1
                offset = started - self._t0
                if len(rep.failure_times) < 1000:
                    rep.failure_times.append(round(offset, 3))
                if len(rep.errors) < self.MAX_ERRORS:
                    rep.errors.append(f"+{offset:.2f}s {error}")


def slot_counts(reports: list[LoadReport]) -> Counter[str]:
    """Answers per slot over several reports."""
    total: Counter[str] = Counter()
    for rep in reports:
        total.update(rep.by_slot)
    return total


def slots_answering(url: str, n: int) -> dict[str, int]:
    """Send n requests (a new connection each) and count the X-Slot of the answers; non-200 fails."""
    import requests

    counts: dict[str, int] = {}
    with requests.Session() as session:
        for _ in range(n):
            answer = session.get(url, timeout=5, headers={"Connection": "close"})
            if answer.status_code != 200:
                raise AssertionError(f"{url} answered {answer.status_code}")
            slot = answer.headers.get("X-Slot", "?")
            counts[slot] = counts.get(slot, 0) + 1
    return counts

