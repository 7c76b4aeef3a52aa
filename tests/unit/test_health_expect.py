"""The --expect parser and the dotted JSON path of health-gate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_steps.errors import BadInput
from pipeline_steps.operations.health_gate import check_expectations, json_text, lookup, parse_expectation

segment = st.text(st.characters(blacklist_characters=".=", blacklist_categories=("Cs",)), min_size=1,
                  max_size=8)
value_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10))


@given(st.lists(segment, min_size=1, max_size=5), value_text)
def test_parse_round_trips_any_key_and_value(path: list[str], value: str) -> None:
    assert parse_expectation(".".join(path) + "=" + value) == (tuple(path), value)


@pytest.mark.parametrize("text", ["status", "=healthy", "a..b=1", ".a=1", "a.=1", ""])
def test_bad_expectations_are_bad_input(text: str) -> None:
    with pytest.raises(BadInput):
        parse_expectation(text)


def test_value_may_hold_equals_signs() -> None:
    assert parse_expectation("token=a=b") == (("token",), "a=b")


def _nest(path: list[str], leaf: Any) -> Any:
    data: Any = leaf
    for part in reversed(path):
        data = {part: data}
    return data


@given(st.lists(segment, min_size=1, max_size=5), json_leaf)
def test_lookup_finds_what_was_nested(path: list[str], leaf: Any) -> None:
    data = json.loads(json.dumps(_nest(path, leaf)))
    assert lookup(data, path) == (True, leaf)
    key = ".".join(path)
    assert check_expectations(data, [(key, json_text(leaf))]) is None
    other = json_text(leaf) + "x"
    assert check_expectations(data, [(key, other)]) is not None


@given(st.lists(segment, min_size=1, max_size=4), segment)
def test_lookup_of_an_absent_key_is_not_found(path: list[str], extra: str) -> None:
    data = _nest(path, "v")
    found, _ = lookup(data, [*path, extra])
    assert not found
    assert check_expectations(data, [(".".join([*path, extra]), "v")]) == \
        f"missing key {'.'.join([*path, extra])}"


def test_lookup_indexes_lists_and_compares_json_text() -> None:
    data = {"checks": [{"name": "db", "up": True}], "count": 3, "none": None}
    assert lookup(data, ["checks", "0", "up"]) == (True, True)
    assert lookup(data, ["checks", "1", "up"]) == (False, None)
    assert check_expectations(data, [("checks.0.up", "true"), ("count", "3"), ("none", "null")]) is None
    assert check_expectations(data, [("checks.0.up", "True")]) == "checks.0.up=true (want True)"
    assert check_expectations("not an object", [("status", "healthy")]) == "missing key status"
