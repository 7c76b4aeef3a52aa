"""The requests `ps verify-weights --probe` sends through nginx: who answered each (X-Upstream,
X-Build-Id). A TrafficSender (adapters/interfaces.py); tests may pass any function of that shape."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

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


def send_probe(url: str, n: int, *, timeout: float = PROBE_TIMEOUT, deadline: float | None = None,
          stop: threading.Event | None = None) -> ProbeRun:
    """Send up to n sequential GETs to `url` (a new connection each, so no old nginx worker keeps us).

    Thread-safe (its own requests.Session, no shared state) and bounded: `timeout` per request and
    `deadline` seconds in all (default max(30, n / 4)); `stop` ends it early. Unreachable (exit 3) when
    the very first request gets no answer.
    """
    import requests

    run = ProbeRun(url=url, wanted=n)
    ends = time.monotonic() + (deadline if deadline is not None else max(30.0, n * 0.25))
    with requests.Session() as session:
        for i in range(n):
            if stop is not None and stop.is_set():
                run.stopped = True
                break
            left = ends - time.monotonic()
            if left <= 0:
                run.timed_out = True
                break
            try:
                got = session.get(url, timeout=min(timeout, max(left, 0.05)), allow_redirects=False,
                                  headers={"Connection": "close"})
            except requests.RequestException as exc:
                if time.monotonic() >= ends:  # cut by the deadline, not an answer of the service
                    run.timed_out = True
                    break
                if i == 0:
                    raise unreachable(f"nginx at {url}", exc) from None
                run.answers.append(Answer(None, error=type(exc).__name__))
                continue
            run.answers.append(Answer(got.status_code, got.headers.get("X-Upstream"),
                                      got.headers.get("X-Build-Id")))
            got.close()
    return run

