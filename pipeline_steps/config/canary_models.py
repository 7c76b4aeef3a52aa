"""The canary's newer mappings of ps.yaml: the sticky split and segments (issue 13), and the judgement
from nginx's access log (issue 14); split from models.py to keep it readable."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from pipeline_steps.config.objects import CORRECTIONS, INCONCLUSIVE, AnalysisPolicy
from pipeline_steps.config.types import Bounds, Duration, FileModel, Rule

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
