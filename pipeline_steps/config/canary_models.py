"""The canary's newer mappings of ps.yaml: the sticky split and segments (issue 13), the judgement
from nginx's access log and the post-deploy watch (issue 14); split from models.py to keep it readable."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from pipeline_steps.config.objects import CORRECTIONS, INCONCLUSIVE, AnalysisPolicy, WatchPolicy
from pipeline_steps.config.types import NO_CONTROL, Bounds, Duration, FileModel, PositiveDuration, Rule

_ANALYSIS = AnalysisPolicy()

STICKY_PATTERN = r"^(?:ip|cookie [A-Za-z0-9_]{1,64}|header [A-Za-z0-9-]{1,64})$"
StickyText = Annotated[str, Field(max_length=80),
                       Rule(STICKY_PATTERN, "must be `cookie NAME` (letters, digits, '_'), `header NAME` "
                                            "(letters, digits, '-') or `ip`")]
CookieName = Annotated[str, Field(min_length=1, max_length=64),
                       Rule(r"^[A-Za-z0-9_]+$", "must be a cookie name of letters, digits and '_'")]
HeaderName = Annotated[str, Field(min_length=1, max_length=64),
                       Rule(r"^[A-Za-z0-9-]+$", "must be a header name of letters, digits and '-'")]
SegmentValue = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(
    v, bool) else v), Field(min_length=1, max_length=128),
    Rule(r"^[A-Za-z0-9._@:+-]+$", "must be letters, digits and . _ @ : + -"),
    Rule(r"^(?!(?:default|hostnames|include|volatile)$)[\s\S]*$", "is a word nginx's map reserves")]


def _values(value: Any) -> Any:
    return [value] if isinstance(value, str | int) and not isinstance(value, bool) else value


class SegmentFile(FileModel):
    """One segment: a header or cookie value that always (or never) reaches the canary."""

    header: HeaderName | None = Field(default=None, description="Match this request header.")
    cookie: CookieName | None = Field(default=None, description="Match this cookie.")
    value: Annotated[list[SegmentValue], BeforeValidator(_values, json_schema_input_type=SegmentValue
                                                         | list[SegmentValue]),
                     Field(min_length=1, max_length=50)] = Field(
        description="The value (or list of values) that matches, exactly.")
    to: Literal["canary", "stable"] = Field(default="canary",
                                            description="canary: always reach the canary; stable: never.")


Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class AnalysisFile(FileModel):
    """canary.analysis: judge the canary against stable from nginx's own access log in every hold."""

    enabled: bool = Field(default=_ANALYSIS.enabled, description="Judge canary-auto's holds.")
    max_error_rate_increase: Fraction = Field(
        default=_ANALYSIS.max_error_rate_increase,
        description="Canary error rate minus stable's that fails, as a fraction (0.02 = 2 points).")
    max_p99_increase: Duration = Field(default=_ANALYSIS.max_p99_increase,
                                       description="Canary p99 minus stable's that fails.")
    confidence: Annotated[float, Field(ge=0.5, lt=1.0, allow_inf_nan=False)] = Field(
        default=_ANALYSIS.confidence, description="Per hold, all looks and both metrics together.")
    min_requests: Annotated[int, Bounds(1, 10_000_000)] = Field(
        default=_ANALYSIS.min_requests, description="On each side before a test; fewer: inconclusive.")
    count_4xx: bool = Field(default=_ANALYSIS.count_4xx, description="4xx count as errors too.")
    inconclusive: Literal[INCONCLUSIVE] = Field(  # type: ignore[valid-type]
        default=_ANALYSIS.inconclusive, description="Still inconclusive after `extend`: pass or fail.")
    extend: Duration = Field(default=_ANALYSIS.extend,
                             description="How long an inconclusive hold may be extended.")
    correction: Literal[CORRECTIONS] = Field(  # type: ignore[valid-type]
        default=_ANALYSIS.correction, description="How alpha is spread over a hold's looks.")


def _regex(value: str) -> str:
    import re

    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression: {exc}") from None
    return value


_WATCH = WatchPolicy()
Pattern = Annotated[str, Field(min_length=1, max_length=256),
                    Rule(NO_CONTROL, "must not contain control characters or line breaks"),
                    AfterValidator(_regex)]


class WatchFile(FileModel):
    """watch: container CPU, memory and error lines, checked in canary-auto's holds (canary against
    stable) and for `duration` after promote-canary and blue-green's switch (failure: rollback)."""

    cpu_max_percent: Annotated[float, Field(gt=0, le=10000, allow_inf_nan=False)] | None = Field(
        default=_WATCH.cpu_max_percent, description="CPU in percent of the container's `cpus` limit (of one "
                                                    "CPU without a limit) it must not exceed.")
    memory_max_percent: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] | None = Field(
        default=_WATCH.memory_max_percent, description="Memory in percent of the container's `memory` "
                                                       "limit it must not exceed (no limit: not checked).")
    error_pattern: Pattern | None = Field(
        default=_WATCH.error_pattern, description="A regular expression over the container's log lines, "
                                                  "e.g. `ERROR|Exception`.")
    max_error_lines_increase: Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False)] = Field(
        default=_WATCH.max_error_lines_increase,
        description="Matching lines per minute the new version may log above the old one's.")
    duration: Duration | None = Field(
        default=_WATCH.duration, description="How long the new version is watched after promote-canary "
                                             "and after blue-green's switch (default: promote-canary not "
                                             "watched, blue-green for blue_green.watch).")
    interval: PositiveDuration = Field(default=_WATCH.interval,
                                       description="How often the watch after a change runs its checks.")
