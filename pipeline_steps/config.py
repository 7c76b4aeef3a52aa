"""ps.yaml: configuration objects, loading and validation.

Validation collects every problem with its path (`services.backend.health.path: must start with "/"`)
and raises one ConfigError (exit 2).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline_steps.durations import parse_duration
from pipeline_steps.errors import ConfigError

SLOT_PAIRS: dict[str, tuple[str, str]] = {
    "canary": ("stable", "canary"),
    "blue-green": ("blue", "green"),
}
SLOT_NAMES = ("stable", "canary", "blue", "green")
DEFAULT_CONFIG = "ps.yaml"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_HINT = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)


@dataclass(frozen=True)
class Host:
    """A Docker endpoint and the address nginx reaches its published ports at."""

    name: str
    docker: str | None = None  # None: the local engine (DOCKER_HOST or the default socket)
    address: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        """The Docker endpoint as a user would recognise it."""
        import os

        return self.docker or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


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

    def pair(self, kind: str) -> tuple[str, str] | None:
        """The slot pair of `kind` ("canary" or "blue-green") if this service has both slots."""
        pair = SLOT_PAIRS[kind]
        return pair if all(s in self.slots for s in pair) else None


@dataclass(frozen=True)
class NginxRouter:
    """The nginx that splits traffic, and how to test and reload it."""

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


@dataclass(frozen=True)
class CanaryStep:
    """One step of canary-auto: a weight and how long to hold it."""

    weight: int
    pause: float | None = None
    checks: int | None = None


@dataclass(frozen=True)
class CanaryPolicy:
    steps: tuple[CanaryStep, ...] = (CanaryStep(10), CanaryStep(40), CanaryStep(70))
    pause: float = 30.0
    check_interval: float = 2.0
    tolerance: int = 2
    scale: int = 1000
    min_weight: int = 1
    probe: int = 0  # requests sent through nginx at each step to measure the live split (0: off)


@dataclass(frozen=True)
class MattermostNotify:
    webhook_env: str = "MATTERMOST_WEBHOOK_URL"
    channel: str | None = None
    username: str | None = "pipeline-steps"
    icon_url: str | None = None
    timeout: float = 5.0


@dataclass(frozen=True)
class DeployPolicy:
    keep_images: int = 5
    blue_green_keep: float | None = None  # None: keep the old color running as backup
    lock_wait: float = 0.0


@dataclass(frozen=True)
class BlueGreenPolicy:
    watch: float = 30.0  # after the switch the new color is watched like a canary hold (0: off)


@dataclass(frozen=True)
class Config:
    """The whole, validated ps.yaml."""

    app: str
    registry: str
    services: dict[str, Service]
    hosts: tuple[Host, ...] = (Host(name="local"),)
    timezone: str = "Asia/Seoul"
    router: NginxRouter | None = None
    canary: CanaryPolicy = field(default_factory=CanaryPolicy)
    notify: MattermostNotify = field(default_factory=MattermostNotify)
    deploy: DeployPolicy = field(default_factory=DeployPolicy)
    blue_green: BlueGreenPolicy = field(default_factory=BlueGreenPolicy)
    state_dir: str = ""
    source: str = DEFAULT_CONFIG

    def service(self, name: str) -> Service:
        """The named service, or a BadInput listing the known ones."""
        from pipeline_steps.errors import BadInput

        if name not in self.services:
            known = ", ".join(sorted(self.services)) or "none"
            raise BadInput(f"unknown service {name!r} (configured: {known})")
        return self.services[name]

    def select(self, name: str | None) -> list[Service]:
        """One service by name, or all of them for None."""
        return [self.service(name)] if name else list(self.services.values())

    def image_repo(self, service: Service) -> str:
        """`<registry>/<app>/<service>` without a tag."""
        return f"{self.registry.rstrip('/')}/{self.app}/{service.name}"

    def image_ref(self, service: Service, build_id: str) -> str:
        return f"{self.image_repo(service)}:{build_id}"

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, secret-looking env values masked."""
        data = asdict(self)
        for svc in data["services"].values():
            svc["env"] = {k: ("****" if _SECRET_HINT.search(k) else v) for k, v in svc["env"].items()}
            svc["env_from"] = list(svc["env_from"])
        data["hosts"] = list(data["hosts"])
        data["canary"]["steps"] = list(data["canary"]["steps"])
        webhook = self.notify.webhook_env
        data["notify"]["webhook"] = "set (masked)" if os.environ.get(webhook) else f"not set (${webhook})"
        return data


class _Reader:
    """Walks raw YAML data, converting values and collecting problems with their paths."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, data: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.problem(path, "must be a mapping")
            return {}
        for key in data:
            if key not in allowed:
                hint = f" (known: {', '.join(sorted(allowed))})"
                self.problem(f"{path}.{key}" if path else str(key), f"unknown key{hint}")
        return data

    def string(self, data: dict[str, Any], key: str, path: str, default: str | None = None,
               required: bool = False) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                self.problem(_join(path, key), "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problem(_join(path, key), "must be a string")
            return default
        return str(value)

    def integer(self, data: dict[str, Any], key: str, path: str, default: int | None,
                low: int | None = None, high: int | None = None) -> int | None:
        value = data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(_join(path, key), "must be a whole number")
            return default
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f">= {low}"
            self.problem(_join(path, key), f"must be {span}")
            return default
        return value

    def duration(self, data: dict[str, Any], key: str, path: str, default: float | None) -> float | None:
        value = data.get(key)
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.problem(_join(path, key), str(exc))
            return default

    def string_map(self, data: dict[str, Any], key: str, path: str) -> dict[str, str]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(_join(path, key), "must be a mapping of names to values")
            return {}
        out: dict[str, str] = {}
        for k, v in value.items():
            if isinstance(v, dict | list) or v is None:
                self.problem(f"{_join(path, key)}.{k}", "must be a plain value")
                continue
            out[str(k)] = str(v).lower() if isinstance(v, bool) else str(v)
        return out


def _resolve(r: _Reader, base: Path, value: str, path: str) -> str:
    """`value` as an absolute path relative to the config file; a problem if it cannot be one."""
    try:
        return str((base / value).resolve())
    except (ValueError, OSError) as exc:
        r.problem(path, f"not a usable path: {exc}")
        return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _read_hosts(r: _Reader, raw: Any) -> tuple[Host, ...]:
    if raw is None:
        return (Host(name="local"),)
    if not isinstance(raw, list) or not raw:
        r.problem("hosts", "must be a non-empty list")
        return (Host(name="local"),)
    hosts: list[Host] = []
    for i, item in enumerate(raw):
        path = f"hosts[{i}]"
        data = r.mapping(item, path, {"name", "docker", "address"})
        docker = r.string(data, "docker", path, None)
        if docker is not None and not docker.startswith(("unix://", "tcp://", "ssh://")):
            r.problem(f"{path}.docker", "must start with unix://, tcp:// or ssh://")
        address = r.string(data, "address", path, "127.0.0.1") or "127.0.0.1"
        name = r.string(data, "name", path, f"host{i + 1}") or f"host{i + 1}"
        if name in {h.name for h in hosts}:
            r.problem(f"{path}.name", f"duplicate host name {name!r}")
        hosts.append(Host(name=name, docker=docker, address=address))
    return tuple(hosts)


def _read_health(r: _Reader, raw: Any, path: str) -> HealthSpec:
    data = r.mapping(raw, path, {"path", "expect_status", "expect", "retries", "timeout", "interval",
                                 "max_latency", "successes", "start_period", "logs_fallback"})
    hpath = r.string(data, "path", path, "/health") or "/health"
    if not hpath.startswith("/"):
        r.problem(f"{path}.path", 'must start with "/"')
    logs = r.string(data, "logs_fallback", path)
    if logs is not None:
        try:
            re.compile(logs)
        except re.error as exc:
            r.problem(f"{path}.logs_fallback", f"not a valid regular expression: {exc}")
    return HealthSpec(
        path=hpath,
        expect_status=r.integer(data, "expect_status", path, None, 100, 599),
        expect=r.string_map(data, "expect", path),
        retries=r.integer(data, "retries", path, 30, 1) or 30,
        timeout=r.duration(data, "timeout", path, 5.0) or 5.0,
        interval=r.duration(data, "interval", path, 2.0) or 0.0,
        max_latency=r.duration(data, "max_latency", path, None),
        successes=r.integer(data, "successes", path, 1, 1) or 1,
        start_period=r.duration(data, "start_period", path, 0.0) or 0.0,
        logs_fallback=logs,
    )


def _read_service(r: _Reader, name: str, raw: Any, base: Path, app: str) -> Service:
    path = f"services.{name}"
    if not _NAME.match(name):
        r.problem(path, "service names use lower-case letters, digits, '.', '_' and '-'")
    data = r.mapping(raw, path, {"context", "dockerfile", "port", "slots", "env", "env_from", "health",
                                 "upstream", "url"})
    context = r.string(data, "context", path, ".") or "."
    context_path = _resolve(r, base, context, f"{path}.context")
    port = r.integer(data, "port", path, 80, 1, 65535) or 80
    slots_raw = r.mapping(data.get("slots"), f"{path}.slots", set(SLOT_NAMES))
    slots: dict[str, int] = {}
    for slot in SLOT_NAMES:
        if slot in slots_raw:
            value = r.integer(slots_raw, slot, f"{path}.slots", None, 1, 65535)
            if value is not None:
                slots[slot] = value
    if not slots_raw:
        r.problem(f"{path}.slots", "is required: a host port per slot (stable/canary or blue/green)")
    elif slots and not any(all(s in slots for s in pair) for pair in SLOT_PAIRS.values()):
        r.problem(f"{path}.slots", "needs a full pair: stable and canary, or blue and green")
    if len(set(slots.values())) != len(slots):
        r.problem(f"{path}.slots", "each slot needs its own host port")
    env_from_raw = data.get("env_from") or []
    env_from: list[str] = []
    if not isinstance(env_from_raw, list):
        r.problem(f"{path}.env_from", "must be a list of environment variable names")
    else:
        for i, item in enumerate(env_from_raw):
            if not isinstance(item, str) or not _ENV_NAME.match(item):
                r.problem(f"{path}.env_from[{i}]", "must be an environment variable name")
            else:
                env_from.append(item)
    env = r.string_map(data, "env", path)
    for key in env:
        if not _ENV_NAME.match(key):
            r.problem(f"{path}.env.{key}", "must be an environment variable name")
    upstream = r.string(data, "upstream", path, f"{app}_{name}".replace("-", "_").replace(".", "_"))
    return Service(
        name=name,
        context=context_path,
        dockerfile=r.string(data, "dockerfile", path, "Dockerfile") or "Dockerfile",
        port=port,
        slots=slots,
        env=env,
        env_from=tuple(env_from),
        health=_read_health(r, data.get("health"), f"{path}.health"),
        upstream=upstream or name,
        url=r.string(data, "url", path),
    )


def _read_router(r: _Reader, raw: Any, base: Path) -> NginxRouter | None:
    if raw is None:
        return None
    data = r.mapping(raw, "router", {"include", "nginx", "container", "backups", "keepalive", "url"})
    include = r.string(data, "include", "router", required=True) or ""
    nginx = r.mapping(data.get("nginx"), "router.nginx", {"binary", "prefix", "conf", "error_log", "pid"})

    def local_path(value: str | None, key: str = "include") -> str | None:
        return _resolve(r, base, value, f"router.{key}") if value else None

    container = r.string(data, "container", "router")

    def nginx_path(key: str) -> str | None:
        # with router.container, nginx's own paths are as the container sees them: left as written
        value = r.string(nginx, key, "router.nginx")
        return value if container else local_path(value, f"nginx.{key}")

    return NginxRouter(
        include=local_path(include) or include,  # written by ps on this machine, in every mode
        binary=r.string(nginx, "binary", "router.nginx", "nginx") or "nginx",
        prefix=nginx_path("prefix"),
        conf=nginx_path("conf"),
        error_log=local_path(r.string(nginx, "error_log", "router.nginx"), "nginx.error_log"),
        pid=nginx_path("pid"),
        container=container,
        url=r.string(data, "url", "router"),
        backups=r.integer(data, "backups", "router", 10, 1) or 10,
        keepalive=r.integer(data, "keepalive", "router", 32, 0) or 0,
    )


def _read_canary(r: _Reader, raw: Any) -> CanaryPolicy:
    data = r.mapping(raw, "canary", {"steps", "pause", "check_interval", "tolerance", "scale",
                                     "min_weight", "probe"})
    steps: list[CanaryStep] = []
    steps_raw = data.get("steps", [10, 40, 70])
    if not isinstance(steps_raw, list) or not steps_raw:
        r.problem("canary.steps", "must be a non-empty list of weights in percent")
        steps_raw = []
    for i, item in enumerate(steps_raw):
        path = f"canary.steps[{i}]"
        if isinstance(item, dict):
            sd = r.mapping(item, path, {"weight", "pause", "checks"})
            weight = r.integer(sd, "weight", path, None, 0, 100)
            if weight is None:
                if "weight" not in sd:
                    r.problem(f"{path}.weight", "is required")
                continue
            steps.append(CanaryStep(weight, r.duration(sd, "pause", path, None),
                                    r.integer(sd, "checks", path, None, 1)))
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 100:
            steps.append(CanaryStep(item))
        else:
            r.problem(path, "must be a weight from 0 to 100 or a mapping with weight/pause/checks")
    if any(b.weight <= a.weight for a, b in zip(steps, steps[1:], strict=False)):
        r.problem("canary.steps", "weights must increase from step to step")
    scale = r.integer(data, "scale", "canary", 1000, 2) or 1000
    min_weight = r.integer(data, "min_weight", "canary", 1, 0) or 0
    if min_weight * 2 >= scale:
        r.problem("canary.min_weight", "must be less than half of canary.scale")
    return CanaryPolicy(
        steps=tuple(steps) or CanaryPolicy().steps,
        pause=r.duration(data, "pause", "canary", 30.0) or 0.0,
        check_interval=r.duration(data, "check_interval", "canary", 2.0) or 2.0,
        tolerance=r.integer(data, "tolerance", "canary", 2, 1) or 2,
        scale=scale,
        min_weight=min_weight,
        probe=r.integer(data, "probe", "canary", 0, 0, 100000) or 0,
    )


def _read_notify(r: _Reader, raw: Any) -> MattermostNotify:
    data = r.mapping(raw, "notify", {"mattermost"})
    mm = r.mapping(data.get("mattermost"), "notify.mattermost",
                   {"webhook_env", "channel", "username", "icon_url", "timeout"})
    webhook_env = r.string(mm, "webhook_env", "notify.mattermost", "MATTERMOST_WEBHOOK_URL") or ""
    if not _ENV_NAME.match(webhook_env):
        r.problem("notify.mattermost.webhook_env", "must be an environment variable name")
    if "webhook_url" in mm or "url" in mm:
        r.problem("notify.mattermost", "the webhook URL is a secret: give it through an environment variable")
    return MattermostNotify(
        webhook_env=webhook_env,
        channel=r.string(mm, "channel", "notify.mattermost"),
        username=r.string(mm, "username", "notify.mattermost", "pipeline-steps"),
        icon_url=r.string(mm, "icon_url", "notify.mattermost"),
        timeout=r.duration(mm, "timeout", "notify.mattermost", 5.0) or 5.0,
    )


def _read_deploy(r: _Reader, raw: Any) -> DeployPolicy:
    data = r.mapping(raw, "deploy", {"keep_images", "blue_green_keep", "lock_wait"})
    keep = data.get("blue_green_keep")
    bg_keep: float | None = None
    if keep not in (None, "forever", "always"):
        bg_keep = r.duration(data, "blue_green_keep", "deploy", None)
    return DeployPolicy(
        keep_images=r.integer(data, "keep_images", "deploy", 5, 1) or 5,
        blue_green_keep=bg_keep,
        lock_wait=r.duration(data, "lock_wait", "deploy", 0.0) or 0.0,
    )


def _read_blue_green(r: _Reader, raw: Any) -> BlueGreenPolicy:
    data = r.mapping(raw, "blue_green", {"watch"})
    return BlueGreenPolicy(watch=r.duration(data, "watch", "blue_green", 30.0) or 0.0)


def parse_config(raw: Any, source: str = DEFAULT_CONFIG, base_dir: Path | None = None) -> Config:
    """Validate raw YAML data and build a Config; raise ConfigError listing every problem."""
    base = base_dir or Path.cwd()
    r = _Reader()
    if not isinstance(raw, dict):
        raise ConfigError(["top level: must be a mapping (app, registry, services, ...)"], source)
    data = r.mapping(raw, "", {"app", "registry", "timezone", "hosts", "services", "router", "canary",
                               "notify", "deploy", "blue_green", "state_dir"})
    app = r.string(data, "app", "", required=True) or "app"
    if "app" in data and not _NAME.match(app):
        r.problem("app", "use lower-case letters, digits, '.', '_' and '-'")
    registry = r.string(data, "registry", "", required=True) or ""
    if registry.startswith(("http://", "https://")):
        r.problem("registry", "give host[:port][/namespace] without http:// or https://")
    timezone = r.string(data, "timezone", "", "Asia/Seoul") or "Asia/Seoul"
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(timezone)
    except Exception:
        r.problem("timezone", f"unknown time zone {timezone!r}")
    services_raw = data.get("services")
    services: dict[str, Service] = {}
    if not isinstance(services_raw, dict) or not services_raw:
        r.problem("services", "is required: at least one service")
    else:
        for name, sraw in services_raw.items():
            services[str(name)] = _read_service(r, str(name), sraw, base, app)
    hosts = _read_hosts(r, data.get("hosts"))
    seen_ports: dict[tuple[str, int], str] = {}
    for svc in services.values():
        for slot, port in svc.slots.items():
            for host in hosts:
                key = (host.address, port)
                if key in seen_ports and seen_ports[key] != svc.name:
                    r.problem(f"services.{svc.name}.slots.{slot}",
                              f"port {port} is also used by service {seen_ports[key]}")
                seen_ports[key] = svc.name
    state_dir = r.string(data, "state_dir", "", None)
    state = _resolve(r, base, state_dir, "state_dir") if state_dir else str(
        Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "pipeline-steps" / app)
    config = Config(
        app=app,
        registry=registry,
        services=services,
        hosts=hosts,
        timezone=timezone,
        router=_read_router(r, data.get("router"), base),
        canary=_read_canary(r, data.get("canary")),
        notify=_read_notify(r, data.get("notify")),
        deploy=_read_deploy(r, data.get("deploy")),
        blue_green=_read_blue_green(r, data.get("blue_green")),
        state_dir=state,
        source=source,
    )
    if r.problems:
        raise ConfigError(r.problems, source)
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate ps.yaml (default: $PS_CONFIG or ./ps.yaml)."""
    import yaml

    file = Path(path or os.environ.get("PS_CONFIG") or DEFAULT_CONFIG)
    if not file.is_file():
        raise ConfigError([f"config file not found: {file} (use --config FILE or PS_CONFIG)"], str(file))
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{where}not valid YAML: {problem}"], str(file)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read: {exc}"], str(file)) from None
    return parse_config(raw, str(file), file.resolve().parent)
