"""The health gate: wait until every target is healthy, or give up with the last reason.

The rules (what counts as healthy, the timing rule, the logs fallback) are pure and live in
pipeline_steps/health.py; the probes that talk to HTTP, TCP and Docker are the Prober adapter
(adapters/prober.py, or a FakeProber in tests). This module is the loop (`gate`, `check_once`, and
`gate_hosts`: one gate per host, the hosts at once); the click command is cli/health_gate.py.
The health names other layers import from here are re-exported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pipeline_steps.adapters.prober import LiveProber
from pipeline_steps.errors import BadInput
from pipeline_steps.health import (
    _TOLERANCE,
    FAST_RETRY,
    FAST_RETRY_CAP,
    LOG_EARLY_NS,
    LOG_TAIL,
    QUICK_TRY,
    GatePolicy,
    GateResult,
    HealthTarget,
    ProbeResult,
    TryRecord,
    check_expectations,
    fast_wait,
    is_counted,
    json_text,
    logs_allowed,
    logs_match,
    lookup,
    next_wait,
    parse_expectation,
    run_start_ns,
    service_targets,
    summarise,
    try_line,
)
from pipeline_steps.parallel import DEFAULT_LIMIT, each_host

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import Prober as ProberInterface

Prober = LiveProber  # the real prober under its old name (the interface is adapters.interfaces.Prober)

__all__ = [
    "FAST_RETRY", "FAST_RETRY_CAP", "LOG_EARLY_NS", "LOG_TAIL", "QUICK_TRY", "GatePolicy", "GateResult",
    "HealthTarget", "ProbeResult", "Prober", "TryRecord", "check_expectations", "check_once",
    "fast_wait", "gate", "gate_hosts", "is_counted", "json_text", "logs_allowed", "logs_match", "lookup",
    "next_wait", "parse_expectation", "run_start_ns", "service_targets", "try_line",
]


def check_once(targets: Sequence[HealthTarget], policy: GatePolicy,
               prober: ProberInterface | None = None) -> TryRecord:
    """One try over all targets (Unreachable when a needed Docker engine does not answer)."""
    if not targets:
        raise BadInput("no target: give --url, --service with --slot, --container or --tcp")
    own = prober is None
    active: ProberInterface = prober or Prober()
    start = time.monotonic()
    try:
        results = [active.probe(t, policy) for t in targets]
    finally:
        if own:
            active.close()
    return summarise(1, True, 0.0, time.monotonic() - start, results)


# ---------------------------------------------------------------- the gate


class _Run:
    """State of one gate run; its methods are tenacity's attempt, stop and wait."""

    def __init__(self, targets: Sequence[HealthTarget], policy: GatePolicy,
                 on_try: Callable[[TryRecord], None] | None, prober: ProberInterface | None = None) -> None:
        self.targets = targets
        self.policy = policy
        self.on_try = on_try
        self.own_prober = prober is None
        self.prober: ProberInterface = prober or Prober()
        self.prober.prepare()  # import and set up HTTP before the first try is timed
        self.started = time.monotonic()
        self.window_start: float | None = None
        self.counted = 0
        self.streak = 0
        self.records: list[TryRecord] = []
        self.last: TryRecord | None = None
        self.last_duration = 0.0
        self.passed = False  # a try has passed: the app has booted, not-ready answers wait the interval

    @property
    def healthy(self) -> bool:
        return self.streak >= self.policy.successes

    def attempt(self) -> TryRecord:
        begin = time.monotonic()
        since = begin - self.window_start if self.window_start is not None else 0.0
        new_window = self.window_start is None or since >= self.policy.interval - _TOLERANCE
        results = [self.prober.probe(t, self.policy) for t in self.targets]
        duration = time.monotonic() - begin
        failed = any(not r.ok for r in results)
        in_start = begin - self.started < self.policy.start_period
        counted = is_counted(self.window_start is None, since, self.policy.interval, failed, in_start)
        if counted:
            self.counted += 1
        if new_window:
            self.window_start = begin
        self.streak = 0 if failed else self.streak + 1
        self.passed = self.passed or not failed
        record = summarise(max(self.counted, 1), counted, begin - self.started, duration, results)
        self.records.append(record)
        self.last = record
        self.last_duration = duration
        if self.on_try is not None:
            self.on_try(record)
        return record

    def should_stop(self, retry_state: Any) -> bool:
        return self.healthy or self.counted >= self.policy.retries

    def wait_seconds(self, retry_state: Any) -> float:
        record = self.last
        if record is None:
            return 0.0
        now = time.monotonic()
        since = now - self.window_start if self.window_start is not None else 0.0
        fast = fast_wait(record.results, self.last_duration, self.passed, self.policy.fast_retry)
        if fast is not None:
            return next_wait(self.policy.interval, self.last_duration, True, since, fast)
        # measured from the start of this try
        return next_wait(self.policy.interval, now - (self.started + record.at), False, since)


def gate(targets: Sequence[HealthTarget], policy: GatePolicy,
         on_try: Callable[[TryRecord], None] | None = None,
         prober: ProberInterface | None = None) -> GateResult:
    """Try until healthy or out of retries; never raises for unhealthy (Unreachable for a dead engine)."""
    import tenacity

    if not targets:
        raise BadInput("no target: give --url, --service with --slot, --container or --tcp")
    run = _Run(targets, policy, on_try, prober)
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda _record: not run.healthy),
        stop=run.should_stop,
        wait=run.wait_seconds,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        reraise=True,
    )
    try:
        retrying(run.attempt)
    finally:
        if run.own_prober:
            run.prober.close()
    elapsed = time.monotonic() - run.started
    last = run.last
    if run.healthy:
        reason = last.detail if last and last.detail else "healthy"
    elif last is not None and last.ok:
        reason = f"only {run.streak} of {policy.successes} passing tries in a row"
    else:
        reason = last.reason if last else "no try"
    return GateResult(healthy=run.healthy, tries=run.counted, elapsed=elapsed,
                      last_status=last.status if last else "-", reason=reason, records=run.records,
                      attempts=len(run.records), targets=[t.label for t in targets])


# ---------------------------------------------------------------- every host at once


def gate_hosts(targets: Sequence[HealthTarget], policy: GatePolicy,
               on_try: Callable[[str, TryRecord], None] | None = None,
               prober: Callable[[], ProberInterface] | None = None,
               limit: int = DEFAULT_LIMIT) -> GateResult:
    """One gate per host (a target's `docker` host; one without is a host of its own), the hosts at once.

    Each host needs its own `policy.successes` passing tries in a row within its own retries; the result
    is healthy when every host is, its reason naming each host that is not. `on_try(host, record)` is
    called from the host's thread; `prober` makes one Prober per host (default: a live one each).
    """
    if not targets:
        raise BadInput("no target: give --url, --service with --slot, --container or --tcp")
    groups: dict[str, list[HealthTarget]] = {}
    for t in targets:
        groups.setdefault(t.docker.name if t.docker is not None else t.label, []).append(t)

    def one(host: str) -> GateResult:
        report = (lambda record: on_try(host, record)) if on_try is not None else None
        return gate(groups[host], policy, on_try=report, prober=prober() if prober else None)

    names = list(groups)
    return merge_results(list(zip(names, each_host(names, one, limit), strict=True)))


def merge_results(per_host: Sequence[tuple[str, GateResult]]) -> GateResult:
    """The gates of several hosts as one verdict (a single host's result as it is)."""
    if len(per_host) == 1:
        return per_host[0][1]
    failing = [(h, r) for h, r in per_host if not r.healthy]
    shown = failing[0][1] if failing else per_host[0][1]
    reason = "; ".join(f"host {h}: {r.reason}" for h, r in failing) if failing else shown.reason
    return GateResult(healthy=not failing, tries=max(r.tries for _, r in per_host),
                      elapsed=max(r.elapsed for _, r in per_host), last_status=shown.last_status,
                      reason=reason, records=[rec for _, r in per_host for rec in r.records],
                      attempts=sum(r.attempts for _, r in per_host),
                      targets=[t for _, r in per_host for t in r.targets])
