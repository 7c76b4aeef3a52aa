"""The run settings of a service in ps.yaml (networks, volumes, command, limits, ...), compose-like.

`RunFields` is mixed into the service model; `run_spec()` turns the validated fields into the runtime
RunSpec. Short forms follow docker compose: `volumes: ["uploads:/data", "/srv/conf:/etc/app:ro"]`,
`command: "gunicorn app:app"` (split like a shell would), `memory: 512m`, `ulimits: {nofile: 65536}`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler, PlainValidator, WithJsonSchema
from pydantic_core import core_schema

from pipeline_steps.config.run_spec import (
    DEFAULT_JOB_TIMEOUT,
    HealthcheckSpec,
    Hook,
    Hooks,
    NetworkSpec,
    RunSpec,
    Ulimit,
    VolumeSpec,
)
from pipeline_steps.config.types import (
    Address,
    Bounds,
    Duration,
    FileModel,
    Line,
    PlainValue,
    PositiveDuration,
    Regex,
    Rule,
    ServiceName,
    Url,
    fail,
)

_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}"
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
MIN_MEMORY = 6 * 1024 ** 2  # the engine refuses less than 6 MiB
MAX_MEMORY = 1024 ** 4


def _memory(value: Any) -> int:
    if isinstance(value, bool):
        raise fail("must be a size like 512m or 2g")
    m = re.fullmatch(r"([0-9]{1,13})([bkmg]?)", str(value).strip().lower())
    if m is None:
        raise fail(f"not a size: {str(value)[:40]!r} (use 512m, 2g or bytes)")
    size = int(m.group(1)) * _UNITS[m.group(2)]
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise fail("must be from 6m to 1024g")
    return size


def _cpus(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise fail("must be a number of CPUs like 0.5 or 2")
    try:
        cpus = float(value) if isinstance(value, int | float) or value.isascii() else float("nan")
    except ValueError:
        raise fail(f"not a number of CPUs: {str(value)[:40]!r}") from None
    if not 0.01 <= cpus <= 1024:  # also refuses nan and inf
        raise fail("must be from 0.01 to 1024")
    return cpus


def _words(value: Any) -> tuple[str, ...]:
    """A command: a list of words, or a string split like a shell (compose's two forms)."""
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise fail(f"cannot be split into words: {exc}") from None
    elif isinstance(value, list) and all(isinstance(w, str | int | float) and not isinstance(w, bool)
                                         for w in value):
        words = [str(w) for w in value]
    else:
        raise fail("must be a string or a list of strings")
    if not words or len(words) > 256 or any(len(w) > 4096 or "\x00" in w for w in words):
        raise fail("must have 1 to 256 words of at most 4096 characters, without NUL")
    return tuple(words)


Words = Annotated[tuple[str, ...], PlainValidator(_words), WithJsonSchema(
    {"oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string"},
                                                    "minItems": 1, "maxItems": 256}]})]
Memory = Annotated[int, PlainValidator(_memory), WithJsonSchema(
    {"oneOf": [{"type": "integer", "minimum": MIN_MEMORY},
               {"type": "string", "pattern": r"^[0-9]+[bkmgBKMG]?$"}],
     "description": "A size: 512m, 2g or bytes."})]
Cpus = Annotated[float, PlainValidator(_cpus),
                 WithJsonSchema({"type": "number", "minimum": 0.01, "maximum": 1024})]
Name = Annotated[str, Field(max_length=128),
                 Rule(f"^{_NAME}$", "use letters, digits, '_', '.' and '-' (first a letter or digit)")]
AbsPath = Annotated[str, Field(max_length=4096),
                    Rule(r"^/[^\x00-\x1f:]*$", "must be an absolute path (no ':' or control characters)")]


class NetworkFile(FileModel):
    """A user-defined network to join."""

    name: Name
    aliases: Annotated[list[Name], Field(max_length=32)] = Field(default_factory=list)
    create: bool = Field(default=False, description="Create the network when the host lacks it.")


def _network(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


def _volume(value: Any) -> Any:
    """`source:target[:ro|rw]` → {source, target, read_only}."""
    if not isinstance(value, str):
        return value
    parts = value.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise fail(f"not a volume: {value[:60]!r} (use name:/path, /host/path:/path or ...:ro)")
    return {"source": parts[0], "target": parts[1], "read_only": len(parts) == 3 and parts[2] == "ro"}


class VolumeFile(FileModel):
    """A named volume (`source: uploads`) or a bind mount (`source: /srv/conf`, or ./relative)."""

    source: Annotated[str, Field(max_length=4096),
                      Rule(rf"^({_NAME}|/[^\x00-\x1f:]*|\.{{1,2}}(/[^\x00-\x1f:]*)?)$",
                           "a volume name, an absolute path or ./relative path")]
    target: AbsPath
    read_only: bool = False


class HealthcheckFile(FileModel):
    """Docker HEALTHCHECK override (`test: NONE` disables the image's)."""

    test: Words
    interval: Duration | None = None
    timeout: Duration | None = None
    retries: Annotated[int, Bounds(1, 1000)] | None = None
    start_period: Duration | None = None


class UlimitFile(FileModel):
    soft: Annotated[int, Bounds(0, 2 ** 40)]
    hard: Annotated[int, Bounds(0, 2 ** 40)]


def _ulimit(value: Any) -> Any:
    return {"soft": value, "hard": value} if isinstance(value, int) and not isinstance(value, bool) else value


class LogFile(FileModel):
    driver: Name
    options: Annotated[dict[Line, PlainValue], Field(max_length=64)] = Field(default_factory=dict)


@dataclass(frozen=True)
class ShortForm:
    """Item metadata: a scalar short form (`uploads:/data`) turned into the mapping form before
    validation; the JSON Schema offers both forms."""

    expand: Callable[[Any], Any]
    short: dict[str, Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_before_validator_function(self.expand, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> Any:
        return {"oneOf": [self.short, handler(schema)]}


_Networks = list[Annotated[NetworkFile, ShortForm(_network, {"type": "string", "pattern": f"^{_NAME}$"})]]
_Volumes = list[Annotated[VolumeFile, ShortForm(_volume, {"type": "string",
                                                         "pattern": "^[^:]+:/[^:]*(:(ro|rw))?$"})]]
_Ulimits = dict[Name, Annotated[UlimitFile, ShortForm(_ulimit, {"type": "integer", "minimum": 0})]]


class RequireFile(FileModel):
    """A service or container that must be ready first (`kafka`, or {name: kafka, tcp: 9092})."""

    name: Name
    tcp: Annotated[int, Bounds(1, 65535)] | None = Field(default=None, description="Also accepts TCP here "
                                                           "(on each host's address).")
    url: Url | None = Field(default=None, description="Also answers 2xx here.")


_Requires = list[Annotated[RequireFile, ShortForm(_network, {"type": "string", "pattern": f"^{_NAME}$"})]]


class RunFields(FileModel):
    """Run settings of a service, applied to each of its slots (a change of any is a change), and its kind:
    `http` (slots behind nginx) or `worker` (no HTTP: `replicas` containers replaced one by one)."""

    kind: Literal["http", "worker", "job"] = Field(
        default="http", description="http (slots behind nginx), worker (no HTTP, no slots: replicas) or job "
                                    "(never deployed: one-off containers of `ps run` and hooks).")
    replicas: Annotated[int, Bounds(1, 100)] = Field(default=1, description="worker: containers "
                                                     "<app>-<service>-<n>.")
    parallel: Annotated[int, Bounds(1, 100)] = Field(default=1, description="worker: replicas replaced "
                                                     "at once.")
    hosts: Annotated[list[Line], Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="The hosts it runs on, by name (default: every host).")
    requires: Annotated[_Requires, Field(max_length=64)] = Field(
        default_factory=list, description="Services or containers that must be ready before it deploys.")
    ready: Regex | None = Field(default=None, description="worker: a log line (regular expression) that "
                                "says a replica is ready (a line from before it started never counts).")

    networks: Annotated[_Networks, Field(max_length=32)] = Field(
        default_factory=list, description="User-defined networks to join (name, or {name, aliases, create}).")
    volumes: Annotated[_Volumes, Field(max_length=64)] = Field(
        default_factory=list, description="name:/path or /host/path:/path[:ro].")
    command: Words | None = None
    entrypoint: Words | None = None
    user: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}(:[a-zA-Z0-9_.-]{1,64})?$")] | None = None
    workdir: AbsPath | None = None
    memory: Memory | None = Field(default=None, description="Memory limit: 512m, 2g.")
    cpus: Cpus | None = None
    pids: Annotated[int, Bounds(1, 4_194_304)] | None = None
    extra_hosts: Annotated[dict[Annotated[str, Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9.-]{0,252}$")], Address],
                           Field(max_length=256)] = Field(default_factory=dict)
    ulimits: Annotated[_Ulimits, Field(max_length=32)] = Field(default_factory=dict)
    stop_signal: Annotated[str, Field(pattern=r"^(SIG)?[A-Z0-9+-]{1,16}$|^[0-9]{1,2}$")] | None = None
    stop_timeout: Duration | None = Field(default=None, description="Grace before SIGKILL when a slot stops.")
    log: LogFile | None = None
    labels: Annotated[dict[Annotated[str, Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_./-]{0,127}$")], PlainValue],
                      Field(max_length=64)] = Field(default_factory=dict)
    healthcheck: HealthcheckFile | None = None
    restart: Literal["no", "always", "unless-stopped", "on-failure"] | None = None

    def run_spec(self, resolve: Any) -> RunSpec:
        """The RunSpec; `resolve(path)` makes a ./relative bind source absolute (relative to ps.yaml)."""
        hc = self.healthcheck
        return RunSpec(
            networks=tuple(NetworkSpec(n.name, tuple(n.aliases), n.create) for n in self.networks),
            volumes=tuple(VolumeSpec(resolve(v.source) if v.source.startswith(".") else v.source, v.target,
                                     v.read_only) for v in self.volumes),
            command=self.command, entrypoint=self.entrypoint, user=self.user, workdir=self.workdir,
            memory=self.memory, cpus=self.cpus, pids=self.pids,
            extra_hosts=tuple(sorted(self.extra_hosts.items())),
            ulimits=tuple(Ulimit(k, u.soft, u.hard) for k, u in sorted(self.ulimits.items())),
            stop_signal=self.stop_signal, stop_timeout=self.stop_timeout,
            log_driver=self.log.driver if self.log else None,
            log_options=tuple(sorted(self.log.options.items())) if self.log else (),
            labels=tuple(sorted(self.labels.items())),
            healthcheck=HealthcheckSpec(hc.test, hc.interval, hc.timeout, hc.retries, hc.start_period)
            if hc else None,
            restart=self.restart)


class HookFile(FileModel):
    """A job command run in a one-off container of a service's new image, with its run settings."""

    service: ServiceName
    command: Words
    host: Line | None = Field(default=None, description="The host it runs on (default: the first).")
    timeout: PositiveDuration = Field(default=DEFAULT_JOB_TIMEOUT, description="Killed after this long.")


_HookList = Annotated[list[HookFile], Field(max_length=32)]


class HooksFile(FileModel):
    """Jobs a deploy runs: pre_deploy, pre_traffic (migrations: after the new slot is healthy, before
    any weight moves) and post_deploy."""

    pre_deploy: _HookList = Field(default_factory=list)
    pre_traffic: _HookList = Field(default_factory=list)
    post_deploy: _HookList = Field(default_factory=list)

    def hooks(self) -> Hooks:
        def make(phase: str, items: list[HookFile]) -> tuple[Hook, ...]:
            return tuple(Hook(phase, h.service, h.command, h.host, h.timeout) for h in items)

        return Hooks(make("pre_deploy", self.pre_deploy), make("pre_traffic", self.pre_traffic),
                     make("post_deploy", self.post_deploy))
