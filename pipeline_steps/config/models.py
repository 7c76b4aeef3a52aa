"""The ps.yaml file as pydantic models: the one description from which validation and the JSON Schema come.

Each model mirrors one mapping of the file; every default is taken from the runtime objects
(objects.py), so there is one place for it. `build()` turns a validated file into a Config (absolute
paths, default names) and `relations()` checks what no single field can (pairs of slots, ports shared
between services, successes <= retries, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from pipeline_steps.config.objects import (
    CORRECTIONS,
    INCONCLUSIVE,
    ROLLBACKS,
    SLOT_PAIRS,
    AnalysisPolicy,
    BlueGreenPolicy,
    CanaryPolicy,
    CanaryStep,
    Config,
    DeployPolicy,
    HealthSpec,
    Host,
    MattermostNotify,
    NginxRouter,
    Service,
)
from pipeline_steps.config.types import (
    Address,
    AppName,
    Bounds,
    ContainerName,
    DockerEndpoint,
    Duration,
    EnvName,
    FilePath,
    HealthPath,
    KeepPeriod,
    Line,
    PlainValue,
    Port,
    PositiveDuration,
    Regex,
    Registry,
    Say,
    ServiceName,
    TimeZone,
    Upstream,
    Url,
    fail,
)

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]
_HEALTH = HealthSpec()
_CANARY = CanaryPolicy()
_NOTIFY = MattermostNotify()
_ANALYSIS = AnalysisPolicy()


class FileModel(BaseModel):
    """A mapping of ps.yaml: unknown keys are problems, `key:` with no value means the default."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class HealthFile(FileModel):
    """How a service proves it is healthy."""

    path: HealthPath = Field(default=_HEALTH.path, description="HTTP path, must start with /.")
    expect_status: Annotated[int, Bounds(100, 599)] | None = Field(
        default=None, description="Exact status; default any 2xx.")
    expect: Annotated[dict[Line, PlainValue], Field(max_length=100)] = Field(
        default_factory=dict, description="JSON fields the answer must have, e.g. {status: healthy}.")
    retries: Annotated[int, Bounds(1, 10000)] = _HEALTH.retries
    timeout: PositiveDuration = Field(default=_HEALTH.timeout, description="Per try.")
    interval: Duration = _HEALTH.interval
    max_latency: Duration | None = None
    successes: Annotated[int, Bounds(1, 1000)] = Field(
        default=_HEALTH.successes, description="Passes in a row needed; at most retries.")
    start_period: Duration = _HEALTH.start_period
    logs_fallback: Regex | None = Field(default=None, description="Regular expression over container logs.")


class SlotsFile(FileModel):
    """Host port per slot: stable and canary, or blue and green."""

    model_config = ConfigDict(json_schema_extra={
        "minProperties": 2, "anyOf": [{"required": list(pair)} for pair in SLOT_PAIRS.values()]})

    stable: Port | None = None
    canary: Port | None = None
    blue: Port | None = None
    green: Port | None = None


class ServiceFile(FileModel):
    """One deployable service."""

    context: FilePath = Field(default=".", description="Build context, relative to ps.yaml.")
    dockerfile: FilePath = Service.dockerfile
    port: Port = Field(default=Service.port, description="Container port.")
    slots: Annotated[SlotsFile, Say("is required: a host port per slot (stable/canary or blue/green)")]
    env: Annotated[dict[EnvName, PlainValue], Field(max_length=1000)] = Field(default_factory=dict)
    env_from: Annotated[list[EnvName], Field(max_length=1000)] = Field(
        default_factory=list, description="Variables copied from the job's environment.")
    health: HealthFile = HealthFile()
    upstream: Upstream | None = Field(default=None, description="nginx upstream (default <app>_<service>).")
    url: Url | None = Field(default=None, description="Where nginx serves it (to measure the live split).")


class HostFile(FileModel):
    """A Docker engine that runs every slot."""

    name: Line | None = Field(default=None, description="Default host1, host2, ...")
    docker: DockerEndpoint | None = Field(default=None, description="Docker endpoint (default local).")
    address: Address = Field(default=Host.address, description="Where nginx reaches the published ports.")


class NginxFile(FileModel):
    """How to run nginx (paths as nginx sees them: in its container with router.container)."""

    binary: FilePath = NginxRouter.binary
    prefix: FilePath | None = None
    conf: FilePath | None = None
    error_log: FilePath | None = None
    pid: FilePath | None = None


class RouterFile(FileModel):
    """The nginx that splits traffic between the slots."""

    include: Annotated[FilePath, Field(description="The nginx include file ps owns (a file path).")]
    nginx: NginxFile = NginxFile()
    container: ContainerName | None = Field(default=None, description="nginx runs in this container.")
    url: Url | None = Field(default=None, description="nginx's front door, for probes.")
    backups: Annotated[int, Bounds(1, 1000)] = NginxRouter.backups
    keepalive: Annotated[int, Bounds(0, 10000)] = NginxRouter.keepalive
    access_log: FilePath | None = Field(
        default=None, description="The JSON access log nginx writes for the canary judgement (ps adds "
                                  "log_format ps_json and access_log to the include when canary.analysis is "
                                  "on); default ps-access.json next to the include. ps reads it at this "
                                  "path, so with router.container mount it at the same path.")


class CanaryStepFile(FileModel):
    """One canary-auto step: a weight and how long to hold it."""

    weight: Annotated[int, Bounds(0, 100)]
    pause: Duration | None = None
    checks: Annotated[int, Bounds(1, 10000)] | None = None


def _step(value: Any) -> Any:
    if isinstance(value, dict):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
        return {"weight": value}
    raise fail("must be a weight from 0 to 100 or a mapping with weight/pause/checks")


Step = Annotated[CanaryStepFile, BeforeValidator(
    _step, json_schema_input_type=Annotated[int, Field(ge=0, le=100)] | CanaryStepFile)]


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


class CanaryFile(FileModel):
    """canary-auto: weights step by step, holds, and the nginx weight scale."""

    steps: Annotated[list[Step], Field(min_length=1, max_length=100),
                     Say("must be a non-empty list of weights in percent",
                         ("too_short", "list_type"))] = Field(
        default=[s.weight for s in _CANARY.steps], validate_default=True,
        description="Percent of traffic to the canary, step by step.")
    pause: Duration = _CANARY.pause
    check_interval: PositiveDuration = _CANARY.check_interval
    tolerance: Annotated[int, Bounds(1, 100000)] = Field(
        default=_CANARY.tolerance, description="Weight units verify-weights allows.")
    scale: Annotated[int, Bounds(2, 100000)] = Field(
        default=_CANARY.scale, description="nginx weights add up to this.")
    min_weight: Annotated[int, Bounds(0, 50000)] = Field(
        default=_CANARY.min_weight, description="Every slot keeps this weight; below half of scale.")
    probe: Annotated[int, Bounds(0, 100000)] = Field(
        default=_CANARY.probe, description="Requests sent through nginx at each step to measure the live "
                                           "split (0: off).")
    analysis: AnalysisFile = AnalysisFile()
    rollback: Literal[ROLLBACKS] = Field(  # type: ignore[valid-type]
        default=_CANARY.rollback, description="A failed judgement: immediate (one reload back to stable) "
                                              "or gradual (back through the steps, checked at each).")


class MattermostFile(FileModel):
    """Mattermost notifications; the webhook URL is a secret and comes from an environment variable."""

    webhook_env: EnvName = Field(default=_NOTIFY.webhook_env,
                                 description="Variable holding the secret webhook URL.")
    channel: Line | None = _NOTIFY.channel
    username: Line | None = _NOTIFY.username
    icon_url: Url | None = _NOTIFY.icon_url
    timeout: PositiveDuration = _NOTIFY.timeout


class NotifyFile(FileModel):
    """Where deploy notifications go."""

    mattermost: MattermostFile = MattermostFile()


class DeployFile(FileModel):
    """Deploy-wide settings."""

    keep_images: Annotated[int, Bounds(1, 1000)] = Field(
        default=DeployPolicy.keep_images, description="Images kept per service and host.")
    blue_green_keep: KeepPeriod = DeployPolicy.blue_green_keep
    lock_wait: Duration = DeployPolicy.lock_wait


class BlueGreenFile(FileModel):
    """blue-green deploys."""

    watch: Duration = Field(default=BlueGreenPolicy.watch,
                            description="How long the new color is watched after the switch (0: off).")


def _text_keys(value: Any) -> Any:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


class PsFile(FileModel):
    """Configuration of `ps` (pipeline-steps): app, registry, hosts, services, router, canary policy,
    notifications."""

    model_config = ConfigDict(title="pipeline-steps ps.yaml")

    app: Annotated[AppName, Field(description="Application name; images are "
                                              "<registry>/<app>/<service>:<BUILD_ID>.")]
    registry: Annotated[Registry, Field(description="host[:port][/namespace], no scheme.")]
    timezone: TimeZone = Config.timezone
    hosts: Annotated[list[HostFile], Field(min_length=1, max_length=64),
                     Say("must be a non-empty list", ("too_short", "list_type"))] = Field(
        default_factory=lambda: [HostFile(name=h.name, address=h.address) for h in Config.hosts])
    services: Annotated[dict[ServiceName, ServiceFile], Field(min_length=1, max_length=100),
                        BeforeValidator(_text_keys),
                        Say("is required: at least one service", ("missing", "too_short", "dict_type"))]
    router: RouterFile | None = None
    canary: CanaryFile = CanaryFile()
    notify: NotifyFile = NotifyFile()
    deploy: DeployFile = DeployFile()
    blue_green: BlueGreenFile = BlueGreenFile()
    state_dir: FilePath | None = Field(default=None, description="Lock, history and env files: a "
                                       "directory (default ~/.local/state/pipeline-steps/<app>).")


# ---------------------------------------------------------------- building the Config


def _kind(path: str) -> str | None:
    """What is at `path`: a directory, a file (anything else) or None (absent, or hidden from this user)."""
    try:
        return "directory" if Path(path).is_dir() else "file" if Path(path).exists() else None
    except (OSError, ValueError):
        return None


class _Build:
    """Turns a validated PsFile into a Config, collecting the problems only the whole file shows."""

    def __init__(self, base: Path, broken: frozenset[Loc]) -> None:
        self.base = base
        self.broken = broken  # where the file already has problems (those values were left out)
        self.problems: list[Problem] = []

    def intact(self, loc: Loc) -> bool:
        """No value under `loc` was left out for a problem of its own (so absence means absence)."""
        return not any(b[:len(loc)] == loc for b in self.broken)

    def problem(self, loc: Loc, message: str) -> None:
        self.problems.append((loc, message))

    def path(self, value: str, loc: Loc) -> str:
        """`value` as an absolute path relative to the config file."""
        try:
            return str((self.base / value).resolve())
        except (ValueError, OSError, RuntimeError) as exc:
            self.problem(loc, f"not a usable path: {exc}")
            return value

    def health(self, h: HealthFile, loc: Loc) -> HealthSpec:
        if h.successes > h.retries:
            self.problem((*loc, "successes"), f"must not be more than retries ({h.retries}): the gate could "
                                              "never pass")
        return HealthSpec(path=h.path, expect_status=h.expect_status, expect=dict(h.expect),
                          retries=h.retries,
                          timeout=h.timeout, interval=h.interval, max_latency=h.max_latency,
                          successes=h.successes, start_period=h.start_period, logs_fallback=h.logs_fallback)

    def service(self, app: str, name: str, s: ServiceFile) -> Service:
        loc: Loc = ("services", name)
        slots = {slot: port for slot, port in s.slots.model_dump().items() if port is not None}
        if not self.intact((*loc, "slots")):
            pass
        elif not slots:
            self.problem((*loc, "slots"), "is required: a host port per slot (stable/canary or blue/green)")
        elif not any(all(slot in slots for slot in pair) for pair in SLOT_PAIRS.values()):
            self.problem((*loc, "slots"), "needs a full pair: stable and canary, or blue and green")
        if len(set(slots.values())) != len(slots):
            self.problem((*loc, "slots"), "each slot needs its own host port")
        return Service(
            name=name, context=self.path(s.context, (*loc, "context")), dockerfile=s.dockerfile, port=s.port,
            slots=slots, env=dict(s.env), env_from=tuple(s.env_from),
            health=self.health(s.health, (*loc, "health")),
            upstream=s.upstream or f"{app}_{name}".replace("-", "_").replace(".", "_"), url=s.url)

    def hosts(self, items: list[HostFile]) -> tuple[Host, ...]:
        hosts: list[Host] = []
        for i, h in enumerate(items):
            name = h.name or f"host{i + 1}"
            if name in {known.name for known in hosts}:
                self.problem(("hosts", i, "name"), f"duplicate host name {name!r}")
            hosts.append(Host(name=name, docker=h.docker, address=h.address))
        return tuple(hosts)

    def router(self, r: RouterFile | None) -> NginxRouter | None:
        if r is None:
            return None
        include = self.path(r.include, ("router", "include"))  # written by ps on this machine, in every mode
        if _kind(include) == "directory":
            self.problem(("router", "include"), f"must be a file path, not a directory: {include}")

        def nginx_path(key: str) -> str | None:
            # with router.container, nginx's own paths are as the container sees them: left as written
            value = getattr(r.nginx, key)
            if value is None or r.container:
                return value
            return self.path(value, ("router", "nginx", key))

        error_log = r.nginx.error_log
        return NginxRouter(
            include=include, binary=r.nginx.binary, prefix=nginx_path("prefix"), conf=nginx_path("conf"),
            error_log=self.path(error_log, ("router", "nginx", "error_log")) if error_log else None,
            pid=nginx_path("pid"), container=r.container, url=r.url, backups=r.backups, keepalive=r.keepalive,
            access_log=self.path(r.access_log, ("router", "access_log")) if r.access_log else None)

    def canary(self, c: CanaryFile) -> CanaryPolicy:
        steps = tuple(CanaryStep(s.weight, s.pause, s.checks) for s in c.steps)
        if any(b.weight <= a.weight for a, b in zip(steps, steps[1:], strict=False)):
            self.problem(("canary", "steps"), "weights must increase from step to step")
        if c.min_weight * 2 >= c.scale:
            self.problem(("canary", "min_weight"), "must be less than half of canary.scale")
        a = c.analysis
        analysis = AnalysisPolicy(
            enabled=a.enabled, max_error_rate_increase=a.max_error_rate_increase,
            max_p99_increase=a.max_p99_increase, confidence=a.confidence, min_requests=a.min_requests,
            count_4xx=a.count_4xx, inconclusive=a.inconclusive, extend=a.extend, correction=a.correction)
        return CanaryPolicy(steps=steps or _CANARY.steps, pause=c.pause, check_interval=c.check_interval,
                            tolerance=c.tolerance, scale=c.scale, min_weight=c.min_weight, probe=c.probe,
                            analysis=analysis, rollback=c.rollback)

    def shared_ports_and_upstreams(self, services: dict[str, Service], hosts: tuple[Host, ...]) -> None:
        seen_ports: dict[tuple[str, int], str] = {}
        seen_upstreams: dict[str, str] = {}
        for svc in services.values():
            for slot, port in svc.slots.items():
                for host in hosts:
                    key = (host.address, port)
                    if key in seen_ports and seen_ports[key] != svc.name:
                        self.problem(("services", svc.name, "slots", slot),
                                     f"port {port} is also used by service {seen_ports[key]}")
                    seen_ports[key] = svc.name
            if svc.upstream in seen_upstreams:
                self.problem(("services", svc.name, "upstream"),
                             f"upstream {svc.upstream!r} is also used by service "
                             f"{seen_upstreams[svc.upstream]}")
            seen_upstreams.setdefault(svc.upstream, svc.name)

    def state_dir(self, value: str | None, app: str) -> str:
        if not value:
            import os

            home = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
            return str(Path(home) / "pipeline-steps" / app)
        state = self.path(value, ("state_dir",))
        if _kind(state) not in (None, "directory"):
            self.problem(("state_dir",), f"must be a directory, not a file: {state}")
        return state


def build(file: PsFile, source: str, base: Path,
          broken: frozenset[Loc] = frozenset()) -> tuple[Config, list[Problem]]:
    """The Config of a validated file, and the problems between its fields (empty: the file is valid).

    `broken`: where values were left out of the file for their own problems."""
    b = _Build(base, broken)
    services = {name: b.service(file.app, name, s) for name, s in file.services.items()}
    hosts = b.hosts(file.hosts)
    b.shared_ports_and_upstreams(services, hosts)
    n = file.notify.mattermost
    d = file.deploy
    config = Config(
        app=file.app, registry=file.registry, services=services, hosts=hosts, timezone=file.timezone,
        router=b.router(file.router), canary=b.canary(file.canary),
        notify=MattermostNotify(webhook_env=n.webhook_env, channel=n.channel, username=n.username,
                                icon_url=n.icon_url, timeout=n.timeout),
        deploy=DeployPolicy(keep_images=d.keep_images, blue_green_keep=d.blue_green_keep,
                            lock_wait=d.lock_wait),
        blue_green=BlueGreenPolicy(watch=file.blue_green.watch),
        state_dir=b.state_dir(file.state_dir, file.app), source=source)
    return config, b.problems

