"""The wait and counting rule, the policy and the targets of health-gate."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_steps.config import HealthSpec, Host, parse_config
from pipeline_steps.errors import BadInput
from pipeline_steps.steps.health_gate import (
    FAST_RETRY,
    GatePolicy,
    HealthTarget,
    ProbeResult,
    TryRecord,
    is_counted,
    next_wait,
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
