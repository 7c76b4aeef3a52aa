"""The values users type into options, checked before anything runs: BUILD_IDs, image tags, percents.

Each check is a plain function raising BadInput (for values that arrive outside click, e.g. from the
CI context) and a click parameter type using it, so a bad option value is a usage error: exit 2 with
one `ps:` line, in a dry run too.
"""

from __future__ import annotations

import re
from typing import Any

import click

from pipeline_steps.errors import BadInput

# Docker's tag grammar: a word character, then up to 127 word characters, dots and dashes (ASCII only).
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_PERCENT = re.compile(r"[0-9]{1,3}", re.ASCII)

TAG_RULE = "letters, digits, '_', '.', '-', not first '.' or '-', at most 128"
PERCENT_RULE = "a whole percent 0..100 in digits"


def is_tag(value: str) -> bool:
    """True when `value` is a valid Docker image tag."""
    return isinstance(value, str) and _TAG.fullmatch(value) is not None


def check_build_id(value: str, what: str = "BUILD_ID") -> str:
    """`value` when it is a valid BUILD_ID (Docker's tag grammar), BadInput otherwise."""
    if not is_tag(value):
        raise BadInput(f"{what} {_show(value)} is not a valid image tag ({TAG_RULE})")
    return value


def parse_percent(value: object) -> int:
    """A whole percent 0..100 from `17`, `"17"` or `"017"`; ValueError with the reason otherwise.

    Only ASCII digits: no sign, no decimals, no exponent, no NaN/inf, no full-width digits."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not {PERCENT_RULE}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _PERCENT.fullmatch(value):
        number = int(value)
    else:
        raise ValueError(f"{_show(value)} is not {PERCENT_RULE}")
    if not 0 <= number <= 100:
        raise ValueError(f"{_show(value)} is not {PERCENT_RULE}")
    return number


def _show(value: object, limit: int = 40) -> str:
    """A value for an error line: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


class ImageTag(click.ParamType):
    """A Docker image tag (also a BUILD_ID): `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`."""

    name = "tag"

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        self.extra = extra  # words accepted besides a tag, e.g. "previous"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if isinstance(value, str) and (value in self.extra or is_tag(value)):
            return value
        also = f", or {' or '.join(self.extra)}" if self.extra else ""
        self.fail(f"{_show(value)} is not a valid image tag ({TAG_RULE}){also}", param, ctx)


class Percent(click.ParamType):
    """A whole percent 0..100 in ASCII digits (weights, canary shares)."""

    name = "percent"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_percent(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class HttpUrl(click.ParamType):
    """An http(s) URL with a host, printable ASCII, at most 2048 characters (links in notifications).

    An empty value is "not given" (CI files pass `--log-url "$BUILD_URL"`, empty outside a job)."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if isinstance(value, str) and (value == "" or is_http_url(value)):
            return value
        self.fail(f"{_show(value)} is not an http:// or https:// URL with a host", param, ctx)


def is_http_url(value: str) -> bool:
    """True for `http(s)://host...` in printable ASCII without spaces."""
    from urllib.parse import urlsplit

    if not (0 < len(value) <= 2048 and value.isascii() and value.isprintable()) or " " in value:
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is no number, a bad IPv6 literal
        return False


BUILD_ID = ImageTag()
TAG = ImageTag()
ROLLBACK_TARGET = ImageTag(extra=("previous",))
PERCENT = Percent()
HTTP_URL = HttpUrl()
