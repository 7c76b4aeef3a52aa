"""Canary judgement on real nginx: two local backends per upstream behind nginx at 10 % canary, real
ps_json access-log lines, judged while the load runs (100 req/s, loopback only, bounded)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline_steps.analysis import AnalysisPolicy, StepAnalysis, decide_hold
from testbed.backends import Backend, JudgedSite, start_backend, start_judged_site, watch
from testbed.load import LoadGenerator

pytestmark = pytest.mark.slow
POLICY = AnalysisPolicy(max_error_rate_increase=0.02, max_p99_increase=0.05, min_requests=50, extend=0)
LOOKS = 30  # one look per 100 requests, at most 3000 requests per hold
RATE = 100.0


@pytest.fixture
def site(nginx_factory: Callable[..., Any]) -> Iterator[JudgedSite]:
    backends: list[Backend] = []

    def pair(name: str) -> tuple[Backend, Backend]:
        backends.extend([start_backend(f"{name}-stable"), start_backend(f"{name}-canary")])
        return backends[-2], backends[-1]

    yield start_judged_site(nginx_factory, {n: pair(n) for n in ("errors", "slow", "equal", "quiet")}, 10)
    for b in backends:
        b.stop()


def hold(site: JudgedSite, upstream: str, requests: int, *, stop_on_fail: bool = True) -> tuple[Any, Any]:
    """Load `requests` at 100 req/s through nginx while judging; (looks, the load's report)."""
    with StepAnalysis([site.log], site.slot_map(), POLICY, LOOKS, upstreams=[upstream]) as analysis:
        load = LoadGenerator(site.url(upstream), rate=RATE, max_seconds=requests / RATE + 1,
                             max_requests=requests, ok_status=range(200, 600)).start()
        try:
            looks = watch(analysis, load, upstream, stop_on_fail=stop_on_fail, deadline=requests / RATE + 30)
        finally:
            report = load.stop()
    assert set(report.by_status) <= {"200", "500"}, report.by_status  # nginx answered every request
    return looks, report


def test_a_canary_with_5_percent_errors_fails(site: JudgedSite) -> None:
    stable, canary = site.pairs["errors"]
    canary.fail_every = 20
    looks, report = hold(site, "errors", 3000)
    last = looks[-1].judgement
    assert last.decision == "fail", [lk.judgement.reason for lk in looks]
    assert last.errors.decision == "fail" and last.latency.decision == "pass"
    assert last.reason.startswith("canary 5xx ") and last.reason.endswith(": fail")
    assert 0.03 <= last.canary.error_rate <= 0.07 and last.stable.errors == 0
    assert last.errors.p_value < last.errors.alpha
    assert report.sent < 3000  # decided before the hold's traffic ran out
    assert decide_hold([last], POLICY, final=False).action == "rollback"


def test_a_canary_100_ms_slower_fails_on_latency(site: JudgedSite) -> None:
    site.pairs["slow"][1].delay = 0.1
    looks, _ = hold(site, "slow", 3000)
    last = looks[-1].judgement
    assert last.decision == "fail", [lk.judgement.reason for lk in looks]
    assert last.latency.decision == "fail" and last.errors.decision == "pass"
    assert last.canary.p50_ms >= 100 and last.latency.difference > 50
    assert last.reason.startswith("canary p99 ")


def test_an_equal_canary_passes_and_old_lines_never_count(site: JudgedSite) -> None:
    stable, canary = site.pairs["equal"]
    canary.fail_every = 2  # traffic before the step: half the canary's answers are 500
    before, _ = hold(site, "equal", 300, stop_on_fail=False)
    assert before[-1].judgement.canary.errors > 0
    canary.fail_every = 0
    served = (stable.served, canary.served)
    looks, report = hold(site, "equal", 1500, stop_on_fail=False)
    last = looks[-1].judgement
    assert [lk.judgement.decision for lk in looks if lk.judgement.decision == "fail"] == []
    assert last.decision == "pass", last.reason
    assert last.canary.errors == 0
    # every judged request is one the slot's own backend really served during this step
    assert (last.stable.requests, last.canary.requests) == (stable.served - served[0],
                                                            canary.served - served[1])
    assert last.stable.requests + last.canary.requests == report.sent
    assert 0.05 <= last.canary.requests / report.sent <= 0.15


def test_low_traffic_is_inconclusive_then_decided_by_policy(site: JudgedSite) -> None:
    site.pairs["quiet"][1].fail_every = 2
    looks, report = hold(site, "quiet", 40)
    last = looks[-1].judgement
    assert last.decision == "inconclusive" and last.canary.requests < 50
    assert last.canary.requests + last.stable.requests == report.sent == 40
    assert decide_hold([last], AnalysisPolicy(extend=10), final=True, extended=0).action == "extend"
    assert decide_hold([last], AnalysisPolicy(extend=10), final=True, extended=10).action == "rollback"
    assert decide_hold([last], AnalysisPolicy(extend=10, inconclusive="pass"), final=True,
                       extended=10).action == "pass"
