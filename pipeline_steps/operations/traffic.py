"""Traffic through nginx: the apply path of set-weights and switch, and the split of `ps traffic status`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline_steps.config import Config, Host, NginxRouter, Service
from pipeline_steps.errors import BadInput, Unreachable
from pipeline_steps.upstreams import (
    Upstream,
    UpstreamFile,
    active_color,
    blue_green_upstream,
    canary_upstream,
    default_upstream,
    initial_file,
    locate,
    slot_weights,
)
from pipeline_steps.weights import Weights

Build = Callable[[Config, Service], Upstream]  # the new upstream of a service, for one router's view


@dataclass
class ServiceTraffic:
    """One service's upstream before and after a change."""

    service: str
    upstream: str
    before: str | None
    after: str


@dataclass
class RouterChange:
    """What one router of a change did (issue 12: a change goes to every router)."""

    router: str
    include: str
    hosts: list[str]
    changed: bool
    created: bool
    reloaded: bool
    backup: str | None


@dataclass
class TrafficChange:
    """The outcome of set-weights or switch (the top-level fields: router 1, or any router changed)."""

    action: str
    target: str
    include: str
    changed: bool
    created: bool
    reloaded: bool
    dry_run: bool
    backup: str | None
    seconds: float
    services: list[ServiceTraffic] = field(default_factory=list)
    routers: list[RouterChange] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def require_router(config: Config) -> NginxRouter:
    if config.router is None:
        raise BadInput(f"{config.source}: no router section (router.include, router.nginx...) configured")
    return config.router


def describe(upstream: Upstream | None, service: Service, config: Config) -> str | None:
    """`stable 900 : canary 100 (10.0 %)` or `blue active, green backup`."""
    if upstream is None:
        return None
    if service.pair("canary"):
        w = slot_weights(upstream, service, config.hosts_of(service))
        total = sum(w.values())
        pct = 100.0 * w.get("canary", 0) / total if total else 0.0
        hosts = max(1, len(config.hosts_of(service)))
        return (f"stable {w.get('stable', 0) // hosts} : canary {w.get('canary', 0) // hosts} "
                f"({pct:.1f} %)")
    active = active_color(upstream, service, config.hosts_of(service))
    if active is None:
        return "no clear active color"
    other = "green" if active == "blue" else "blue"
    return f"{active} active, {other} backup"


def missing_include(router: NginxRouter) -> str:
    """The line for an include file that does not exist yet."""
    return f"nginx include file {router.include} does not exist: `ps router init` writes it"


def read_live(config: Config, router: NginxRouter) -> UpstreamFile | None:
    """One router's include, read through its Router (None when it does not exist yet); malformed: exit 2."""
    from pipeline_steps.adapters.nginx import router_for

    control = router_for(router, config.router_host(router))
    try:
        text = control.read_text()
    finally:
        control.close()
    if text is None:
        return None
    return UpstreamFile.from_text(text, router.include)


def load_all(config: Config) -> list[tuple[NginxRouter, UpstreamFile | None]]:
    """Every router's live include, router 1 first."""
    require_router(config)
    return [(r, read_live(config, r)) for r in config.routers]


def differences(config: Config, lives: Sequence[tuple[NginxRouter, UpstreamFile | None]]) -> list[str]:
    """One line per router whose live split differs from router 1's (the live files are the truth)."""
    if len(lives) < 2:
        return []
    first, first_file = lives[0]
    lines: list[str] = []
    for router, file in lives[1:]:
        if (first_file is None) != (file is None):
            missing = router.name if file is None else first.name
            lines.append(f"{router.name}: differs from {first.name} ({missing} has no include file yet)")
            continue
        if first_file is None or file is None:
            continue
        for service in (s for s in config.services.values() if s.is_http):
            ref = describe(first_file.get(service.upstream), service, config.for_router(first))
            mine = describe(file.get(service.upstream), service, config.for_router(router))
            if ref != mine:
                lines.append(f"{router.name}: {service.name} is {mine or 'missing'} while {first.name} says "
                             f"{ref or 'missing'} (ps uses {first.name}'s; the next change rewrites "
                             f"{router.name})")
    return lines


def load_live(config: Config, warn: Callable[[str], None] | None = None) -> UpstreamFile | None:
    """The live include: router 1's (None when it does not exist yet); malformed: exit 2. With many
    routers every one is read and `warn` is told of each router that differs from router 1."""
    lives = load_all(config)
    if warn is not None:
        for line in differences(config, lives):
            warn(line)
    return lives[0][1]


def _like(reference: Upstream, service: Service, ref: Config, mine: Config) -> Upstream | None:
    """`service`'s upstream for router view `mine` in the state `reference` has in view `ref`."""
    keepalive = mine.router.keepalive if mine.router else 32
    if service.pair("canary"):
        hosts = max(1, len(ref.hosts_of(service)))
        w = slot_weights(reference, service, ref.hosts_of(service))
        stable, canary = w.get("stable", 0) // hosts, w.get("canary", 0) // hosts
        if not stable and not canary:
            return None
        weights = Weights(stable=stable, canary=canary, scale=stable + canary,
                          min_weight=ref.canary.min_weight)
        return canary_upstream(service, mine.hosts_of(service), weights, keepalive)
    if service.pair("blue-green"):
        active = active_color(reference, service, ref.hosts_of(service))
        return blue_green_upstream(service, mine.hosts_of(service), active or "blue", keepalive)
    return None


def _render(config: Config, router: NginxRouter, live: UpstreamFile | None, services: Sequence[Service],
            build: Build, reference: UpstreamFile | None, ref_config: Config | None,
            warnings: list[str]) -> tuple[str, list[ServiceTraffic]]:
    """One router's new include: its live file with `services` rebuilt for its own hosts; a service
    that differs from router 1 (`reference`) is brought back to router 1's state."""
    view = config.for_router(router)
    file = live if live is not None else initial_file(view, router.include)
    from pipeline_steps.analysis.include import put_judgement_log

    put_judgement_log(view, file)  # canary.analysis: log_format ps_json + access_log (issue 14)
    existing = file.upstreams()
    for service in view.services.values():
        if service.upstream not in existing and service.is_http:
            file.put(default_upstream(view, service))
    if reference is not None and ref_config is not None:
        changing = {s.name for s in services}
        for service in (s for s in view.services.values() if s.is_http and s.name not in changing):
            ref_up = reference.get(service.upstream)
            if ref_up is None:
                continue
            mine = describe(file.get(service.upstream), service, view)
            if mine != describe(ref_up, service, ref_config):
                like = _like(ref_up, service, ref_config, view)
                if like is not None:
                    file.put(like)
                    warnings.append(f"{router.name}: {service.name} was {mine or 'missing'}, rewritten to "
                                    f"{describe(like, service, view)} as on {ref_config.routers[0].name}")
    changes: list[ServiceTraffic] = []
    for service in services:
        before = describe(existing.get(service.upstream), service, view)
        upstream = build(view, service)
        file.put(upstream)
        changes.append(ServiceTraffic(service.name, service.upstream, before,
                                      describe(upstream, service, view) or ""))
    from pipeline_steps import sticky

    sticky.apply(view, file)  # issue 13: the sticky split follows the weights, in the same reload
    return file.render(), changes


def change_upstreams(config: Config, services: Sequence[Service], build: Build,
                     *, action: str, target: str, dry_run: bool = False) -> TrafficChange:
    """Rewrite the upstreams of `services` with `build` on every router and apply safely (one reload
    each): with many routers all are written and tested, then all reloaded, then all verified, and any
    failure puts every router back (adapters.nginx.group.RouterGroup)."""
    from pipeline_steps.adapters.nginx import router_for

    require_router(config)
    lives = load_all(config)
    warnings = differences(config, lives)
    first, first_live = lives[0]
    reference = first_live if len(lives) > 1 else None
    texts: dict[str, str] = {}
    per_router: dict[str, list[ServiceTraffic]] = {}
    for router, live in lives:
        ref = reference if router is not first else None
        texts[router.name], per_router[router.name] = _render(
            config, router, live, services, build, ref, config.for_router(first), warnings)
    controls = [(r.name, router_for(r, config.router_host(r))) for r, _ in lives]
    if len(controls) == 1:
        applied = {first.name: controls[0][1].apply(texts[first.name], dry_run=dry_run)}
        seconds = applied[first.name].seconds
    else:
        from pipeline_steps.adapters.nginx.group import RouterGroup

        done = RouterGroup(controls).apply(texts, dry_run=dry_run)  # type: ignore[arg-type]
        applied, seconds = done.results, done.seconds
    routers = [RouterChange(router=r.name, include=r.include, hosts=[h.name for h in config.router_hosts(r)],
                            changed=applied[r.name].changed, created=applied[r.name].created,
                            reloaded=applied[r.name].reloaded, backup=applied[r.name].backup)
               for r, _ in lives]
    top = applied[first.name]
    return TrafficChange(action=action, target=target, include=str(first.include),
                         changed=any(r.changed for r in routers), created=top.created,
                         reloaded=any(r.reloaded for r in routers), dry_run=dry_run,
                         backup=top.backup, seconds=seconds, services=per_router[first.name],
                         routers=routers, warnings=warnings)


def pair_services(config: Config, kind: str, names: Sequence[str] | None) -> list[Service]:
    """The services with a full `kind` pair ("canary" or "blue-green"); named ones must have it."""
    if names:
        chosen = [config.service(n) for n in names]
        for s in chosen:
            if not s.pair(kind):
                slots = ", ".join(s.slots)
                raise BadInput(f"service {s.name} has no {kind} slot pair (slots: {slots})")
        return chosen
    chosen = [s for s in config.services.values() if s.pair(kind)]
    if not chosen:
        raise BadInput(f"no configured service has a {kind} slot pair")
    return chosen


def change_lines(change: TrafficChange) -> list[str]:
    """The human lines of a set-weights or switch outcome: per service before -> after, then what was done."""
    lines: list[str] = []
    for s in change.services:
        if s.before == s.after and not change.created:
            lines.append(f"{s.service}: already {s.after} (upstream {s.upstream})")
        else:
            lines.append(f"{s.service}: {s.before or 'new'} -> {s.after} (upstream {s.upstream})")
    if change.dry_run and change.created:
        lines.append(f"dry run: would create {change.include} (nothing written)")
    elif change.dry_run and change.changed:
        lines.append(f"dry run: would change {change.include} and reload nginx (nothing written)")
    elif change.dry_run:
        lines.append(f"dry run: {change.include} already says so, nothing to change")
    elif not change.changed:
        lines.append(f"no change: {change.include} already says so, nginx not reloaded")
    else:
        lines.append(f"nginx reloaded with {change.include} ({change.seconds * 1000:.0f} ms; "
                     f"backup {change.backup or 'none, first write'})")
    if len(change.routers) > 1:
        for r in change.routers:
            done = ("would change" if change.dry_run and r.changed else "reloaded" if r.reloaded
                    else "already says so")
            lines.append(f"  {r.router} ({', '.join(r.hosts)}): {done} {r.include}"
                         + (f" (backup {r.backup})" if r.reloaded and r.backup else ""))
    return lines


# ---------------------------------------------------------------- traffic status


@dataclass
class ServerStatus:
    host: str | None
    slot: str | None
    address: str
    weight: int
    backup: bool
    down: bool
    build_id: str | None


@dataclass
class ServiceStatus:
    service: str
    upstream: str
    kind: str
    split: dict[str, float]
    active: str | None
    backup: list[str]
    servers: list[ServerStatus]
    mode: str = "per request"  # issue 13: or `sticky by cookie ps_uid[; segments: ...]`
    keys_percent: float | None = None  # the canary's share of keys in the live sticky split


@dataclass
class RouterTraffic:
    """One router's section of `ps traffic status`."""

    router: str
    include: str
    url: str | None
    hosts: list[str]
    exists: bool
    services: list[ServiceStatus] = field(default_factory=list)


@dataclass
class TrafficStatus:
    include: str
    exists: bool
    services: list[ServiceStatus] = field(default_factory=list)  # router 1's
    warnings: list[str] = field(default_factory=list)
    routers: list[RouterTraffic] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # routers whose split differs from router 1's


def _build_ids(config: Config, warnings: list[str]) -> dict[tuple[str, str, str], str | None]:
    """BUILD_ID per (host, service, slot) from the slot containers' labels."""
    from pipeline_steps.adapters import slots as slot_names
    from pipeline_steps.adapters.docker_host import open_host
    from pipeline_steps.parallel import each_host

    def labels_of(host: Host) -> list[Mapping[str, str]] | str:
        try:
            engine = open_host(host, timeout=10)
        except Unreachable as exc:
            return exc.message
        try:
            return [c.labels for c in engine.slot_containers(config.app)]
        finally:
            engine.close()

    found: dict[tuple[str, str, str], str | None] = {}
    for host, listed in zip(config.hosts, each_host(config.hosts, labels_of, config.parallel_hosts),
                            strict=True):
        if isinstance(listed, str):  # unreachable: a warning, the other hosts still count
            warnings.append(listed)
            continue
        for labels in listed:
            key = (host.name, labels.get(slot_names.LABEL_SERVICE, ""), labels.get(slot_names.LABEL_SLOT, ""))
            found[key] = labels.get(slot_names.LABEL_BUILD_ID)
    return found


def traffic_status(config: Config) -> TrafficStatus:
    """Per service: the split in percent, active color, backups and the BUILD_ID behind each server;
    with many routers a section per router (`routers`; the top level is router 1's) and a warning per
    router whose split differs from router 1's."""
    router = require_router(config)
    lives = load_all(config)
    live = lives[0][1]
    status = TrafficStatus(include=router.include, exists=live is not None)
    status.differences = differences(config, lives)
    status.warnings.extend(status.differences)
    builds = _build_ids(config, status.warnings) if any(f is not None for _, f in lives) else {}
    for r, file in lives:
        section = RouterTraffic(router=r.name, include=r.include, url=r.url,
                                hosts=[h.name for h in config.router_hosts(r)], exists=file is not None)
        if file is None:
            line = missing_include(r)
            status.warnings.append(line if len(lives) == 1 else f"{r.name}: {line}")
        else:
            prefix = f"{r.name}: " if len(lives) > 1 else ""
            section.services = _services_status(config.for_router(r), file, builds, status.warnings, prefix)
        status.routers.append(section)
    status.services = status.routers[0].services
    return status


def _services_status(config: Config, live: UpstreamFile, builds: dict[tuple[str, str, str], str | None],
                     warnings: list[str], prefix: str) -> list[ServiceStatus]:
    """The services' split in one router's include (`config`: that router's view)."""
    from pipeline_steps import sticky

    upstreams = live.upstreams()
    found: list[ServiceStatus] = []
    for service in (s for s in config.services.values() if s.is_http):
        upstream = upstreams.get(service.upstream)
        if upstream is None:
            warnings.append(f"{prefix}{service.name}: upstream {service.upstream} is not in the include file")
            continue
        weights = slot_weights(upstream, service, config.hosts_of(service))
        total = sum(weights.values())
        split = {slot: round(100.0 * w / total, 2) for slot, w in weights.items()} if total else {}
        servers: list[ServerStatus] = []
        for line in upstream.servers:
            where = locate(service, config.hosts_of(service), line)
            host, slot = (where[0].name, where[1]) if where else (None, None)
            servers.append(ServerStatus(host, slot, line.address, line.effective_weight, line.backup,
                                        line.down, builds.get((host or "", service.name, slot or ""))))
        kind = "canary" if service.pair("canary") else "blue-green"
        backups = sorted({s.slot or s.address for s in servers if s.backup})
        mode = sticky.live_mode(config, service, live)
        if mode.sticky and mode.keys_percent is None:
            warnings.append(f"{prefix}{service.name}: ps.yaml asks for a sticky split that the include "
                            "does not have yet (the next ps set-weights writes it)")
        found.append(ServiceStatus(
            service=service.name, upstream=service.upstream, kind=kind, split=split,
            active=active_color(upstream, service, config.hosts_of(service)) if kind == "blue-green"
            else None,
            backup=backups, servers=servers, mode=mode.mode, keys_percent=mode.keys_percent))
    return found
