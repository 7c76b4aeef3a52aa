"""The value types of ps.yaml: each one validates (with a ps-style message) and describes itself in the
JSON Schema from the same definition, so the loader and the schema cannot drift.

Imported only when a config is loaded (pydantic is not needed for `ps --help`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from pipeline_steps.durations import parse_duration

MAX_DURATION = 7 * 24 * 3600.0  # a week: longer holds, timeouts or waits are mistakes, not plans
DURATION_PATTERN = r"^[ \t]*[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?[ \t]*(?:[mM][sS]|[sSmMhH])?[ \t]*$"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_PATTERN = rf"{_LABEL}(?:\.{_LABEL})*"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REGISTRY_PATTERN = rf"^(?:{HOSTNAME_PATTERN}|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?(?:/{_PATH_COMPONENT})*$"
ADDRESS_PATTERN = rf"^(?:{HOSTNAME_PATTERN}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$"
URL_PATTERN = r"^https?://[^\s/?#]+(?:[/?#][^\s]*)?$"
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"


def fail(message: str) -> PydanticCustomError:
    """The error a validator raises: its message is the problem text after `path: `."""
    return PydanticCustomError("ps", message)


@dataclass(frozen=True)
class Rule:
    """A regular expression the whole value must match, with the message when it does not.

    The same pattern goes into the JSON Schema (`pattern`, several rules through `allOf`)."""

    pattern: str
    message: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        rx = re.compile(self.pattern)

        def check(value: Any) -> Any:
            if isinstance(value, str) and rx.fullmatch(value) is None:
                raise fail(self.message)
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> Any:
        js = handler(schema)
        if "pattern" in js:
            js.setdefault("allOf", []).append({"pattern": self.pattern})
        else:
            js["pattern"] = self.pattern
        return js


@dataclass(frozen=True)
class Say:
    """Field metadata: the problem text for these pydantic error types at this field."""

    message: str
    types: tuple[str, ...] = ("missing",)


def _scalar_text(value: Any) -> Any:
    """A YAML number where text is expected is taken as its text (`app: 123`); bools are not."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _plain_value(value: Any) -> Any:
    """An env or expect value: any scalar, as the text a process would see (`true`, `4`)."""
    if value is None or isinstance(value, dict | list):
        raise fail("must be a plain value")
    text = str(value).lower() if isinstance(value, bool) else value if isinstance(value, str) else str(value)
    if len(text) > 32768:
        raise fail("must be at most 32768 characters")
    return text


def _after(check: Callable[[Any], Any]) -> AfterValidator:
    return AfterValidator(check)


@dataclass(frozen=True)
class Bounds:
    """`Annotated[int, Bounds(low, high)]`: a whole number from low to high (bools, floats and text are
    refused; 2**63 or 10**100 are just out of bounds)."""

    low: int
    high: int

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.int_schema(ge=self.low, le=self.high, strict=True)


Text = Annotated[str, BeforeValidator(_scalar_text)]
Line = Annotated[Text, Field(min_length=1, max_length=256),
                 Rule(NO_CONTROL, "must not contain control characters or line breaks")]
FilePath = Annotated[Text, Field(min_length=1, max_length=4096),
                     Rule(NO_CONTROL, "must not contain control characters or line breaks")]
AppName = Annotated[Text, Field(min_length=1, max_length=63),
                    Rule(NAME_PATTERN, "use lower-case letters, digits, '.', '_' and '-'")]
ServiceName = Annotated[Text, Field(min_length=1, max_length=63),
                        Rule(NAME_PATTERN, "service names use lower-case letters, digits, '.', '_' and '-'")]
EnvName = Annotated[Text, Field(max_length=255),
                    Rule(ENV_NAME_PATTERN, "must be an environment variable name")]
Port = Annotated[int, Bounds(1, 65535)]
Upstream = Annotated[Text, Field(min_length=1, max_length=64),
                     Rule(r"^[A-Za-z0-9_]+$", "must be a plain nginx upstream name: letters, digits and '_'")]
ContainerName = Annotated[Text, Field(min_length=1, max_length=128),
                          Rule(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", "must be a Docker container name or id")]
DockerEndpoint = Annotated[Text, Field(max_length=1024),
                           Rule(r"^(?:unix|tcp|ssh)://[\s\S]*$", "must start with unix://, tcp:// or ssh://"),
                           Rule(r"^[^\s\x00-\x1f\x7f]+$", "must not contain spaces or control characters")]
PlainValue = Annotated[str, PlainValidator(_plain_value),
                       Rule(r"^[^\x00\r\n]*$", "must not contain NUL or line breaks"),
                       WithJsonSchema({"type": ["string", "number", "boolean"], "pattern": r"^[^\x00\r\n]*$",
                                       "maxLength": 32768})]


def _registry_host(value: str) -> str:
    host = value.split("/", 1)[0]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:].split("]", 1)[0])
        except ValueError:
            raise fail("not a valid IPv6 address in brackets") from None
    port = host.rsplit("]", 1)[-1].rpartition(":")[2] if ":" in host.rsplit("]", 1)[-1] else ""
    if port and not 1 <= int(port) <= 65535:
        raise fail("the port must be from 1 to 65535")
    return value


Registry = Annotated[
    Text, Field(min_length=1, max_length=255),
    Rule(r"^(?!https?://)[\s\S]*$", "give host[:port][/namespace] without http:// or https://"),
    Rule(REGISTRY_PATTERN, "must be host[:port][/namespace] (e.g. registry.example.com:5000/team)"),
    _after(_registry_host)]


def _address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if ":" in value or all(part.isdigit() for part in value.split(".")):
        raise fail("must be an IP address or a host name")
    return value


Address = Annotated[Text, Field(min_length=1, max_length=253),
                    Rule(ADDRESS_PATTERN, "must be an IP address or a host name"), _after(_address)]


def _url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise fail("must be an http:// or https:// URL with a host (and a port from 1 to 65535)") from None
    if not parts.hostname:
        raise fail("must be an http:// or https:// URL with a host")
    return value


Url = Annotated[Text, Field(max_length=2048),
                Rule(URL_PATTERN, "must be an http:// or https:// URL with a host"), _after(_url)]


def _timezone(value: str) -> str:
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(value)
    except Exception:
        raise fail(f"unknown time zone {value!r}") from None
    return value


TimeZone = Annotated[Text, Field(min_length=1, max_length=64), _after(_timezone)]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as exc:
        raise fail(f"not a valid regular expression: {exc}") from None
    return value


Regex = Annotated[Text, Field(max_length=1024), _after(_regex)]
HealthPath = Annotated[Text, Field(max_length=2048), Rule(r"^/[\s\S]*$", 'must start with "/"'),
                       Rule(r"^[^\s\x00-\x1f\x7f]*$",
                            "must not contain spaces, line breaks or control characters")]
_DURATION_RX = re.compile(DURATION_PATTERN)
DURATION_SCHEMA: dict[str, Any] = {
    "description": "A duration: 500ms, 2s, 1m, 1h or plain seconds.",
    "oneOf": [{"type": "number", "minimum": 0, "maximum": MAX_DURATION},
              {"type": "string", "pattern": DURATION_PATTERN}],
}


def duration_seconds(value: Any, positive: bool = False) -> float:
    """Seconds for a ps.yaml duration (ASCII digits only, at most MAX_DURATION); raise the ps error."""
    if isinstance(value, str) and not _DURATION_RX.fullmatch(value):
        raise fail(f"not a duration: {value[:40]!r} (use 500ms, 2s, 1m or seconds)")
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if seconds > MAX_DURATION:
        raise fail(f"must be at most {MAX_DURATION:g} seconds (7 days)")
    if positive and seconds == 0:
        raise fail("must be more than 0")
    return seconds


Duration = Annotated[float, PlainValidator(duration_seconds), WithJsonSchema(DURATION_SCHEMA)]
PositiveDuration = Annotated[float, PlainValidator(lambda v: duration_seconds(v, positive=True)),
                             WithJsonSchema({"description": "A duration above 0: 500ms, 2s, 1m, 1h or plain "
                                                            "seconds.",
                                             "oneOf": [{"type": "number", "exclusiveMinimum": 0,
                                                        "maximum": MAX_DURATION},
                                                       DURATION_SCHEMA["oneOf"][1]]})]


def _keep(value: Any) -> float | None:
    return None if value in ("forever", "always") else duration_seconds(value)


KeepPeriod = Annotated[float | None, PlainValidator(_keep), WithJsonSchema(
    {"anyOf": [{"enum": ["forever", "always"]}, DURATION_SCHEMA],
     "description": "forever (keep the old color as backup) or a duration after which it is stopped."})]


class FileModel(BaseModel):
    """A mapping of ps.yaml: unknown keys are problems, `key:` with no value means the default."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data
