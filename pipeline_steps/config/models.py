"""The ps.yaml file as pydantic models: the one description from which validation and the JSON Schema come.

Each model mirrors one mapping of the file; every default is taken from the runtime objects
(objects.py), so there is one place for it. `build()` turns a validated file into a Config (absolute
paths, default names) and `relations()` checks what no single field can (pairs of slots, ports shared
between services, successes <= retries, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field

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
    HostTls,
    MattermostNotify,
    NginxRouter,
    Segment,
    Service,
    StickyKey,
)
from pipeline_steps.config.run_models import HooksFile, RunFields
from pipeline_steps.config.run_spec import Hooks, Require
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
    Rule,
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
    router: RouterFile | None = None
    canary: CanaryFile = CanaryFile()
    notify: NotifyFile = NotifyFile()
    deploy: DeployFile = DeployFile()
    blue_green: BlueGreenFile = BlueGreenFile()
    hooks: HooksFile = HooksFile()
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
        dumped = s.slots.model_dump().items() if s.slots else ()
        slots = {slot: port for slot, port in dumped if port is not None}
        if s.kind != "http":
            for key in ("slots", "url", "upstream"):
                if getattr(s, key) is not None:
                    self.problem((*loc, key), f"a {s.kind} has none (kind: {s.kind} has no HTTP)")
        elif not self.intact((*loc, "slots")):
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
            upstream=s.upstream or f"{app}_{name}".replace("-", "_").replace(".", "_"), url=s.url,
            run=s.run_spec(lambda p: self.path(p, (*loc, "volumes"))), kind=s.kind, replicas=s.replicas,
            parallel=min(s.parallel, s.replicas), ready=s.ready,
            requires=tuple(Require(r.name, False, r.tcp, r.url) for r in s.requires))

    def hosts(self, items: list[HostFile]) -> tuple[Host, ...]:
        hosts: list[Host] = []
        for i, h in enumerate(items):
            name = h.name or f"host{i + 1}"
            if name in {known.name for known in hosts}:
                self.problem(("hosts", i, "name"), f"duplicate host name {name!r}")
            tls = self.tls(h, ("hosts", i, "tls")) if h.tls is not None else None
            hosts.append(Host(name=name, docker=h.docker, address=h.address, tls=tls))
        return tuple(hosts)

    def tls(self, h: HostFile, loc: Loc) -> HostTls:
        """The host's TLS files as absolute paths, each an existing readable file; the key private."""
        t = h.tls
        assert t is not None
        if h.docker is not None and not h.docker.startswith("tcp://"):
            self.problem(loc, "is only for a tcp:// docker endpoint (ssh:// and unix:// have their own "
                              "protection)")
        elif h.docker is None:
            self.problem(loc, "needs docker: tcp://<host>:<port> (the default engine takes "
                              "DOCKER_TLS_VERIFY / DOCKER_CERT_PATH)")
        if t.verify and t.ca is None:
            self.problem((*loc, "ca"), "is required while verify is true: the CA that signed the engine's "
                                       "certificate")
        if (t.cert is None) != (t.key is None):
            self.problem((*loc, "cert" if t.cert is None else "key"), "cert and key go together")
        paths = {key: self.tls_file(getattr(t, key), (*loc, key), private=key == "key")
                 for key in ("ca", "cert", "key")}
        return HostTls(ca=paths["ca"], cert=paths["cert"], key=paths["key"], verify=t.verify)

    def tls_file(self, value: str | None, loc: Loc, *, private: bool) -> str | None:
        import os
        import stat

        if value is None:
            return None
        path = self.path(value, loc)
        try:
            info = os.stat(path)
        except (OSError, ValueError) as exc:
            why = "not found" if isinstance(exc, FileNotFoundError) else f"cannot be read: {exc}"
            self.problem(loc, f"{why}: {path}")
            return path
        if not stat.S_ISREG(info.st_mode):
            self.problem(loc, f"must be a file: {path}")
        elif not os.access(path, os.R_OK):
            self.problem(loc, f"is not readable by this user: {path}")
        elif private and info.st_mode & 0o077:
            self.problem(loc, f"is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}): "
                              f"chmod 600 {path} (a private key stays private, as ssh requires)")
        return path

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
        segments: list[Segment] = []
        for i, seg in enumerate(c.segments):
            if (seg.header is None) == (seg.cookie is None):
                self.problem(("canary", "segments", i), "needs exactly one of header or cookie")
                continue
            source, name = ("header", seg.header) if seg.header is not None else ("cookie", seg.cookie)
            segments.append(Segment(source=source, name=str(name), values=tuple(seg.value), to=seg.to))
        sticky = None
        if c.sticky:
            kind, _, name = c.sticky.partition(" ")
            sticky = StickyKey(kind=kind, name=name or None)
        a = c.analysis
        analysis = AnalysisPolicy(
            enabled=a.enabled, max_error_rate_increase=a.max_error_rate_increase,
            max_p99_increase=a.max_p99_increase, confidence=a.confidence, min_requests=a.min_requests,
            count_4xx=a.count_4xx, inconclusive=a.inconclusive, extend=a.extend, correction=a.correction)
        return CanaryPolicy(steps=steps or _CANARY.steps, pause=c.pause, check_interval=c.check_interval,
                            tolerance=c.tolerance, scale=c.scale, min_weight=c.min_weight, probe=c.probe,
                            sticky=sticky, segments=tuple(segments), analysis=analysis, rollback=c.rollback)

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

    def requires(self, services: dict[str, Service]) -> dict[str, Service]:
        """`requires` names resolved (a service of the file, else a container); a cycle is a problem."""
        from dataclasses import replace

        resolved = {name: replace(s, requires=tuple(replace(r, service=r.name in services)
                                                    for r in s.requires)) for name, s in services.items()}
        state: dict[str, str] = {}

        def visit(name: str, path: list[str]) -> None:
            state[name] = "open"
            for r in resolved[name].requires:
                if not r.service:
                    continue
                if r.name == name or state.get(r.name) == "open":
                    loop = path[path.index(r.name):] if r.name in path else [name]
                    cycle = " -> ".join([*loop, r.name])
                    self.problem(("services", name, "requires"), f"a cycle: {cycle}")
                elif r.name not in state:
                    visit(r.name, [*path, r.name])
            state[name] = "done"

        for name in resolved:
            if name not in state:
                visit(name, [name])
        return resolved

    def hooks(self, h: HooksFile, services: dict[str, Service], hosts: tuple[Host, ...]) -> Hooks:
        for phase in ("pre_deploy", "pre_traffic", "post_deploy"):
            for i, hook in enumerate(getattr(h, phase)):
                if hook.service not in services:
                    self.problem(("hooks", phase, i, "service"), f"unknown service {hook.service!r} "
                                 f"(configured: {', '.join(sorted(services))})")
                if hook.host is not None and hook.host not in {x.name for x in hosts}:
                    self.problem(("hooks", phase, i, "host"), f"unknown host {hook.host!r} "
                                 f"(configured: {', '.join(x.name for x in hosts)})")
        return h.hooks()

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
    services = b.requires(services)
    n = file.notify.mattermost
    d = file.deploy
    config = Config(
        app=file.app, registry=file.registry, services=services, hosts=hosts, timezone=file.timezone,
        router=b.router(file.router), canary=b.canary(file.canary),
        notify=MattermostNotify(webhook_env=n.webhook_env, channel=n.channel, username=n.username,
                                icon_url=n.icon_url, timeout=n.timeout),
        deploy=DeployPolicy(keep_images=d.keep_images, blue_green_keep=d.blue_green_keep,
                            lock_wait=d.lock_wait),
        blue_green=BlueGreenPolicy(watch=file.blue_green.watch), hooks=b.hooks(file.hooks, services, hosts),
        state_dir=b.state_dir(file.state_dir, file.app), source=source)
    return config, b.problems

