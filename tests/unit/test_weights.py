"""Weight math: percent <-> weights on the scale, shares, binomial intervals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_steps.errors import BadInput
from pipeline_steps.weights import Weights, binomial_interval, check_percent, share, within_interval


@pytest.mark.parametrize(("pct", "stable", "canary"), [
    (0, 999, 1), (100, 1, 999), (10, 900, 100), (40, 600, 400), (70, 300, 700), (50, 500, 500),
    (0.1, 999, 1), (99.95, 1, 999), (12.5, 875, 125),
])
def test_percent_to_weights(pct: float, stable: int, canary: int) -> None:
    w = Weights.from_percent(pct)
    assert (w.stable, w.canary) == (stable, canary)


def test_other_scale_and_minimum() -> None:
    w = Weights.from_percent(0, scale=100, min_weight=5)
    assert (w.stable, w.canary) == (95, 5)
    assert Weights.from_percent(33, scale=100, min_weight=1).canary == 33


@pytest.mark.parametrize("bad", [-1, 100.5, float("nan"), float("inf"), True])
def test_out_of_range_percent_is_bad_input(bad: float) -> None:
    with pytest.raises(BadInput):
        check_percent(bad)
    with pytest.raises(BadInput):
        Weights.from_percent(bad)


def test_unusable_scale_is_bad_input() -> None:
    with pytest.raises(BadInput):
        Weights.from_percent(10, scale=10, min_weight=5)


@given(pct=st.floats(min_value=0, max_value=100, allow_nan=False),
       scale=st.integers(min_value=2, max_value=100_000), data=st.data())
def test_weights_always_sum_to_scale_and_keep_minimum(pct: float, scale: int, data: st.DataObject) -> None:
    min_weight = data.draw(st.integers(min_value=0, max_value=(scale - 1) // 2))
    w = Weights.from_percent(pct, scale, min_weight)
    assert w.stable + w.canary == scale
    assert w.stable >= min_weight and w.canary >= min_weight
    # within half a unit of the exact value unless the minimum forced it
    exact = pct * scale / 100
    if min_weight <= exact <= scale - min_weight:
        assert abs(w.canary - exact) <= 0.5 + 1e-9


@given(scale=st.integers(min_value=4, max_value=10_000), canary=st.data())
def test_percent_round_trip(scale: int, canary: st.DataObject) -> None:
    c = canary.draw(st.integers(min_value=1, max_value=scale - 1))
    w = Weights(stable=scale - c, canary=c, scale=scale)
    assert Weights.from_percent(w.canary_percent, scale).canary == c


@given(a=st.floats(min_value=0, max_value=100), b=st.floats(min_value=0, max_value=100))
def test_more_percent_never_less_canary(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert Weights.from_percent(low).canary <= Weights.from_percent(high).canary


def test_share() -> None:
    assert share({"stable": 900, "canary": 100}, "canary") == pytest.approx(0.1)
    assert share({}, "canary") == 0.0


def test_binomial_interval_known_values() -> None:
    low, high = binomial_interval(1000, 0.1)
    # 99 % central interval of Binomial(1000, 0.1): about 100 +- 2.576 * 9.49
    assert 74 <= low <= 77 and 123 <= high <= 126
    assert binomial_interval(1000, 0.0) == (0, 0)
    assert binomial_interval(1000, 1.0) == (1000, 1000)
    assert binomial_interval(0, 0.5) == (0, 0)
    assert within_interval(100, 1000, 0.1)
    assert not within_interval(150, 1000, 0.1)
    assert not within_interval(999, 1000, 1.0)


@given(n=st.integers(min_value=1, max_value=3000), p=st.floats(min_value=0.001, max_value=0.999))
def test_interval_contains_the_mean_and_is_ordered(n: int, p: float) -> None:
    low, high = binomial_interval(n, p)
    assert 0 <= low <= high <= n
    assert low <= n * p + 1 and high >= n * p - 1


@pytest.mark.parametrize("args", [(-1, 0.5), (10, 1.5), (10, -0.1)])
def test_interval_rejects_nonsense(args: tuple[int, float]) -> None:
    with pytest.raises(ValueError):
        binomial_interval(*args)
