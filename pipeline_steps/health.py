"""What health means for `ps health-gate` (pure: no I/O): targets, policy, expectations, the timing rule.

Targets: HTTP URLs (status, JSON expectations, latency), the slots of a configured service, Docker's own
health status of a container, and TCP ports. All targets must pass in the same try.

Timing rule (documented in the README):
- an interval is measured from the START of a try: wait = max(0, interval - try duration);
- fast re-tries: when nothing serves the port yet (connection refused, or closed before any answer, as
  docker-proxy does while the app starts), the gate re-tries after `fast_retry` (50 ms); when the app
  answers but is not ready (non-2xx, or an unmet --expect such as `{"status":"starting"}`) and no try has
  passed yet (it is still booting), it re-tries after as long as that answer took, at least 50 ms and at
  most 100 ms (FAST_RETRY_CAP: a booting app is never kept busy more than half the time). Only after a
  quick try (under QUICK_TRY, 0.5 s): after a timeout or a slow answer the next try waits for the interval;
- fast re-tries inside one interval window do not use up tries: a try counts when it starts at least one
  interval after the last counted try started (the first try always counts). So `--retries 30
  --interval 2s` still gives a service about a minute, yet a port that opens or an app that turns ready
  is noticed within ~0.1 s;
- failing tries that start inside `--start-period` do not count toward the retries (as Docker's
  HEALTHCHECK); a passing one counts toward `--successes`;
- `--successes K` needs K passing tries in a row; any failing try resets the streak.

Logs fallback (`--logs-fallback REGEX`, `health.logs_fallback`): a failing target counts as up when its
container's logs prove it, but only when the endpoint gave no answer at all (refused, closed or reset
before any answer, timed out; for a --container target: Docker health still `starting`). An answer that
says unhealthy (any status that is not wanted, an unmet --expect, a partial answer) stays unhealthy. The
container must be running (and not Docker-unhealthy), and only a complete log line of its current run
counts (stamped by the engine since State.StartedAt, see run_start_ns; compared in nanoseconds on the
engine's own clock), never a line of an earlier run or of another container of the same name.

A container without a HEALTHCHECK counts as healthy while it is running; a container that is not running
fails.

The prober that talks to HTTP, TCP and Docker is adapters/prober.py; the loop is
operations/health_gate.py, the command cli/health_gate.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pipeline_steps.config import Config, HealthSpec, Host
from pipeline_steps.errors import BadInput
from pipeline_steps.timestamps import log_lines_after, parse_state_time

MAX_BODY = 1 << 20  # 1 MiB: a health answer larger than this is a bad answer
FAST_RETRY = 0.05  # seconds between tries while nothing serves the port yet
FAST_RETRY_CAP = 0.1  # longest fast re-try wait after a not-ready answer
QUICK_TRY = 0.5  # a try slower than this (a timeout, a slow answer) is never followed by a fast re-try
LOG_TAIL = 500  # lines of container logs (since its start) searched by --logs-fallback
LOG_EARLY_NS = 50_000_000  # a run's first log lines may be stamped this much before its State.StartedAt
_TOLERANCE = 0.001  # scheduling slack when deciding whether a try starts a new interval window


# ---------------------------------------------------------------- expectations (pure)


def parse_expectation(text: str) -> tuple[tuple[str, ...], str]:
    """`checks.redis=up` -> (("checks", "redis"), "up"); BadInput for anything else."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise BadInput(f"--expect {text!r}: use KEY=VALUE with a dotted JSON path, e.g. status=healthy")
    path = tuple(key.split("."))
    if any(part == "" for part in path):
        raise BadInput(f"--expect {text!r}: empty segment in the key {key!r}")
    return path, value


def lookup(data: Any, path: Sequence[str]) -> tuple[bool, Any]:
    """Follow a dotted path through JSON objects (and list indices); (found, value)."""
    current = data
    for part in path:
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return False, None
    return True, current


def json_text(value: Any) -> str:
    """A JSON value as text to compare with an expected VALUE: strings as is, others as JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)


def check_expectations(data: Any, expect: Iterable[tuple[str, str]]) -> str | None:
    """None when every `key=value` holds in `data`, else the first reason."""
    for key, wanted in expect:
        path = tuple(key.split("."))
        found, value = lookup(data, path)
        if not found:
            return f"missing key {key}"
        if json_text(value) != wanted:
            return f"{key}={json_text(value)[:60]} (want {wanted})"
    return None


def next_wait(interval: float, try_duration: float, fast: bool, since_window_start: float,
              fast_retry: float = FAST_RETRY) -> float:
    """Seconds to wait after a try: interval measured from the try's start; `fast_retry` when fast."""
    if fast:
        return max(0.0, min(fast_retry, interval - since_window_start))
    return max(0.0, interval - try_duration)


def fast_wait(results: Sequence[ProbeResult], try_duration: float, passed_before: bool,
              fast_retry: float = FAST_RETRY) -> float | None:
    """The fast re-try wait after a failing try, or None when the next try waits for the interval.

    Refused / closed before an answer: `fast_retry`. A not-ready answer while no try has passed yet: as
    long as the try took, within [fast_retry, FAST_RETRY_CAP]. Never after a slow try (QUICK_TRY).
    """
    failing = [r for r in results if not r.ok]
    if not failing or try_duration > QUICK_TRY:
        return None
    if all(r.not_listening for r in failing):
        return fast_retry
    if not passed_before and all(r.not_listening or r.not_ready for r in failing):
        return min(max(fast_retry, FAST_RETRY_CAP), max(fast_retry, try_duration))
    return None


def logs_allowed(result: ProbeResult) -> bool:
    """Whether the logs fallback may turn this failing result into a pass: only when nothing answered."""
    return not result.ok and result.no_answer


def is_counted(first: bool, since_window_start: float, interval: float, failed: bool,
               in_start_period: bool) -> bool:
    """Whether a try uses up one of the retries (see the module docstring)."""
    if failed and in_start_period:
        return False
    return first or since_window_start >= interval - _TOLERANCE


# ---------------------------------------------------------------- public data


@dataclass(frozen=True)
class HealthTarget:
    """One thing that must be healthy: an HTTP URL, a TCP `host:port`, or a container."""

    kind: str  # "http" | "tcp" | "container"
    address: str  # the URL, `host:port`, or container name
    docker: Host | None = None  # engine of a container target and of the logs fallback
    logs_container: str | None = None  # container whose logs may prove an HTTP target up

    @property
    def label(self) -> str:
        return self.address if self.kind != "container" else f"container {self.address}"

    @classmethod
    def url(cls, url: str, logs_container: str | None = None, docker: Host | None = None) -> HealthTarget:
        if not url.startswith(("http://", "https://")):
            raise BadInput(f"--url {url!r}: must start with http:// or https://")
        return cls("http", url, docker=docker, logs_container=logs_container)

    @classmethod
    def tcp(cls, host_port: str) -> HealthTarget:
        host, sep, port = host_port.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadInput(f"--tcp {host_port!r}: use HOST:PORT with a port from 1 to 65535")
        return cls("tcp", f"{host.strip('[]')}:{int(port)}")

    @classmethod
    def container(cls, name: str, docker: Host | None = None) -> HealthTarget:
        if not name:
            raise BadInput("--container needs a container name")
        return cls("container", name, docker=docker or Host(name="local"))


@dataclass(frozen=True)
class GatePolicy(HealthSpec):
    """How hard to try and what counts as healthy: a HealthSpec (its fields and defaults, derived, not
    re-declared; `path` is unused here, targets carry their URL) with `expect` as ordered (key, value)
    pairs, plus the gate's own knobs."""

    # the spec's mapping, normalised to pairs by from_spec (a tuple keeps the policy hashable)
    expect: tuple[tuple[str, str], ...] = ()  # type: ignore[assignment]
    fast_retry: float = FAST_RETRY
    max_body: int = MAX_BODY

    def __post_init__(self) -> None:
        if self.retries < 1:
            raise BadInput("retries must be at least 1")
        if self.successes < 1:
            raise BadInput("successes must be at least 1")
        if self.successes > self.retries:
            raise BadInput(f"successes ({self.successes}) cannot exceed retries ({self.retries})")
        if self.timeout <= 0:
            raise BadInput("timeout must be more than 0")
        if self.expect_status is not None and not 100 <= self.expect_status <= 599:
            raise BadInput(f"expect status {self.expect_status} is not an HTTP status")
        for key, _ in self.expect:
            parse_expectation(f"{key}=")
        if self.logs_fallback is not None:
            try:
                re.compile(self.logs_fallback)
            except re.error as exc:
                raise BadInput(f"--logs-fallback {self.logs_fallback!r}: not a regular expression: {exc}") \
                    from None

    @classmethod
    def from_spec(cls, spec: HealthSpec, **overrides: Any) -> GatePolicy:
        """The service's ps.yaml health spec with the given (non-None) overrides on top."""
        values: dict[str, Any] = {f.name: getattr(spec, f.name) for f in fields(HealthSpec)}
        unknown = set(overrides) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise TypeError(f"unknown policy fields: {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["expect"] = _expect_pairs(values["expect"])
        return cls(**values)


def _expect_pairs(expect: Mapping[str, str] | Iterable[tuple[str, str]] | Iterable[str]) -> \
        tuple[tuple[str, str], ...]:
    if isinstance(expect, Mapping):
        return tuple((str(k), str(v)) for k, v in expect.items())
    pairs: list[tuple[str, str]] = []
    for item in expect:
        if isinstance(item, str):
            path, value = parse_expectation(item)
            pairs.append((".".join(path), value))
        else:
            pairs.append((str(item[0]), str(item[1])))
    return tuple(pairs)


@dataclass(frozen=True)
class ProbeResult:
    """One target in one try."""

    target: str
    ok: bool
    status: str  # "200", "503", "refused", "healthy", "open", "error" ...
    latency_ms: float
    reason: str = ""  # why it failed ("" when ok)
    detail: str = ""  # e.g. status=starting, or "logs matched"
    not_listening: bool = False  # refused, or closed before any answer
    not_ready: bool = False  # a complete answer that is not (yet) the wanted one: re-tried fast at boot
    no_answer: bool = False  # nothing answered (refused, closed, timed out): the logs fallback may apply


@dataclass(frozen=True)
class TryRecord:
    """One try over all targets."""

    number: int  # the counted try this belongs to (fast re-tries share it)
    counted: bool
    at: float  # seconds since the gate started
    duration_ms: float
    ok: bool
    status: str
    latency_ms: float
    reason: str
    detail: str
    results: tuple[ProbeResult, ...] = ()

    @property
    def not_listening(self) -> bool:
        failing = [r for r in self.results if not r.ok]
        return bool(failing) and all(r.not_listening for r in failing)


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict and how it got there."""

    healthy: bool
    tries: int  # counted tries
    elapsed: float
    last_status: str
    reason: str
    records: list[TryRecord] = field(default_factory=list)
    attempts: int = 0  # every try, fast re-tries included
    targets: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["elapsed"] = round(self.elapsed, 3)
        return data

# ---------------------------------------------------------------- a container's readiness


@dataclass(frozen=True)
class ContainerReadiness:
    """Docker's word on one container, by the gate's rule for a container target (the one rule: the
    prober's --container targets, `requires` and the workers' replicas all read it from here)."""

    status: str  # State.Status: running, restarting, exited, paused, created, ... ("gone": no container)
    health: str  # the HEALTHCHECK's status: starting | healthy | unhealthy, "" without one

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def ready(self) -> bool:
        """Running, and healthy when it has a HEALTHCHECK (without one, running is ready)."""
        return self.running and self.health in ("", "healthy")

    @property
    def failed(self) -> bool:
        """No waiting will make it ready: not running, or its HEALTHCHECK says unhealthy."""
        return not self.running or self.health == "unhealthy"


def container_readiness(state: Mapping[str, Any] | None) -> ContainerReadiness:
    """The readiness of a container from its inspect `State` (None: there is no such container)."""
    if state is None:
        return ContainerReadiness("gone", "")
    status = str(state.get("Status") or "")
    if not status:  # an engine that gives only the flags
        status = "restarting" if state.get("Restarting") else "running" if state.get("Running") else "unknown"
    elif status == "running" and state.get("Restarting"):
        status = "restarting"
    return ContainerReadiness(status, str((state.get("Health") or {}).get("Status") or ""))


# ---------------------------------------------------------------- targets of a service


def service_targets(config: Config, service: str, slot: str) -> list[HealthTarget]:
    """Every configured host's port of `service`'s `slot`, with the slot container for logs fallback."""
    svc = config.service(service)
    if slot not in svc.slots:
        known = ", ".join(sorted(svc.slots)) or "none"
        raise BadInput(f"service {service!r} has no slot {slot!r} (slots: {known})")
    port = svc.slots[slot]
    container = f"{config.app}-{svc.name}-{slot}"
    return [HealthTarget("http", f"http://{_url_host(host.address)}:{port}{svc.health.path}", docker=host,
                         logs_container=container) for host in config.hosts_of(svc)]


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def run_start_ns(state: Mapping[str, Any]) -> int | None:
    """From when (ns since the epoch, the engine's clock) a log line belongs to the container's current run.

    The engine stamps State.StartedAt just after the process began, so its first lines may be stamped up to
    LOG_EARLY before it; lines of a previous run (restart, stop/start) end at FinishedAt, and may be read
    out a little after it, so the bound is never before the middle of the gap between the two.
    None when StartedAt is unreadable (the fallback then does not count).
    """
    started = parse_state_time(state.get("StartedAt"))
    if started is None:
        return None
    bound = started - LOG_EARLY_NS
    finished = parse_state_time(state.get("FinishedAt"))
    if finished is not None and finished < started:
        bound = max(bound, (finished + started) // 2)
    return bound


def logs_match(text: str, since_ns: int, pattern: str) -> bool:
    """Whether a complete line of timestamped Docker logs, stamped at or after `since_ns`, matches.

    Each line is `<RFC 3339 nano timestamp> <message>\\n`; the regex is searched in one message at a time
    (never across lines), and a last line without its newline (still being written) is not counted.
    """
    lines = text.split("\n")[:-1]  # the piece after the last newline is not a complete line
    regex = re.compile(pattern)
    return any(regex.search(message.rstrip("\r")) for message in log_lines_after(lines, since_ns - 1))


def summarise(number: int, counted: bool, at: float, duration: float,
              results: Sequence[ProbeResult]) -> TryRecord:
    """One try's record from its per-target results (status, reasons, the slowest latency)."""
    failing = [r for r in results if not r.ok]
    shown = failing[0] if failing else (results[0] if results else None)
    status = shown.status if shown else "-"
    if len(results) > 1:
        status = f"{len(results) - len(failing)}/{len(results)} up" + (f", {shown.status}" if failing and
                                                                        shown else "")
    reason = "; ".join(f"{r.target}: {r.reason}" if len(results) > 1 else r.reason for r in failing)
    return TryRecord(number=number, counted=counted, at=round(at, 4), duration_ms=round(duration * 1000, 1),
                     ok=not failing, status=status, latency_ms=round(max((r.latency_ms for r in results),
                                                                          default=0.0), 1),
                     reason=reason, detail=shown.detail if shown else "", results=tuple(results))


def try_line(record: TryRecord, retries: int) -> str:
    """`try 3/30  503  12 ms  status=starting`"""
    mark = "" if record.counted else "+"
    text = f"try {record.number}/{retries}{mark}  {record.status}  {record.latency_ms:.0f} ms"
    if record.ok:
        return f"{text}  {record.detail or 'ok'}"
    extra = record.detail if record.detail and record.detail not in record.reason else ""
    return "  ".join(x for x in (text, extra, record.reason) if x)

