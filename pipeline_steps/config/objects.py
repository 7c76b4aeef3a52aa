"""The configuration objects the rest of ps uses: frozen dataclasses, light to import.

Their defaults are the defaults of ps.yaml: the pydantic models of the file (models.py) take every
default from here, so the loader, the JSON Schema and code that builds these objects directly agree.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline_steps.config.run_spec import Hooks, Require, RunSpec
from pipeline_steps.secrets import MASK, is_secret_name

SLOT_PAIRS: dict[str, tuple[str, str]] = {
    "canary": ("stable", "canary"),
    "blue-green": ("blue", "green"),
}
SLOT_NAMES = ("stable", "canary", "blue", "green")
DEFAULT_CONFIG = "ps.yaml"
DEFAULT_TIMEZONE = "Asia/Seoul"  # the one default time zone (config.timezone, history, lock, reports)


@dataclass(frozen=True)
class HostTls:
    """TLS with a client certificate for a tcp:// engine (absolute paths of PEM files)."""

    ca: str | None = None  # the CA that signed the engine's certificate (required when verify)
    cert: str | None = None  # the client certificate and its key, given together
    key: str | None = None
    verify: bool = True  # False: the engine's certificate is not checked (a warning says so)


@dataclass(frozen=True)
class Host:
    """A Docker endpoint and the address nginx reaches its published ports at."""

    name: str
    docker: str | None = None  # None: the local engine (DOCKER_HOST or the default socket)
    address: str = "127.0.0.1"
    tls: HostTls | None = None  # None: DOCKER_TLS_VERIFY / DOCKER_CERT_PATH decide, as for docker

    @property
    def endpoint(self) -> str:
        """The Docker endpoint as a user would recognise it."""
        return self.docker or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def warning(self) -> str | None:
        """Why this endpoint is not safe outside loopback (plain TCP, or TLS that checks nothing)."""
        from pipeline_steps.config.endpoints import host_warning

        return host_warning(self)


@dataclass(frozen=True)
class HealthSpec:
    """How a service proves it is healthy."""

    path: str = "/health"
    expect_status: int | None = None  # None: any 2xx
    expect: dict[str, str] = field(default_factory=dict)
    retries: int = 30
    timeout: float = 5.0
    interval: float = 2.0
    max_latency: float | None = None
    successes: int = 1
    start_period: float = 0.0
    logs_fallback: str | None = None


@dataclass(frozen=True)
class Service:
    """One deployable service: how to build it and where its slots listen."""

    name: str
    context: str
    dockerfile: str = "Dockerfile"
    port: int = 80
    slots: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    env_from: tuple[str, ...] = ()
    health: HealthSpec = field(default_factory=HealthSpec)
    upstream: str = ""
    url: str | None = None  # where nginx serves this service (for measuring the live split)
    run: RunSpec = field(default_factory=RunSpec)  # networks, volumes, command, limits, ...
    kind: str = "http"  # http (slots behind nginx) | worker (no HTTP: replicas) | job (ps run, hooks)
    replicas: int = 1  # worker: containers <app>-<service>-<n>, n = 1..replicas
    parallel: int = 1  # worker: replicas replaced at once
    ready: str | None = None  # worker: the log line (regex) that says a replica is ready
    requires: tuple[Require, ...] = ()  # ready before this service deploys
    hosts: tuple[str, ...] = ()  # the hosts it runs on, by name (empty: every host)

    @property
    def is_worker(self) -> bool:
        return self.kind == "worker"

    @property
    def is_http(self) -> bool:
        return self.kind == "http"

    def members(self) -> dict[str, int]:
        """Slot -> host port; a worker's replicas "1".."N" (no port: 0). Its container is
        <app>-<service>-<slot> either way."""
        if self.kind == "job":
            return {}
        return {str(n): 0 for n in range(1, self.replicas + 1)} if self.is_worker else dict(self.slots)

    def pair(self, kind: str) -> tuple[str, str] | None:
        """The slot pair of `kind` ("canary" or "blue-green") if this service has both slots."""
        pair = SLOT_PAIRS[kind]
        return pair if all(s in self.slots for s in pair) else None


@dataclass(frozen=True)
class NginxRouter:
    """The nginx that splits traffic, and how to test and reload it.

    `name` names it in lines and --json (router1, router2, ...); `host` is the configured host whose
    engine runs `container` (None for an nginx on this machine); `hosts` are the hosts whose slots its
    upstreams list (empty: every host)."""

    include: str
    binary: str = "nginx"
    prefix: str | None = None
    conf: str | None = None
    container: str | None = None
    error_log: str | None = None
    pid: str | None = None
    url: str | None = None
    backups: int = 10
    keepalive: int = 32
    access_log: str | None = None  # the ps_json log nginx writes and ps reads (default: access_log_path)
    name: str = "router1"
    host: str | None = None
    hosts: tuple[str, ...] = ()

    def access_log_path(self) -> str:
        """router.access_log, by default `ps-access.json` next to the include file."""
        return self.access_log or os.path.join(os.path.dirname(self.include), "ps-access.json")


@dataclass(frozen=True)
class CanaryStep:
    """One step of canary-auto: a weight and how long to hold it."""

    weight: int
    pause: float | None = None
    checks: int | None = None


INCONCLUSIVE = ("pass", "fail")
CORRECTIONS = ("bonferroni", "pocock")
ROLLBACKS = ("immediate", "gradual")


@dataclass(frozen=True)
class AnalysisPolicy:
    """canary.analysis: when a canary is judged worse than stable (from nginx's access log).

    A metric fails only when both hold: the one-sided test says canary > stable at the look's level
    (alpha = 1 - confidence, spread over the planned looks and the two metrics), and the observed
    difference is larger than its threshold (a practical, not just statistical, difference).
    """

    enabled: bool = False  # canary-auto's holds judge the canary (needs router.access_log)
    max_error_rate_increase: float = 0.02  # canary rate - stable rate, as a fraction (0.02 = 2 pp)
    max_p99_increase: float = 0.050  # seconds
    confidence: float = 0.99  # per judged hold (all its looks and both metrics together)
    min_requests: int = 50  # on each side, else "inconclusive"
    count_4xx: bool = False  # 4xx count as errors too
    inconclusive: str = "fail"  # after the extension: "pass" or "fail"
    extend: float = 30.0  # seconds a hold may be extended while inconclusive
    correction: str = "bonferroni"  # how alpha is spread over the looks: bonferroni | pocock

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), not {self.confidence}")
        if self.max_error_rate_increase < 0 or self.max_p99_increase < 0:
            raise ValueError("max_error_rate_increase and max_p99_increase must be >= 0")
        if self.min_requests < 1:
            raise ValueError("min_requests must be >= 1")
        if self.inconclusive not in INCONCLUSIVE:
            raise ValueError(f"inconclusive must be one of {', '.join(INCONCLUSIVE)}")
        if self.extend < 0:
            raise ValueError("extend must be >= 0")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}")

    @property
    def alpha(self) -> float:
        """The false-alarm budget of one judged hold."""
        return 1.0 - self.confidence

    def is_error(self, status: int) -> bool:
        """Whether an answer with this status counts as an error."""
        return status >= 500 or (self.count_4xx and 400 <= status < 500)


@dataclass(frozen=True)
class StickyKey:
    """canary.sticky: what keeps one user on one slot (`cookie NAME`, `header NAME` or `ip`)."""

    kind: str  # cookie | header | ip
    name: str | None = None  # the cookie or header name (None for ip)

    def describe(self) -> str:
        """`cookie ps_uid`, `header X-User-Id` or `client ip`."""
        return "client ip" if self.kind == "ip" else f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Segment:
    """One canary.segments entry: requests whose header or cookie has one of `values` always go `to`."""

    source: str  # header | cookie
    name: str
    values: tuple[str, ...]
    to: str  # canary | stable

    def describe(self) -> str:
        """`header X-Canary=always -> canary`."""
        return f"{self.source} {self.name}={'|'.join(self.values)} -> {self.to}"


@dataclass(frozen=True)
class CanaryPolicy:
    """How canary-auto moves traffic: the steps, holds and nginx weight scale."""

    steps: tuple[CanaryStep, ...] = (CanaryStep(10), CanaryStep(40), CanaryStep(70))
    pause: float = 30.0
    check_interval: float = 2.0
    tolerance: int = 2
    scale: int = 1000
    min_weight: int = 1
    probe: int = 0  # requests sent through nginx at each step to measure the live split (0: off)
    sticky: StickyKey | None = None  # None: every request is split by the weights on its own
    segments: tuple[Segment, ...] = ()
    analysis: AnalysisPolicy = field(default_factory=AnalysisPolicy)
    rollback: str = "immediate"  # a failed judgement: immediate (one reload) | gradual (step by step)


@dataclass(frozen=True)
class MattermostNotify:
    """Where deploy notifications go (the webhook URL itself comes from the environment)."""

    webhook_env: str = "MATTERMOST_WEBHOOK_URL"
    channel: str | None = None
    username: str | None = "pipeline-steps"
    icon_url: str | None = None
    timeout: float = 5.0


@dataclass(frozen=True)
class DeployPolicy:
    """Deploy-wide settings: images kept, the old color's keep period, the lock wait."""

    keep_images: int = 5
    blue_green_keep: float | None = None  # None: keep the old color running as backup
    lock_wait: float = 0.0


@dataclass(frozen=True)
class BlueGreenPolicy:
    """blue-green deploys."""

    watch: float = 30.0  # after the switch the new color is watched like a canary hold (0: off)


@dataclass(frozen=True)
class WatchPolicy:
    """watch: the post-deploy watch's checks (container CPU, memory, error lines in the logs).

    They run at every check of canary-auto's holds (canary against stable), and for `duration` after
    promote-canary and after blue-green's switch (the new version against the previous one's figures
    from before the change, CPU and memory against the limits). A check left out (None) is off.
    """

    cpu_max_percent: float | None = None  # of the container's CPU limit (of one CPU without a limit)
    memory_max_percent: float | None = None  # of the container's memory limit (none: not checked)
    error_pattern: str | None = None  # a regular expression over the container's log lines
    max_error_lines_increase: float = 0.0  # error lines per minute, the new version's over the old one's
    duration: float | None = None  # after promote-canary / blue-green (None: promote 0, blue_green.watch)
    interval: float = 5.0  # how often the watch after a change runs its checks

    @property
    def enabled(self) -> bool:
        """Whether any check is configured."""
        return any(v is not None for v in (self.cpu_max_percent, self.memory_max_percent,
                                           self.error_pattern))

    def terms(self) -> str:
        """The checks in one line (the plan's wording)."""
        parts = []
        if self.cpu_max_percent is not None:
            parts.append(f"CPU <= {self.cpu_max_percent:g} % of its limit")
        if self.memory_max_percent is not None:
            parts.append(f"memory <= {self.memory_max_percent:g} % of its limit")
        if self.error_pattern is not None:
            parts.append(f"log lines matching /{self.error_pattern}/ at most "
                         f"+{self.max_error_lines_increase:g}/min over the old version's")
        return ", ".join(parts)


@dataclass(frozen=True)
class Config:
    """The whole, validated ps.yaml."""

    app: str
    registry: str
    services: dict[str, Service]
    hosts: tuple[Host, ...] = (Host(name="local"),)
    timezone: str = DEFAULT_TIMEZONE
    router: NginxRouter | None = None
    canary: CanaryPolicy = field(default_factory=CanaryPolicy)
    notify: MattermostNotify = field(default_factory=MattermostNotify)
    deploy: DeployPolicy = field(default_factory=DeployPolicy)
    blue_green: BlueGreenPolicy = field(default_factory=BlueGreenPolicy)
    watch: WatchPolicy = field(default_factory=WatchPolicy)
    hooks: Hooks = field(default_factory=Hooks)
    state_dir: str = ""
    source: str = DEFAULT_CONFIG
    routers: tuple[NginxRouter, ...] = ()  # every router (issue 12); `router` is routers[0]
    routers_url: str | None = None  # the front balancer in front of all routers (the ALB)
    parallel_hosts: int = 4  # hosts worked on at once (pipeline_steps.parallel.each_host)

    def __post_init__(self) -> None:
        # the one-router form and the list name the same routers: either may be given
        if not self.routers and self.router is not None:
            object.__setattr__(self, "routers", (self.router,))
        elif self.routers and self.router is None:
            object.__setattr__(self, "router", self.routers[0])

    def router_host(self, router: NginxRouter) -> Host | None:
        """The Host whose engine runs router.container (None for an nginx on this machine)."""
        if not router.container:
            return None
        name = router.host or self.hosts[0].name
        return next((h for h in self.hosts if h.name == name), self.hosts[0])

    def router_hosts(self, router: NginxRouter) -> tuple[Host, ...]:
        """The hosts whose slots `router`'s upstreams list (router.hosts; every host when empty)."""
        if not router.hosts:
            return self.hosts
        return tuple(h for h in self.hosts if h.name in router.hosts)

    def for_router(self, router: NginxRouter) -> Config:
        """This config as one router sees it: routers=(router,) and only the hosts its include lists."""
        from dataclasses import replace

        return replace(self, router=router, routers=(router,), hosts=self.router_hosts(router))

    def service(self, name: str) -> Service:
        """The named service, or a BadInput listing the known ones."""
        from pipeline_steps.errors import BadInput

        if name not in self.services:
            known = ", ".join(sorted(self.services)) or "none"
            raise BadInput(f"unknown service {name!r} (configured: {known})")
        return self.services[name]

    def hosts_of(self, service: Service) -> tuple[Host, ...]:
        """The hosts `service` runs on (`hosts:` in ps.yaml; every host by default), in config order."""
        if not service.hosts:
            return self.hosts
        return tuple(h for h in self.hosts if h.name in service.hosts)

    def select(self, name: str | None) -> list[Service]:
        """One service by name, or all of them for None."""
        return [self.service(name)] if name else list(self.services.values())

    def image_repo(self, service: Service) -> str:
        """`<registry>/<app>/<service>` without a tag."""
        return f"{self.registry.rstrip('/')}/{self.app}/{service.name}"

    def image_ref(self, service: Service, build_id: str) -> str:
        return f"{self.image_repo(service)}:{build_id}"

    def warnings(self) -> list[str]:
        """One line per host whose engine is reached unprotected (printed once by the CLI at load)."""
        return [w for w in (h.warning() for h in self.hosts) if w]

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, secret-looking env values masked."""
        data = asdict(self)
        for svc in data["services"].values():
            svc["env"] = {k: (MASK if is_secret_name(k) else v) for k, v in svc["env"].items()}
            svc["env_from"] = list(svc["env_from"])
        data["hosts"] = list(data["hosts"])
        data["routers"] = [{**r, "hosts": list(r["hosts"])} for r in data["routers"]]
        if data["router"] is not None:
            data["router"]["hosts"] = list(data["router"]["hosts"])
        data["canary"]["steps"] = list(data["canary"]["steps"])
        data["canary"]["segments"] = [{**seg, "values": list(seg["values"])}
                                      for seg in data["canary"]["segments"]]
        webhook = self.notify.webhook_env
        data["notify"]["webhook"] = "set (masked)" if os.environ.get(webhook) else f"not set (${webhook})"
        return data
