"""`ps health-gate`: wait until every target is healthy, or give up with the last reason.

The rules (what counts as healthy, the timing rule, the logs fallback) are pure and live in
pipeline_steps/health.py; the probes that talk to HTTP, TCP and Docker are the Prober adapter
(adapters/prober.py, or a FakeProber in tests). This module is the loop (`gate`, `check_once`) and the
thin click command. Every name other layers import from here is still importable from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from pipeline_steps.adapters.prober import LiveProber
from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import DURATION
from pipeline_steps.config import HealthSpec, Host
from pipeline_steps.durations import format_duration
from pipeline_steps.errors import BadInput, CheckFailed
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
    _expect_pairs,
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

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import Prober as ProberInterface

Prober = LiveProber  # the real prober under its old name (the interface is adapters.interfaces.Prober)
_summarise = summarise

__all__ = [
    "FAST_RETRY", "FAST_RETRY_CAP", "LOG_EARLY_NS", "LOG_TAIL", "QUICK_TRY", "GatePolicy", "GateResult",
    "HealthTarget", "ProbeResult", "Prober", "TryRecord", "check_expectations", "check_once", "command",
    "fast_wait", "gate", "is_counted", "json_text", "logs_allowed", "logs_match", "lookup", "next_wait",
    "parse_expectation", "run_start_ns", "service_targets", "try_line",
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





@click.command("health-gate")
@click.option("--url", "urls", multiple=True, metavar="URL",
              help="An HTTP(S) URL that must answer (repeatable).")
@click.option("--service", "-s", metavar="NAME", help="Every host's port of this service's --slot (ps.yaml).")
@click.option("--slot", metavar="SLOT", help="The slot of --service (stable, canary, blue, green).")
@click.option("--container", "containers", multiple=True, metavar="NAME",
              help="Docker's health status of this container (no HEALTHCHECK: healthy while running).")
@click.option("--tcp", "tcps", multiple=True, metavar="HOST:PORT", help="A port that accepts connections.")
@click.option("--retries", type=click.IntRange(min=1), help="Counted tries before giving up [30].")
@click.option("--interval", type=DURATION, help="From the start of one try to the next [2s].")
@click.option("--timeout", type=DURATION, help="Per try [5s].")
@click.option("--expect-status", type=click.IntRange(100, 599), help="This status only [any 2xx].")
@click.option("--expect", "expects", multiple=True, metavar="KEY=VALUE",
              help="A dotted JSON path and its value, e.g. checks.redis=up (repeatable).")
@click.option("--max-latency", type=DURATION, help="A slower answer is a failure.")
@click.option("--successes", type=click.IntRange(min=1), help="Passing tries in a row [1].")
@click.option("--start-period", type=DURATION, help="Failures inside it do not count toward retries.")
@click.option("--logs-fallback", metavar="REGEX",
              help="When a target gives no answer at all, a matching log line of the container's current "
                   "run counts as up (with --url needs --container).")
@click.option("--all", "all_services", is_flag=True,
              help="With --slot: every service of ps.yaml that has that slot (each with its health spec).")
@pass_output
def command(out: Output, urls: tuple[str, ...], service: str | None, slot: str | None,
            containers: tuple[str, ...], tcps: tuple[str, ...], retries: int | None, interval: float | None,
            timeout: float | None, expect_status: int | None, expects: tuple[str, ...],
            max_latency: float | None, successes: int | None, start_period: float | None,
            logs_fallback: str | None, all_services: bool = False) -> None:
    """Wait until every target is healthy (exit 0), or give up with the last reason (exit 1)."""
    if all_services:  # issue 15 (ci helper): every service of ps.yaml with that slot, one after another
        if service or not slot or urls or containers or tcps:
            raise BadInput("--all goes with --slot alone (no --service, --url, --container, --tcp)")
        ctx = click.get_current_context()
        names = [s.name for s in load(out).services.values() if slot in s.slots]
        if not names:
            raise BadInput(f"no service has a {slot} slot")
        for name in names:
            ctx.invoke(command, service=name, slot=slot, urls=(), containers=(), tcps=(), retries=retries,
                       interval=interval, timeout=timeout, expect_status=expect_status, expects=expects,
                       max_latency=max_latency, successes=successes, start_period=start_period,
                       logs_fallback=logs_fallback, all_services=False)
        return
    if slot and not service:
        raise BadInput("--slot needs --service")
    if service and not slot:
        raise BadInput("--service needs --slot (which slot's port to check)")
    expect = _expect_pairs(expects) if expects else None
    spec = HealthSpec()
    targets: list[HealthTarget] = []
    if service and slot:
        config = load(out)
        spec = config.service(service).health
        targets.extend(service_targets(config, service, slot))
    policy = GatePolicy.from_spec(spec, retries=retries, interval=interval, timeout=timeout,
                                  expect_status=expect_status, expect=expect, max_latency=max_latency,
                                  successes=successes, start_period=start_period,
                                  logs_fallback=logs_fallback)
    if logs_fallback and urls and len(containers) != 1:
        raise BadInput("--logs-fallback with --url needs exactly one --container whose logs to search")
    logs_container = containers[0] if containers and policy.logs_fallback else None
    targets.extend(HealthTarget.url(u, logs_container=logs_container,
                                    docker=Host(name="local") if logs_container else None) for u in urls)
    targets.extend(HealthTarget.tcp(t) for t in tcps)
    targets.extend(replace(HealthTarget.container(c), logs_container=c if policy.logs_fallback else None)
                   for c in containers)
    if not targets:
        raise BadInput("no target: give --url, --service with --slot, --container or --tcp")
    result = gate(targets, policy, on_try=lambda r: _print_try(out, r, policy.retries))
    data = result.as_dict()
    took = format_duration(result.elapsed)
    tries = f"{result.tries} {'try' if result.tries == 1 else 'tries'}"
    if not result.healthy:
        out.say(f"unhealthy: gave up after {tries} in {took}: "
                f"{result.last_status} {result.reason}")
        raise CheckFailed(f"health gate gave up after {tries} in {took}: {result.reason}",
                          result={"step": "health-gate", **data})
    out.say(f"healthy after {tries} in {took}"
            + (f" ({result.attempts} probes)" if result.attempts != result.tries else ""))
    report(out, "health-gate", data)


def _print_try(out: Output, record: TryRecord, retries: int) -> None:
    if record.counted or record.ok:
        out.say(try_line(record, retries))
    else:
        out.debug(try_line(record, retries))
