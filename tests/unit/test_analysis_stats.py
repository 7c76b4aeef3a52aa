"""The statistics and the decision: percentiles, the alpha of repeated looks, and the judgement's
invariants (identical samples never fail beyond alpha, a big difference always fails)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_steps.analysis import (
    AnalysisPolicy,
    Judgement,
    Samples,
    SideStats,
    decide_hold,
    judge,
    percentile,
    planned_looks,
)
from pipeline_steps.analysis.stats import error_p_value, latency_p_value, look_alpha

POLICY = AnalysisPolicy()
latencies = st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), min_size=1, max_size=300)


def samples(statuses: list[int], lat: list[float]) -> Samples:
    return Samples(list(statuses), list(lat))


@given(latencies, st.floats(min_value=0, max_value=100))
def test_percentile_is_the_nearest_rank_sample(values: list[float], q: float) -> None:
    got = percentile(values, q)
    assert got == float(np.percentile(values, q, method="inverted_cdf"))
    ordered = sorted(values)
    assert got in values
    at_or_below = sum(1 for v in ordered if v <= got)  # type: ignore[operator]
    assert at_or_below >= q / 100 * len(values) - 1e-9
    assert sum(1 for v in ordered if v < got) < max(1, q / 100 * len(values)) + 1e-9  # type: ignore[operator]


def test_percentile_examples() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (0, 50, 95, 99, 100)] == [1, 50, 95, 99, 100]
    assert percentile([], 99) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@pytest.mark.parametrize("correction", ["bonferroni", "pocock"])
@pytest.mark.parametrize("looks", [1, 2, 7, 15, 60])
def test_the_levels_of_all_looks_sum_to_alpha(correction: str, looks: int) -> None:
    levels = [look_alpha(k, looks, 0.01, correction) for k in range(1, looks + 1)]
    assert all(level > 0 for level in levels)
    assert math.isclose(sum(levels), 0.01, rel_tol=1e-9)
    if correction == "pocock" and looks > 1:
        assert levels == sorted(levels, reverse=True)  # spends more early
    with pytest.raises(ValueError):
        look_alpha(looks + 1, looks, 0.01, correction)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([200, 200, 200, 404, 500, 503]), min_size=1, max_size=400),
       st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=400, max_size=400),
       st.booleans(), st.integers(min_value=1, max_value=30))
def test_identical_samples_never_fail(statuses: list[int], lat: list[float], count_4xx: bool,
                                      looks: int) -> None:
    policy = AnalysisPolicy(min_requests=1, count_4xx=count_4xx, max_error_rate_increase=0,
                            max_p99_increase=0)
    side = samples(statuses, lat[:len(statuses)])
    shuffled = list(zip(side.statuses, side.latencies, strict=True))
    random.Random(len(statuses)).shuffle(shuffled)
    other = samples([s for s, _ in shuffled], [t for _, t in shuffled])
    for k in (1, looks):
        result = judge(side, other, policy, look=k, looks=looks)
        assert result.decision == "pass", result.reason


def test_same_distribution_fails_no_more_than_alpha_over_whole_holds() -> None:
    """200 holds of 10 looks, canary and stable drawn from one distribution: false alarms <= alpha."""
    policy = AnalysisPolicy(min_requests=20, max_error_rate_increase=0.0, max_p99_increase=0.0,
                            confidence=0.95)
    rng = random.Random(1414)
    false_alarms = 0
    for _ in range(200):
        canary, stable = Samples(), Samples()
        for look in range(1, 11):
            for _ in range(100):
                side = canary if rng.random() < 0.2 else stable
                side.add(500 if rng.random() < 0.05 else 200, rng.lognormvariate(-4, 0.5))
            if judge(canary, stable, policy, look=look, looks=10).decision == "fail":
                false_alarms += 1
                break
    assert false_alarms <= 10 + 3 * math.sqrt(10)  # alpha 5 % of 200 = 10, with 3 sigma of room


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=50, max_value=400), st.integers(min_value=50, max_value=3000),
       st.floats(min_value=0.5, max_value=1), st.floats(min_value=0, max_value=0.02),
       st.integers(min_value=1, max_value=20), st.randoms(use_true_random=False))
def test_a_big_error_difference_always_fails_once_min_requests_is_reached(
        n_canary: int, n_stable: int, canary_rate: float, stable_rate: float, looks: int,
        rng: random.Random) -> None:
    bad_canary, bad_stable = round(n_canary * canary_rate), round(n_stable * stable_rate)
    canary = samples([500] * bad_canary + [200] * (n_canary - bad_canary), [0.01] * n_canary)
    stable = samples([500] * bad_stable + [200] * (n_stable - bad_stable),
                     [rng.uniform(0.005, 0.02) for _ in range(n_stable)])
    for look in (1, looks):
        result = judge(canary, stable, POLICY, look=look, looks=looks)
        assert result.decision == "fail", result.reason
        assert result.errors is not None and result.errors.decision == "fail"


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=50, max_value=300), st.integers(min_value=50, max_value=2000),
       st.integers(min_value=1, max_value=20), st.randoms(use_true_random=False))
def test_a_big_latency_difference_always_fails(n_canary: int, n_stable: int, looks: int,
                                               rng: random.Random) -> None:
    stable = samples([200] * n_stable, [rng.uniform(0.001, 0.05) for _ in range(n_stable)])
    canary = samples([200] * n_canary, [rng.uniform(0.11, 0.2) for _ in range(n_canary)])
    result = judge(canary, stable, POLICY, look=looks, looks=looks)
    assert result.decision == "fail", result.reason
    assert result.latency is not None and result.latency.decision == "fail"
    assert result.errors is not None and result.errors.decision == "pass"


def test_too_little_traffic_is_inconclusive() -> None:
    canary = samples([500] * 49, [1.0] * 49)
    stable = samples([200] * 1000, [0.01] * 1000)
    result = judge(canary, stable, POLICY)
    assert result.decision == "inconclusive"
    assert result.reason == ("too little traffic: canary 49, stable 1000 requests (min_requests 50 on each "
                             "side): inconclusive")
    assert result.errors is None and result.canary.errors == 49


def test_a_difference_below_the_threshold_passes_even_when_significant() -> None:
    canary = samples([500] * 15 + [200] * 985, [0.010] * 1000)
    stable = samples([200] * 9000, [0.010] * 9000)
    result = judge(canary, stable, POLICY)
    assert result.errors is not None and result.errors.p_value < 1e-9
    assert result.decision == "pass"
    assert "+1.5 pp <= 2 pp" in result.reason


def test_the_judgement_states_its_numbers() -> None:
    canary = samples([500] * 52 + [200] * 948, [0.02] * 1000)
    stable = samples([500] * 1 + [200] * 999, [0.02] * 1000)
    result = judge(canary, stable, POLICY, look=2, looks=12)
    assert result.decision == "fail"
    alpha = 0.01 / 12 / 2
    assert result.errors is not None and math.isclose(result.errors.alpha, alpha)
    assert result.reason.startswith("canary 5xx 5.2 % vs stable 0.1 % (+5.1 pp > 2 pp, p=")
    assert result.reason.endswith(f" < {alpha:.4f}): fail")
    assert (result.canary.requests, result.canary.errors, result.stable.errors) == (1000, 52, 1)
    record = result.as_dict()
    assert record["errors"]["p_value"] == result.errors.p_value and record["decision"] == "fail"
    with_4xx = judge(samples([404] * 100, [0.0] * 100), samples([200] * 100, [0.0] * 100),
                     AnalysisPolicy(count_4xx=True))
    assert with_4xx.decision == "fail" and with_4xx.reason.startswith("canary 4xx+5xx 100.0 %")
    assert judge(samples([404] * 100, [0.0] * 100), samples([200] * 100, [0.0] * 100),
                 POLICY).decision == "pass"


def test_p_values_of_the_edge_cases() -> None:
    assert error_p_value(0, 100, 0, 100) == 1.0
    assert error_p_value(5, 100, 0, 0) == 1.0
    assert error_p_value(10, 100, 0, 900) < 1e-8
    assert latency_p_value([0.0] * 10, [0.0] * 10) == 1.0
    assert latency_p_value([], [1.0]) == 1.0
    assert latency_p_value([1.0] * 30, [0.5] * 30) < 1e-6


def _j(decision: str, upstream: str = "shop_web") -> Judgement:
    side = SideStats("canary", 0, 0, None, None, None, None)
    return Judgement(upstream, decision, f"{decision} because", 1, 1, side, side)


def test_decide_hold() -> None:
    policy = AnalysisPolicy(extend=20, inconclusive="fail")
    assert decide_hold([_j("pass"), _j("fail", "other")], policy, final=False).action == "rollback"
    assert decide_hold([_j("fail", "other")], policy, final=False).reason == "other: fail because"
    assert decide_hold([_j("inconclusive")], policy, final=False).action == "continue"
    assert decide_hold([_j("pass")], policy, final=True).action == "pass"
    assert decide_hold([_j("pass"), _j("inconclusive")], policy, final=True, extended=10).action == "extend"
    last = decide_hold([_j("inconclusive")], policy, final=True, extended=20)
    assert last.action == "rollback" and last.reason.endswith("after extending 20s: fail by policy")
    lenient = AnalysisPolicy(extend=0, inconclusive="pass")
    assert decide_hold([_j("inconclusive")], lenient, final=True).action == "pass"


def test_planned_looks_and_policy_checks() -> None:
    assert planned_looks(30, 2) == 15
    assert planned_looks(30, 2, 10) == 20
    assert planned_looks(1, 0) == 1
    assert planned_looks(0.5, 2) == 1
    for bad in ({"confidence": 1.0}, {"min_requests": 0}, {"inconclusive": "maybe"},
                {"correction": "magic"}, {"max_p99_increase": -1}, {"extend": -1}):
        with pytest.raises(ValueError):
            AnalysisPolicy(**bad)  # type: ignore[arg-type]
    assert math.isclose(AnalysisPolicy(confidence=0.95).alpha, 0.05)
    assert AnalysisPolicy().is_error(500) and not AnalysisPolicy().is_error(404)
    assert AnalysisPolicy(count_4xx=True).is_error(404) and not AnalysisPolicy(count_4xx=True).is_error(302)
