"""What users type into options: BUILD_IDs and tags (Docker's tag grammar), whole percents."""

from __future__ import annotations

import re

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_steps.cli.types import BUILD_ID, HTTP_URL, PERCENT, ROLLBACK_TARGET
from pipeline_steps.errors import BadInput
from pipeline_steps.inputs import check_build_id, is_tag, parse_percent

DOCKER_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)  # Docker's reference grammar, written its way


@pytest.mark.parametrize("good", ["0123456789ab", "0123456789ab-dirty", "v1.2.3", "_x", "A", "latest",
                                  "x" * 128, "1.0_rc-2"])
def test_tags_docker_accepts(good: str) -> None:
    assert is_tag(good) and check_build_id(good) == good and BUILD_ID.convert(good, None, None) == good


@pytest.mark.parametrize("bad", ["A:B", "../../etc", "-rf", ".hidden", "x" * 129, "x" * 200, "", " ", "a b",
                                 "a/b", "tag\n", "ｘ", "é", "a\x00", "$(id)", "previous;"])
def test_tags_docker_refuses(bad: str) -> None:
    assert not is_tag(bad)
    with pytest.raises(BadInput, match="is not a valid image tag"):
        check_build_id(bad, "--build-id")
    with pytest.raises(click.BadParameter, match="is not a valid image tag"):
        BUILD_ID.convert(bad, None, None)


def test_rollback_target_is_a_tag_or_previous() -> None:
    assert ROLLBACK_TARGET.convert("previous", None, None) == "previous"
    assert ROLLBACK_TARGET.convert("0123456789ab", None, None) == "0123456789ab"
    with pytest.raises(click.BadParameter, match="or previous"):
        ROLLBACK_TARGET.convert("../../x", None, None)


def test_a_long_bad_value_is_cut_in_the_message() -> None:
    with pytest.raises(BadInput) as caught:
        check_build_id("y" * 5000)
    assert len(caught.value.message) < 200 and "5000 characters" in caught.value.message


@given(st.text(max_size=140))
def test_tag_grammar_matches_dockers(text: str) -> None:
    assert is_tag(text) == (DOCKER_TAG.fullmatch(text) is not None)


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("10", 10), ("100", 100), ("007", 7), (40, 40),
                                             (70.0, 70)])
def test_whole_percents(text: object, value: int) -> None:
    assert parse_percent(text) == value and PERCENT.convert(text, None, None) == value


@pytest.mark.parametrize("bad", ["NaN", "nan", "inf", "-inf", "-1", "101", "1e2", "１０", "٣", "10.5", "10.",
                                 ".5", "+5", "1_0", "0x10", "", " ", " 10", "10 ", "10%", "1000", True, None,
                                 float("nan"), 10.5, 101, -1])
def test_not_percents(bad: object) -> None:
    with pytest.raises(ValueError, match="whole percent 0..100"):
        parse_percent(bad)
    with pytest.raises(click.BadParameter):
        PERCENT.convert(bad, None, None)


@given(st.text(max_size=5))
def test_percent_is_ascii_digits_up_to_100(text: str) -> None:
    expected = text.isascii() and text.isdigit() and int(text) <= 100
    try:
        value = parse_percent(text)
    except ValueError:
        assert not expected
    else:
        assert expected and value == int(text)


@pytest.mark.parametrize("good", ["https://jenkins.example.com/job/app/1/", "http://127.0.0.1:8080/x?y=1#z",
                                  "https://[::1]:8443/"])
def test_http_urls(good: str) -> None:
    assert HTTP_URL.convert(good, None, None) == good


def test_an_empty_url_is_not_given() -> None:
    assert HTTP_URL.convert("", None, None) == ""


@pytest.mark.parametrize("bad", ["javascript:alert(1)", "ftp://x/", "https://", "http:///path", "example.com",
                                 "https://a b/", "https://x/\n", "https://ｅｘ.com/", "http://x:port/",
                                 "http://x:0/", "http://[::1/", "https://x/" + "a" * 3000, " "])
def test_not_http_urls(bad: str) -> None:
    with pytest.raises(click.BadParameter, match="is not an http:// or https:// URL"):
        HTTP_URL.convert(bad, None, None)
