"""The click parameter types of typed-in values: BUILD_IDs and tags, percents, URLs, durations.

Each uses the plain check of pipeline_steps.inputs / pipeline_steps.durations, so a bad option value is
a usage error (exit 2, one `ps:` line), in a dry run too.
"""

from __future__ import annotations

from typing import Any

import click

from pipeline_steps.durations import OPTION_MAX, parse_duration
from pipeline_steps.inputs import TAG_RULE, is_http_url, is_tag, parse_percent, show_value

__all__ = ["BUILD_ID", "DURATION", "HTTP_URL", "PERCENT", "ROLLBACK_TARGET", "TAG",
           "Duration", "HttpUrl", "ImageTag", "Percent"]


class ImageTag(click.ParamType):
    """A Docker image tag (also a BUILD_ID): `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`."""

    name = "tag"

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        self.extra = extra  # words accepted besides a tag, e.g. "previous"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if isinstance(value, str) and (value in self.extra or is_tag(value)):
            return value
        also = f", or {' or '.join(self.extra)}" if self.extra else ""
        self.fail(f"{show_value(value)} is not a valid image tag ({TAG_RULE}){also}", param, ctx)


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
        self.fail(f"{show_value(value)} is not an http:// or https:// URL with a host", param, ctx)


class Duration(click.ParamType):
    """click parameter type for durations."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds > OPTION_MAX:
            self.fail(f"not a duration: {value!r} (at most a year: 365 days)", param, ctx)
        return seconds


BUILD_ID = ImageTag()
TAG = ImageTag()
ROLLBACK_TARGET = ImageTag(extra=("previous",))
PERCENT = Percent()
HTTP_URL = HttpUrl()
DURATION = Duration()
