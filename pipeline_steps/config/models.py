"""The ps.yaml file as pydantic models: the one description from which validation and the JSON Schema come.

Each model mirrors one mapping of the file; every default is taken from the runtime objects
(objects.py), so there is one place for it. `building.build()` turns a validated file into a Config
(absolute paths, default names) and checks what no single field can (pairs of slots, ports shared
between services, successes <= retries, ...). Run settings are in run_models.py, the sticky split and
the judgement in canary_models.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field

from pipeline_steps.config.canary_models import AnalysisFile, SegmentFile, StickyText, WatchFile
from pipeline_steps.config.objects import (
    ROLLBACKS,
    SLOT_PAIRS,
    AnalysisPolicy,
    BlueGreenPolicy,
    CanaryPolicy,
    Config,
    DeployPolicy,
    HealthSpec,
    Host,
    HostTls,
    MattermostNotify,
    NginxRouter,
    Service,
)
from pipeline_steps.config.run_models import HooksFile, RunFields
from pipeline_steps.config.types import (
    Address,
    AppName,
    Bounds,
    ContainerName,
    DockerEndpoint,
    Duration,
    EnvName,
    FileModel,
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


class ServiceFile(RunFields):
    """One deployable service (its run settings come from RunFields)."""

    context: FilePath = Field(default=".", description="Build context, relative to ps.yaml.")
    dockerfile: FilePath = Service.dockerfile
    port: Port = Field(default=Service.port, description="Container port.")
    slots: SlotsFile | None = Field(default=None, description="Host port per slot (required for kind http).")
    env: Annotated[dict[EnvName, PlainValue], Field(max_length=1000)] = Field(default_factory=dict)
    env_from: Annotated[list[EnvName], Field(max_length=1000)] = Field(
        default_factory=list, description="Variables copied from the job's environment.")
    health: HealthFile = HealthFile()
    upstream: Upstream | None = Field(default=None, description="nginx upstream (default <app>_<service>).")
    url: Url | None = Field(default=None, description="Where nginx serves it (to measure the live split).")


class HostTlsFile(FileModel):
    """TLS with a client certificate for a tcp:// engine, as `docker --tlsverify` (PEM files)."""

    ca: FilePath | None = Field(default=None, description="CA of the engine's certificate (like "
                                "--tlscacert); required while verify is true.")
    cert: FilePath | None = Field(default=None, description="Client certificate (like --tlscert).")
    key: FilePath | None = Field(default=None, description="Client key (like --tlskey); mode 0600 or "
                                 "stricter.")
    verify: bool = Field(default=HostTls.verify, description="Check the engine's certificate against ca.")


class HostFile(FileModel):
    """A Docker engine that runs every slot."""

    name: Line | None = Field(default=None, description="Default host1, host2, ...")
    docker: DockerEndpoint | None = Field(default=None, description="Docker endpoint (default local).")
    address: Address = Field(default=Host.address, description="Where nginx reaches the published ports.")
    tls: HostTlsFile | None = Field(default=None, description="TLS for a tcp:// endpoint (default: "
                                    "DOCKER_TLS_VERIFY / DOCKER_CERT_PATH, as docker reads them).")


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
    name: Line | None = Field(default=None, description="In routers: its name in lines and --json "
                                                      "(default router1, router2, ...).")
    host: Line | None = Field(default=None, description="Only with container: the configured host whose "
                                                      "engine runs it (default: the first host).")
    hosts: Annotated[list[Line], Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="The hosts whose slots its upstreams list (default: [host] for a "
                                  "container router in routers, every host otherwise).")
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
    sticky: StickyText | None = Field(
        default=None, description="Keep each user on one slot for the whole rollout, by a hash of this key: "
                                  "`cookie NAME`, `header NAME` or `ip` (default: every request is split "
                                  "on its own).")
    segments: Annotated[list[SegmentFile], Field(max_length=50)] = Field(
        default_factory=list, description="Header or cookie values that always (to: canary) or never "
                                          "(to: stable) reach the canary, whatever the weight; first "
                                          "match wins.")
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
    router: RouterFile | None = Field(default=None, description="One nginx (the one-router form of "
                                                                "routers).")
    routers: Annotated[list[RouterFile], Field(min_length=1, max_length=64),
                       Say("must be a non-empty list of routers", ("too_short", "list_type"))] | None = Field(
        default=None, description="Every nginx that splits traffic (one per server behind a load "
                                  "balancer); a traffic change goes to all of them at once.")
    routers_url: Url | None = Field(default=None, description="The front balancer in front of all routers "
                                                              "(measured by verify-weights and the probe).")
    canary: CanaryFile = CanaryFile()
    notify: NotifyFile = NotifyFile()
    deploy: DeployFile = DeployFile()
    blue_green: BlueGreenFile = BlueGreenFile()
    watch: WatchFile = WatchFile()
    hooks: HooksFile = HooksFile()
    state_dir: FilePath | None = Field(default=None, description="Lock, history and env files: a "
                                       "directory (default ~/.local/state/pipeline-steps/<app>).")
    parallel_hosts: Annotated[int, Bounds(1, 64)] = Field(
        default=Config.parallel_hosts, description="Hosts deploy-env, workers, health gates and "
        "requires work on at once (1: one after the other).")
