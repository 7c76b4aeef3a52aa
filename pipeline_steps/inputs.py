"""The values users type into options, checked before anything runs: BUILD_IDs, image tags, percents.

Each check is a plain function (raising BadInput or ValueError) for values from anywhere, e.g. the CI
context; the click parameter types built on them live in cli/types.py, so a bad option value is a
usage error: exit 2 with one `ps:` line, in a dry run too.
"""

from __future__ import annotations

import re

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
        raise BadInput(f"{what} {show_value(value)} is not a valid image tag ({TAG_RULE})")
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
        raise ValueError(f"{show_value(value)} is not {PERCENT_RULE}")
    if not 0 <= number <= 100:
        raise ValueError(f"{show_value(value)} is not {PERCENT_RULE}")
    return number


def show_value(value: object, limit: int = 40) -> str:
    """A value for an error line: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


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
