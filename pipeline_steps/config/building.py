"""Building the Config from a validated ps.yaml (models.py): absolute paths, default names, and the
problems only the whole file shows (pairs of slots, ports shared between services, requires cycles,
hooks naming unknown services or hosts); split from models.py to keep both readable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_steps.config.models import (
    _CANARY,
    CanaryFile,
    HealthFile,
    HostFile,
    Loc,
    Problem,
    PsFile,
    RouterFile,
    ServiceFile,
)
from pipeline_steps.config.objects import (
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
    WatchPolicy,
)
from pipeline_steps.config.run_models import HooksFile
from pipeline_steps.config.run_spec import Hooks, Require

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
            requires=tuple(Require(r.name, False, r.tcp, r.url) for r in s.requires),
            hosts=tuple(s.hosts or ()))

    def hosts(self, items: list[HostFile]) -> tuple[Host, ...]:
        hosts: list[Host] = []
        for i, h in enumerate(items):
            name = h.name or f"host{i + 1}"
            if name in {known.name for known in hosts}:
                self.problem(("hosts", i, "name"), f"duplicate host name {name!r}")
            tls = self.tls(h, ("hosts", i, "tls")) if h.tls is not None else None
            hosts.append(Host(name=name, docker=h.docker, address=h.address, tls=tls))
        return tuple(hosts)

    def service_hosts(self, services: dict[str, Service], hosts: tuple[Host, ...]) -> None:
        known = [h.name for h in hosts]
        for svc in services.values():
            for i, name in enumerate(svc.hosts):
                if name not in known:
                    self.problem(("services", svc.name, "hosts", i),
                                 f"unknown host {name!r} (configured: {', '.join(known)})")

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

    def router(self, r: RouterFile | None, loc: Loc = ("router",), *, name: str = "router1",
               hosts: tuple[Host, ...] = (), listed: bool = False) -> NginxRouter | None:
        """One router; `listed`: an entry of `routers:` (its hosts default to [host] with a container)."""
        if r is None:
            return None
        include = self.path(r.include, (*loc, "include"))  # written by ps on this machine, in every mode
        if _kind(include) == "directory":
            self.problem((*loc, "include"), f"must be a file path, not a directory: {include}")

        def nginx_path(key: str) -> str | None:
            # with router.container, nginx's own paths are as the container sees them: left as written
            value = getattr(r.nginx, key)
            if value is None or r.container:
                return value
            return self.path(value, (*loc, "nginx", key))

        known = [h.name for h in hosts]
        host = None
        if r.host is not None and not r.container:
            self.problem((*loc, "host"), "is only for a router with container (a host-process nginx runs "
                                         "on the machine ps runs on)")
        elif r.host is not None and known and r.host not in known:
            self.problem((*loc, "host"), f"unknown host {r.host!r} (configured: {', '.join(known)})")
        elif r.container and known:
            host = r.host or known[0]
        for i, h in enumerate(r.hosts or ()):
            if known and h not in known:
                self.problem((*loc, "hosts", i), f"unknown host {h!r} (configured: {', '.join(known)})")
        # resolved in routers: (never empty); the one `router:` keeps () for "every host" (router_hosts)
        served = tuple(r.hosts) if r.hosts else ((host,) if host else tuple(known)) if listed else ()
        error_log = r.nginx.error_log
        return NginxRouter(
            include=include, binary=r.nginx.binary, prefix=nginx_path("prefix"), conf=nginx_path("conf"),
            error_log=self.path(error_log, (*loc, "nginx", "error_log")) if error_log else None,
            pid=nginx_path("pid"), container=r.container, url=r.url, backups=r.backups, keepalive=r.keepalive,
            access_log=self.path(r.access_log, (*loc, "access_log")) if r.access_log else None,
            name=r.name or name, host=host, hosts=served)

    def routers(self, file: PsFile, hosts: tuple[Host, ...]) -> tuple[NginxRouter, ...]:
        """`routers:` (or the one `router:`), names unique; both at once is a problem."""
        if file.router is not None and file.routers is not None:
            self.problem(("routers",), "router and routers both given: use routers (a list) or router "
                                       "(one), not both")
        if file.routers is None:
            one = self.router(file.router, hosts=hosts)
            return (one,) if one is not None else ()
        built: list[NginxRouter] = []
        for i, r in enumerate(file.routers):
            made = self.router(r, ("routers", i), name=f"router{i + 1}", hosts=hosts, listed=True)
            assert made is not None
            if made.name in {b.name for b in built}:
                self.problem(("routers", i, "name"), f"duplicate router name {made.name!r}")
            if any(b.include == made.include and not (b.container and made.container and b.host != made.host)
                   for b in built):
                self.problem(("routers", i, "include"), f"include {made.include} is also another "
                                                        "router's: each router needs its own file")
            built.append(made)
        return tuple(built)

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
    b.service_hosts(services, hosts)
    b.shared_ports_and_upstreams(services, hosts)
    services = b.requires(services)
    n = file.notify.mattermost
    d = file.deploy
    config = Config(
        app=file.app, registry=file.registry, services=services, hosts=hosts, timezone=file.timezone,
        routers=b.routers(file, hosts), routers_url=file.routers_url, canary=b.canary(file.canary),
        notify=MattermostNotify(webhook_env=n.webhook_env, channel=n.channel, username=n.username,
                                icon_url=n.icon_url, timeout=n.timeout),
        deploy=DeployPolicy(keep_images=d.keep_images, blue_green_keep=d.blue_green_keep,
                            lock_wait=d.lock_wait),
        blue_green=BlueGreenPolicy(watch=file.blue_green.watch), watch=watch_policy(file.watch),
        hooks=b.hooks(file.hooks, services, hosts),
        state_dir=b.state_dir(file.state_dir, file.app), source=source,
        parallel_hosts=file.parallel_hosts)
    return config, b.problems



def watch_policy(w: Any) -> WatchPolicy:
    """The `watch:` section (config/canary_models.WatchFile) as its frozen object."""
    return WatchPolicy(cpu_max_percent=w.cpu_max_percent, memory_max_percent=w.memory_max_percent,
                       error_pattern=w.error_pattern, max_error_lines_increase=w.max_error_lines_increase,
                       duration=w.duration, interval=w.interval)
