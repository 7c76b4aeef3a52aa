"""Durations: 500ms, 2s, 1m, 1h and plain seconds."""

from __future__ import annotations

import math

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_steps.cli.types import DURATION
from pipeline_steps.durations import format_duration, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("30", 30.0), (" 1.5s ", 1.5),
    ("0", 0.0), (5, 5.0), (0.25, 0.25), ("2S", 2.0), ("10MS", 0.01),
])
def test_accepted_forms(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "ms", "abc", "5 minutes", "-1s", "-3", "nan", "inf", "1e400", True,
                                 None, [1], {"s": 1}, 10**400, float("nan"), float("inf"), -0.5])
def test_rejected_with_a_reason(bad: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**7), st.sampled_from(["ms", "s", "m", "h"]))
def test_unit_round_trip(n: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * factor)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_plain_seconds_round_trip(x: float) -> None:
    assert parse_duration(x) == x
    assert parse_duration(repr(x)) == pytest.approx(x)


@given(st.floats(min_value=0.001, max_value=59.9, allow_nan=False))
def test_format_then_parse_is_close_below_a_minute(x: float) -> None:
    assert parse_duration(format_duration(x)) == pytest.approx(x, abs=0.051)


@given(st.integers(min_value=60, max_value=86400 * 3))
def test_format_minutes_keeps_every_second(n: int) -> None:
    text = format_duration(n)
    minutes, _, rest = text.partition("m")
    assert parse_duration(f"{minutes}m") + (parse_duration(rest) if rest else 0) == n


@given(st.text(max_size=12))
def test_arbitrary_text_is_a_number_or_a_value_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert value >= 0 and math.isfinite(value)


def test_click_type_reports_a_usage_error() -> None:
    assert DURATION.convert("250ms", None, None) == pytest.approx(0.25)
    with pytest.raises(click.BadParameter, match="not a duration"):
        DURATION.convert("soon", None, None)


def test_format_duration_examples() -> None:
    assert format_duration(0.85) == "850ms"
    assert format_duration(2.5) == "2.5s"
    assert format_duration(2.0) == "2s"
    assert format_duration(90) == "1m30s"
    assert format_duration(120) == "2m"


@pytest.mark.parametrize("bad", ["１０s", "٣s", "1_0s", "nans", "infinity", "0x10", "+5s", "2 s", "2s\n",
                                 "1e400s"])
def test_only_ascii_numbers(bad: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


def test_an_option_duration_is_at_most_a_year() -> None:
    assert DURATION.convert("8760h", None, None) == 365 * 86400
    for bad in ("8761h", "1e10", "99999999999999999999s"):
        with pytest.raises(click.BadParameter, match="at most a year"):
            DURATION.convert(bad, None, None)
    assert parse_duration("1e10") == 1e10  # ps.yaml's own bounds are the config's business
