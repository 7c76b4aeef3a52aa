"""The requests `ps verify-weights --probe` sends through nginx: who answered each (X-Upstream,
X-Build-Id). A TrafficSender (adapters/interfaces.py); tests may pass any function of that shape."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline_steps.errors import unreachable

PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Answer:
    """One probe request's outcome: the status and the headers that name who answered."""

    status: int | None  # None: no HTTP answer at all
    upstream: str | None = None  # X-Upstream ($upstream_addr)
    build_id: str | None = None  # X-Build-Id
    error: str | None = None


@dataclass
class ProbeRun:
    """The answers of one probe, and whether it ended before sending all requests."""

    url: str
    wanted: int
    answers: list[Answer] = field(default_factory=list)
    timed_out: bool = False
    stopped: bool = False


class Budget:
    """The bounds of one probe: `timeout` per request, `deadline` seconds in all, `stop` to end early."""

    def __init__(self, deadline: float, timeout: float = PROBE_TIMEOUT,
                 stop: threading.Event | None = None) -> None:
        self.ends = time.monotonic() + deadline
        self.timeout = timeout
        self.stop = stop

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def get(self, session: Any, url: str, headers: dict[str, str], *, first: bool) -> Answer | None:
        """One GET within the budget: who answered, or Answer(None, error) when nothing did; None when
        the deadline ran out (cut by the deadline, not an answer of the service). Unreachable (exit 3)
        when the `first` request of a probe gets no answer."""
        import requests

        left = self.ends - time.monotonic()
        if left <= 0:
            return None
        try:
            got = session.get(url, timeout=min(self.timeout, max(left, 0.05)), allow_redirects=False,
                              headers=headers)
        except requests.RequestException as exc:
            if time.monotonic() >= self.ends:
                return None
            if first:
                raise unreachable(f"nginx at {url}", exc) from None
            return Answer(None, error=type(exc).__name__)
        answer = Answer(got.status_code, got.headers.get("X-Upstream"), got.headers.get("X-Build-Id"))
        got.close()
        return answer


def send_probe(url: str, n: int, *, timeout: float = PROBE_TIMEOUT, deadline: float | None = None,
               stop: threading.Event | None = None) -> ProbeRun:
    """Send up to n sequential GETs to `url` (a new connection each, so no old nginx worker keeps us).

    Thread-safe (its own requests.Session, no shared state) and bounded: `timeout` per request and
    `deadline` seconds in all (default max(30, n / 4)); `stop` ends it early. Unreachable (exit 3) when
    the very first request gets no answer.
    """
    import requests

    run = ProbeRun(url=url, wanted=n)
    budget = Budget(deadline if deadline is not None else max(30.0, n * 0.25), timeout, stop)
    with requests.Session() as session:
        for i in range(n):
            if budget.stopped():
                run.stopped = True
                break
            answer = budget.get(session, url, {"Connection": "close"}, first=i == 0)
            if answer is None:
                run.timed_out = True
                break
            run.answers.append(answer)
    return run
