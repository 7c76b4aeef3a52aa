"""The wait and counting rule, the policy and the targets of health-gate."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_steps.config import HealthSpec, Host, parse_config
from pipeline_steps.errors import BadInput
from pipeline_steps.operations.health_gate import (
    FAST_RETRY,
    FAST_RETRY_CAP,
    LOG_EARLY_NS,
    QUICK_TRY,
    GatePolicy,
    GateResult,
    HealthTarget,
    Prober,
    ProbeResult,
    TryRecord,
    fast_wait,
    gate,
    is_counted,
    logs_allowed,
    logs_match,
    next_wait,
    run_start_ns,
    service_targets,
    try_line,
)

seconds = st.floats(min_value=0, max_value=120, allow_nan=False)


@given(interval=seconds, duration=seconds, since=seconds)
def test_interval_is_measured_from_the_start_of_a_try(interval: float, duration: float, since: float) -> None:
    wait = next_wait(interval, duration, False, since)
    assert wait >= 0
    assert wait == pytest.approx(max(0.0, interval - duration))
    # the next try starts one interval after this one started, or at once after a slow try
    assert duration + wait == pytest.approx(max(interval, duration))


@given(interval=seconds, duration=seconds, since=seconds)
def test_refused_is_retried_fast_but_never_past_the_window(interval: float, duration: float,
                                                           since: float) -> None:
    wait = next_wait(interval, duration, True, since)
    assert 0 <= wait <= FAST_RETRY
    assert wait <= max(0.0, interval - since) + 1e-12


def test_wait_examples() -> None:
    assert next_wait(2.0, 0.3, False, 0.3) == pytest.approx(1.7)
    assert next_wait(2.0, 5.0, False, 5.0) == 0.0
    assert next_wait(2.0, 0.001, True, 0.5) == FAST_RETRY
    assert next_wait(2.0, 0.001, True, 1.98) == pytest.approx(0.02)


def test_counting_rule() -> None:
    assert is_counted(True, 0.0, 2.0, failed=True, in_start_period=False)
    assert not is_counted(False, 0.5, 2.0, failed=True, in_start_period=False)  # fast re-try
    assert is_counted(False, 2.0, 2.0, failed=True, in_start_period=False)
    assert not is_counted(True, 0.0, 2.0, failed=True, in_start_period=True)
    assert is_counted(True, 0.0, 2.0, failed=False, in_start_period=True)


def test_policy_from_spec_takes_overrides_and_ignores_none() -> None:
    spec = HealthSpec(retries=5, interval=1.0, expect={"status": "healthy"}, logs_fallback="ready")
    policy = GatePolicy.from_spec(spec, retries=None, interval=0.5, expect=None, max_latency=0.2)
    assert policy.retries == 5 and policy.interval == 0.5 and policy.max_latency == 0.2
    assert policy.expect == (("status", "healthy"),)
    assert policy.logs_fallback == "ready"
    assert GatePolicy.from_spec(spec, expect=["db.ok=1"]).expect == (("db.ok", "1"),)
    with pytest.raises(TypeError):
        GatePolicy.from_spec(spec, nonsense=1)


@pytest.mark.parametrize("kwargs", [{"retries": 0}, {"successes": 5, "retries": 2}, {"timeout": 0},
                                    {"logs_fallback": "("}, {"expect_status": 42},
                                    {"expect": (("a..b", "1"),)}])
def test_bad_policies_are_bad_input(kwargs: dict[str, object]) -> None:
    with pytest.raises(BadInput):
        GatePolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["localhost", "host:", ":80", "host:port", "host:0", "host:70000"])
def test_bad_tcp_targets(text: str) -> None:
    with pytest.raises(BadInput):
        HealthTarget.tcp(text)


def test_targets() -> None:
    assert HealthTarget.tcp("127.0.0.1:8080").address == "127.0.0.1:8080"
    assert HealthTarget.tcp("[::1]:80").address == "::1:80"
    with pytest.raises(BadInput):
        HealthTarget.url("127.0.0.1:80/health")
    assert HealthTarget.container("web").docker == Host(name="local")


def test_service_targets_cover_every_host(tmp_path: Path) -> None:
    config = parse_config({
        "app": "shop", "registry": "127.0.0.1:5000",
        "hosts": [{"name": "a", "address": "10.0.0.1"}, {"name": "b", "address": "10.0.0.2"}],
        "services": {"web": {"slots": {"stable": 8081, "canary": 8082}, "health": {"path": "/ready"}}},
    }, base_dir=tmp_path)
    targets = service_targets(config, "web", "canary")
    assert [t.address for t in targets] == ["http://10.0.0.1:8082/ready", "http://10.0.0.2:8082/ready"]
    assert {t.logs_container for t in targets} == {"shop-web-canary"}
    assert [t.docker.name for t in targets if t.docker] == ["a", "b"]
    with pytest.raises(BadInput, match="no slot 'blue'"):
        service_targets(config, "web", "blue")
    with pytest.raises(BadInput, match="unknown service"):
        service_targets(config, "api", "stable")


def test_try_line_format() -> None:
    probe = ProbeResult("u", False, "503", 12.3, "HTTP 503 (want 2xx)", "status=starting")
    record = TryRecord(3, True, 4.0, 13.0, False, "503", 12.3, "HTTP 503 (want 2xx)", "status=starting",
                       (probe,))
    assert try_line(record, 30) == "try 3/30  503  12 ms  status=starting  HTTP 503 (want 2xx)"


# ---------------------------------------------------------------- fast re-tries and the logs fallback


def _result(ok: bool = False, *, not_listening: bool = False, not_ready: bool = False,
            no_answer: bool = False, status: str = "503") -> ProbeResult:
    return ProbeResult("u", ok, status, 1.0, "" if ok else "why", not_listening=not_listening,
                       not_ready=not_ready, no_answer=no_answer)


REFUSED = _result(status="refused", not_listening=True, no_answer=True)
NOT_READY = _result(not_ready=True)  # 503, or 200 {"status":"starting"} with --expect status=healthy
TIMED_OUT = _result(status="error", no_answer=True)
PARTIAL = _result(status="200")  # reset mid-body, body too big, too slow: an answer, not a not-ready one
PASSED = _result(True, status="200")


def test_fast_wait_rules() -> None:
    assert fast_wait([REFUSED], 0.001, passed_before=False) == FAST_RETRY
    assert fast_wait([REFUSED], 0.001, passed_before=True) == FAST_RETRY  # as before: a restart is fast
    assert fast_wait([NOT_READY], 0.01, passed_before=False) == FAST_RETRY
    # as long as the answer took, within [50 ms, 100 ms]
    assert fast_wait([NOT_READY], 0.07, passed_before=False) == pytest.approx(0.07)
    assert fast_wait([NOT_READY], 0.3, passed_before=False) == FAST_RETRY_CAP
    # once a try has passed, a not-ready answer is a real failure: the interval
    assert fast_wait([NOT_READY], 0.01, passed_before=True) is None
    # never after a slow try, a timeout or a partial answer
    assert fast_wait([NOT_READY], QUICK_TRY + 0.01, passed_before=False) is None
    assert fast_wait([REFUSED], QUICK_TRY + 0.01, passed_before=False) is None
    assert fast_wait([TIMED_OUT], 0.01, passed_before=False) is None
    assert fast_wait([PARTIAL], 0.01, passed_before=False) is None
    assert fast_wait([REFUSED, NOT_READY], 0.01, passed_before=False) == FAST_RETRY
    assert fast_wait([REFUSED, TIMED_OUT], 0.01, passed_before=False) is None
    assert fast_wait([PASSED], 0.01, passed_before=False) is None  # nothing failed


@given(duration=st.floats(min_value=0, max_value=QUICK_TRY, allow_nan=False))
def test_fast_wait_never_hammers(duration: float) -> None:
    wait = fast_wait([NOT_READY], duration, passed_before=False)
    assert wait is not None and FAST_RETRY <= wait <= FAST_RETRY_CAP < 0.15
    assert wait >= min(duration, FAST_RETRY_CAP)  # the app is busy with us at most half the time


def test_which_results_allow_the_logs_fallback() -> None:
    assert logs_allowed(REFUSED) and logs_allowed(TIMED_OUT)
    closed = _result(status="error", not_listening=True, no_answer=True)  # closed without an answer
    assert logs_allowed(closed)
    assert not logs_allowed(NOT_READY)  # 503 {"status":"unhealthy"}, an unmet --expect: it answered
    assert not logs_allowed(PARTIAL)
    assert not logs_allowed(_result(status="error"))  # unknown host, TLS error: not "no answer"
    assert not logs_allowed(PASSED)


def _ts(ns: int) -> str:
    whole, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


START = 1_764_580_000_123_456_789  # a StartedAt in ns


def test_run_start_of_a_fresh_and_of_a_restarted_container() -> None:
    fresh = {"StartedAt": _ts(START), "FinishedAt": "0001-01-01T00:00:00Z"}
    assert run_start_ns(fresh) == START - LOG_EARLY_NS
    restarted = {"StartedAt": _ts(START), "FinishedAt": _ts(START - 40_000_000)}  # a quick restart
    assert run_start_ns(restarted) == START - 20_000_000  # the middle of the gap, not 50 ms before
    slow = {"StartedAt": _ts(START), "FinishedAt": _ts(START - 5_000_000_000)}
    assert run_start_ns(slow) == START - LOG_EARLY_NS
    # nanoseconds are kept, trailing zeros trimmed as RFC 3339 nano does
    assert run_start_ns({"StartedAt": "2026-12-01T09:25:10.7Z"}) == \
        run_start_ns({"StartedAt": "2026-12-01T09:25:10.700000000Z"})
    for bad in ({}, {"StartedAt": "0001-01-01T00:00:00Z"}, {"StartedAt": "yesterday"}):
        assert run_start_ns(bad) is None


def test_logs_match_counts_only_complete_lines_of_the_current_run() -> None:
    since = START
    old = f"{_ts(START - 2_000_000_000)} worker ready\n"
    assert not logs_match(old, since, "worker ready")  # a line of the previous run
    new = f"{_ts(START + 1)} worker ready\n"
    assert logs_match(old + new, since, "worker ready")
    assert logs_match(f"{_ts(START)} worker ready\n", since, "worker ready")
    assert not logs_match(f"{_ts(START + 1)} worker rea", since, "worker rea")  # no newline yet
    # never across lines, and anchors are per line
    split = f"{_ts(START + 1)} worker\n{_ts(START + 2)} ready\n"
    assert not logs_match(split, since, r"worker\sready")
    assert logs_match(split, since, r"^ready$")
    # the timestamp itself is never matched, a CR of a tty line is dropped
    assert not logs_match(f"{_ts(START + 1)} x\n", since, "Z x")
    assert logs_match(f"{_ts(START + 1)} up\r\n", since, "up$")
    assert not logs_match("not timestamped worker ready\n", since, "worker ready")


# ---------------------------------------------------------------- the gate on a fake clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def _fake_gate(monkeypatch: pytest.MonkeyPatch, answer: Callable[[float], ProbeResult], policy: GatePolicy,
               duration: float = 0.005) -> tuple[GateResult, FakeClock]:
    clock = FakeClock()
    started = clock.now
    monkeypatch.setattr(time, "monotonic", clock.monotonic)
    monkeypatch.setattr(time, "sleep", clock.sleep)

    def probe(self: Prober, target: HealthTarget, _policy: GatePolicy) -> ProbeResult:
        result = answer(clock.now - started)
        clock.now += duration
        return result

    monkeypatch.setattr(Prober, "probe", probe)
    return gate([HealthTarget.url("http://127.0.0.1:1/health")], policy), clock


@pytest.mark.parametrize("before", [REFUSED, NOT_READY], ids=["refused", "not-ready"])
def test_turning_healthy_is_seen_fast_without_using_up_tries(monkeypatch: pytest.MonkeyPatch,
                                                             before: ProbeResult) -> None:
    healthy_at = 3.3
    result, clock = _fake_gate(monkeypatch, lambda t: PASSED if t >= healthy_at else before,
                               GatePolicy(retries=30, interval=2.0))
    assert result.healthy
    assert result.elapsed - healthy_at <= FAST_RETRY_CAP + 0.01
    assert result.tries == 2  # one counted try per 2 s window: at 0 s and at 2 s
    assert result.attempts > 20
    counted_at = [r.at for r in result.records if r.counted]
    assert counted_at[0] == 0.0 and counted_at[1] == pytest.approx(2.0, abs=0.01)


def test_refused_then_not_ready_then_healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    def app(t: float) -> ProbeResult:
        return REFUSED if t < 1.0 else NOT_READY if t < 4.5 else PASSED

    result, _ = _fake_gate(monkeypatch, app, GatePolicy(retries=30, interval=2.0))
    assert result.healthy and result.tries == 3 and result.elapsed - 4.5 <= FAST_RETRY_CAP + 0.01


def test_not_ready_uses_up_retries_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    result, _ = _fake_gate(monkeypatch, lambda t: NOT_READY, GatePolicy(retries=3, interval=1.0))
    assert not result.healthy and result.tries == 3
    assert 2.0 <= result.elapsed < 2.1  # three windows, not three fast re-tries
    gaps = [b.at - a.at for a, b in zip(result.records, result.records[1:], strict=False)]
    assert all(0 < g <= FAST_RETRY + 0.01 for g in gaps)  # quick answers: 50 ms (less up to a window end)
    assert sum(g >= FAST_RETRY for g in gaps) >= len(gaps) - 3


def test_no_fast_retry_after_a_slow_try(monkeypatch: pytest.MonkeyPatch) -> None:
    result, _ = _fake_gate(monkeypatch, lambda t: NOT_READY, GatePolicy(retries=3, interval=1.0),
                           duration=QUICK_TRY + 0.1)
    assert not result.healthy and result.attempts == result.tries == 3
    assert [r.at for r in result.records] == pytest.approx([0.0, 1.0, 2.0])


def test_after_a_pass_a_not_ready_answer_waits_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    def flapping(t: float) -> ProbeResult:
        calls["n"] += 1
        return PASSED if calls["n"] % 2 else NOT_READY

    result, _ = _fake_gate(monkeypatch, flapping, GatePolicy(retries=6, interval=1.0, successes=2))
    assert not result.healthy and result.tries == 6 and result.attempts == 6
    assert [r.ok for r in result.records] == [True, False] * 3


def test_start_period_with_fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    result, _ = _fake_gate(monkeypatch, lambda t: NOT_READY,
                           GatePolicy(retries=2, interval=1.0, start_period=2.5))
    assert not result.healthy and result.tries == 2
    counted = [r.at for r in result.records if r.counted]
    assert counted == pytest.approx([3.0, 4.0], abs=0.01)  # windows starting inside 2.5 s do not count
