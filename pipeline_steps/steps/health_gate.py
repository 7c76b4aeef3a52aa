"""`ps health-gate`: wait until every target is healthy, or give up with the last reason.

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
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import click

from pipeline_steps.adapters import http_probe
from pipeline_steps.command import load, pass_output, report
from pipeline_steps.config import Config, HealthSpec, Host
from pipeline_steps.durations import DURATION, format_duration
from pipeline_steps.errors import BadInput, CheckFailed, Unreachable
from pipeline_steps.output import Output

if TYPE_CHECKING:
    import requests

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
class GatePolicy:
    """How hard to try and what counts as healthy."""

    retries: int = 30
    interval: float = 2.0
    timeout: float = 5.0
    expect_status: int | None = None  # None: any 2xx
    expect: tuple[tuple[str, str], ...] = ()
    max_latency: float | None = None
    successes: int = 1
    start_period: float = 0.0
    logs_fallback: str | None = None
    fast_retry: float = FAST_RETRY
    max_body: int = http_probe.MAX_BODY

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
        values: dict[str, Any] = {
            "retries": spec.retries, "interval": spec.interval, "timeout": spec.timeout,
            "expect_status": spec.expect_status, "expect": spec.expect, "max_latency": spec.max_latency,
            "successes": spec.successes, "start_period": spec.start_period,
            "logs_fallback": spec.logs_fallback,
        }
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
                         logs_container=container) for host in config.hosts]


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


# ---------------------------------------------------------------- probing


class Prober:
    """Holds the HTTP session and Docker clients of one gate run (closed by close())."""

    def __init__(self) -> None:
        self._session: requests.Session | None = None
        self._clients: dict[Host, Any] = {}

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = http_probe.new_session()
        return self._session

    def docker(self, host: Host) -> Any:
        """A connected client for `host` (Unreachable, exit 3, when its engine does not answer)."""
        if host not in self._clients:
            from pipeline_steps.adapters import docker_host

            self._clients[host] = docker_host.connect(host, timeout=10)
        return self._clients[host]

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        for client in self._clients.values():
            try:
                client.close()
            except Exception:
                pass
        self._clients.clear()

    def probe(self, target: HealthTarget, policy: GatePolicy) -> ProbeResult:
        """One target once (the logs fallback only when the target gave no answer at all)."""
        if target.kind == "http":
            result = self._http(target, policy)
        elif target.kind == "tcp":
            host, _, port = target.address.rpartition(":")
            answer = http_probe.tcp_connect(host, int(port), policy.timeout)
            ms = answer.latency * 1000
            if answer.error:
                result = ProbeResult(target.label, False, "refused" if answer.not_listening else "error", ms,
                                     answer.error, not_listening=answer.not_listening,
                                     no_answer=answer.not_listening or answer.timed_out)
            else:
                result = ProbeResult(target.label, True, "open", ms)
        else:
            result = self._container(target)
        if logs_allowed(result) and policy.logs_fallback and target.logs_container and target.docker:
            why = self._logs_proof(target.docker, target.logs_container, policy.logs_fallback)
            if why is None:
                return replace(result, ok=True, reason="",
                               detail=f"logs of {target.logs_container} match (was: {result.reason})")
            return replace(result, reason=f"{result.reason} ({why})")
        return result

    def _http(self, target: HealthTarget, policy: GatePolicy) -> ProbeResult:
        label = target.label
        answer = http_probe.http_get(target.address, policy.timeout, policy.max_body, self.session)
        ms = answer.latency * 1000
        if answer.status is None:
            status = "refused" if answer.error == "connection refused" else "error"
            return ProbeResult(label, False, status, ms, answer.error or "no answer",
                               not_listening=answer.not_listening,
                               no_answer=answer.not_listening or answer.timed_out)
        status = str(answer.status)
        if answer.error:  # a partial answer (reset mid-body, too big, too slow to finish): it answered
            return ProbeResult(label, False, status, ms, answer.error)
        data: Any = None
        parsed = False
        try:
            data = json.loads(answer.body.decode("utf-8"))
            parsed = True
        except (UnicodeDecodeError, ValueError):
            pass
        detail = ""
        if parsed and isinstance(data, dict) and "status" in data:
            detail = f"status={json_text(data['status'])[:40]}"
        if policy.expect_status is not None:
            if answer.status != policy.expect_status:
                return ProbeResult(label, False, status, ms, f"HTTP {status} (want {policy.expect_status})",
                                   detail, not_ready=True)
        elif not 200 <= answer.status < 300:
            return ProbeResult(label, False, status, ms, f"HTTP {status} (want 2xx)", detail, not_ready=True)
        if policy.expect:
            if not parsed:
                return ProbeResult(label, False, status, ms, "body is not JSON", detail, not_ready=True)
            problem = check_expectations(data, policy.expect)
            if problem:
                return ProbeResult(label, False, status, ms, problem, detail, not_ready=True)
        if policy.max_latency is not None and answer.latency > policy.max_latency:
            return ProbeResult(label, False, status, ms,
                               f"too slow: {ms:.0f} ms > {policy.max_latency * 1000:.0f} ms", detail)
        return ProbeResult(label, True, status, ms, "", detail)

    def _inspect(self, host: Host, name: str) -> dict[str, Any] | None:
        """`docker inspect` of a container (None when there is none; Unreachable for a dead engine)."""
        import docker.errors

        from pipeline_steps.adapters import docker_host

        client = self.docker(host)
        try:
            return dict(client.api.inspect_container(name))
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError:
            raise
        except Exception as exc:
            if docker_host.is_unreachable(exc):
                raise Unreachable(f"Docker engine of host {host.name} ({host.endpoint}) stopped answering") \
                    from None
            raise

    def _container(self, target: HealthTarget) -> ProbeResult:
        import docker.errors

        host = target.docker or Host(name="local")
        start = time.monotonic()
        try:
            info = self._inspect(host, target.address)
        except docker.errors.APIError as exc:
            return ProbeResult(target.label, False, "error", _ms(start), f"Docker: {exc.explanation or exc}")
        if info is None:
            return ProbeResult(target.label, False, "missing", _ms(start), "no such container")
        state = info.get("State") or {}
        running = state.get("Status", "unknown")
        if running != "running":
            return ProbeResult(target.label, False, running, _ms(start),
                               f"container is {running} (exit code {state.get('ExitCode')})")
        health = state.get("Health")
        if not health:
            return ProbeResult(target.label, True, "running", _ms(start), detail="running, no HEALTHCHECK")
        status = str(health.get("Status", "unknown"))
        log = health.get("Log") or []
        last = (log[-1].get("Output") or "").strip().replace("\n", " ")[:80] if log else ""
        detail = f"exit={log[-1].get('ExitCode')} {last}".strip() if log else ""
        if status == "healthy":
            return ProbeResult(target.label, True, status, _ms(start), detail=detail)
        # Docker has no verdict yet while `starting`: like a port that does not answer yet
        return ProbeResult(target.label, False, status, _ms(start), f"Docker health is {status}", detail,
                           no_answer=status == "starting")

    def _logs_proof(self, host: Host, container: str, pattern: str) -> str | None:
        """None when a complete log line of the container's current run matches, else why not."""
        import docker.errors

        try:
            info = self._inspect(host, container)
        except docker.errors.APIError as exc:
            return f"logs of {container}: Docker: {exc.explanation or exc}"
        if info is None:
            return f"logs of {container}: no such container"
        state = info.get("State") or {}
        if not state.get("Running") or state.get("Restarting"):
            return f"logs of {container}: not counted, it is {state.get('Status', 'not running')}"
        if str((state.get("Health") or {}).get("Status")) == "unhealthy":
            return f"logs of {container}: not counted, Docker health is unhealthy"
        since = run_start_ns(state)
        if since is None:
            return f"logs of {container}: start time {state.get('StartedAt')!r} unreadable"
        try:  # by id: a container re-created under the same name since the inspect has other logs
            raw = self.docker(host).api.logs(info.get("Id") or container, stdout=True, stderr=True,
                                             timestamps=True, since=max(1, since // 1_000_000_000),
                                             tail=LOG_TAIL)
        except docker.errors.DockerException as exc:
            return f"logs of {container}: unreadable ({type(exc).__name__})"
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if logs_match(text, since, pattern):
            return None
        return f"logs of {container}: no line matching {pattern!r} since it started"


def run_start_ns(state: Mapping[str, Any]) -> int | None:
    """From when (ns since the epoch, the engine's clock) a log line belongs to the container's current run.

    The engine stamps State.StartedAt just after the process began, so its first lines may be stamped up to
    LOG_EARLY before it; lines of a previous run (restart, stop/start) end at FinishedAt, and may be read
    out a little after it, so the bound is never before the middle of the gap between the two.
    None when StartedAt is unreadable (the fallback then does not count).
    """
    from pipeline_steps.adapters.nginx import parse_log_timestamp

    text = str(state.get("StartedAt") or "")
    started = parse_log_timestamp(text) if text and not text.startswith("0001-") else None
    if started is None:
        return None
    bound = started - LOG_EARLY_NS
    finished_text = str(state.get("FinishedAt") or "")
    finished = parse_log_timestamp(finished_text) if not finished_text.startswith("0001-") else None
    if finished is not None and finished < started:
        bound = max(bound, (finished + started) // 2)
    return bound


def logs_match(text: str, since_ns: int, pattern: str) -> bool:
    """Whether a complete line of timestamped Docker logs, stamped at or after `since_ns`, matches.

    Each line is `<RFC 3339 nano timestamp> <message>\\n`; the regex is searched in one message at a time
    (never across lines), and a last line without its newline (still being written) is not counted.
    """
    from pipeline_steps.adapters.nginx import log_lines_after

    lines = text.split("\n")[:-1]  # the piece after the last newline is not a complete line
    regex = re.compile(pattern)
    return any(regex.search(message.rstrip("\r")) for message in log_lines_after(lines, since_ns - 1))


def _ms(start: float) -> float:
    return (time.monotonic() - start) * 1000


def _summarise(number: int, counted: bool, at: float, duration: float,
               results: Sequence[ProbeResult]) -> TryRecord:
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


def check_once(targets: Sequence[HealthTarget], policy: GatePolicy,
               prober: Prober | None = None) -> TryRecord:
    """One try over all targets (Unreachable when a needed Docker engine does not answer)."""
    if not targets:
        raise BadInput("no target: give --url, --service with --slot, --container or --tcp")
    own = prober is None
    active = prober or Prober()
    start = time.monotonic()
    try:
        results = [active.probe(t, policy) for t in targets]
    finally:
        if own:
            active.close()
    return _summarise(1, True, 0.0, time.monotonic() - start, results)


# ---------------------------------------------------------------- the gate


class _Run:
    """State of one gate run; its methods are tenacity's attempt, stop and wait."""

    def __init__(self, targets: Sequence[HealthTarget], policy: GatePolicy,
                 on_try: Callable[[TryRecord], None] | None) -> None:
        self.targets = targets
        self.policy = policy
        self.on_try = on_try
        self.prober = Prober()
        self.prober.session  # noqa: B018 - import and set up HTTP before the first try is timed
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
        record = _summarise(max(self.counted, 1), counted, begin - self.started, duration, results)
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
         on_try: Callable[[TryRecord], None] | None = None) -> GateResult:
    """Try until healthy or out of retries; never raises for unhealthy (Unreachable for a dead engine)."""
    import tenacity

    if not targets:
        raise BadInput("no target: give --url, --service with --slot, --container or --tcp")
    run = _Run(targets, policy, on_try)
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


# ---------------------------------------------------------------- the command


def try_line(record: TryRecord, retries: int) -> str:
    """`try 3/30  503  12 ms  status=starting`"""
    mark = "" if record.counted else "+"
    text = f"try {record.number}/{retries}{mark}  {record.status}  {record.latency_ms:.0f} ms"
    if record.ok:
        return f"{text}  {record.detail or 'ok'}"
    extra = record.detail if record.detail and record.detail not in record.reason else ""
    return "  ".join(x for x in (text, extra, record.reason) if x)


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
