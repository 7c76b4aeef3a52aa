"""Traffic through nginx: the apply path of set-weights and switch, and the split of `ps traffic status`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline_steps.config import Config, NginxRouter, Service
from pipeline_steps.errors import BadInput, Unreachable
from pipeline_steps.upstreams import (
    Upstream,
    UpstreamFile,
    active_color,
    default_upstream,
    initial_file,
    locate,
    slot_weights,
)


@dataclass
class ServiceTraffic:
    """One service's upstream before and after a change."""

    service: str
    upstream: str
    before: str | None
    after: str


@dataclass
class TrafficChange:
    """The outcome of set-weights or switch."""

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


def load_live(config: Config) -> UpstreamFile | None:
    """The include file, read through the Router (None when it does not exist yet); malformed: exit 2."""
    from pipeline_steps.adapters.nginx import router_for

    router = require_router(config)
    text = router_for(router).read_text()
    if text is None:
        return None
    return UpstreamFile.from_text(text, router.include)


def change_upstreams(config: Config, services: Sequence[Service], build: Callable[[Service], Upstream],
                     *, action: str, target: str, dry_run: bool = False) -> TrafficChange:
    """Rewrite the upstreams of `services` with `build` and apply safely (one reload)."""
    from pipeline_steps.adapters.nginx import router_for

    router = require_router(config)
    control = router_for(router)
    live = load_live(config)
    file = live if live is not None else initial_file(config, router.include)
    from pipeline_steps.analysis.include import put_judgement_log

    put_judgement_log(config, file)  # canary.analysis: log_format ps_json + access_log (issue 14)
    existing = file.upstreams()
    for service in config.services.values():
        if service.upstream not in existing and service.is_http:
            file.put(default_upstream(config, service))
    changes: list[ServiceTraffic] = []
    for service in services:
        before = describe(existing.get(service.upstream), service, config)
        upstream = build(service)
        file.put(upstream)
        changes.append(ServiceTraffic(service.name, service.upstream, before,
                                      describe(upstream, service, config) or ""))
    from pipeline_steps import sticky

    sticky.apply(config, file)  # issue 13: the sticky split follows the weights, in the same reload
    applied = control.apply(file.render(), dry_run=dry_run)
    return TrafficChange(action=action, target=target, include=str(router.include), changed=applied.changed,
                         created=applied.created, reloaded=applied.reloaded, dry_run=dry_run,
                         backup=applied.backup, seconds=applied.seconds, services=changes)


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
class TrafficStatus:
    include: str
    exists: bool
    services: list[ServiceStatus] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _build_ids(config: Config, warnings: list[str]) -> dict[tuple[str, str, str], str | None]:
    """BUILD_ID per (host, service, slot) from the slot containers' labels."""
    from pipeline_steps.adapters import slots as slot_names
    from pipeline_steps.adapters.docker_host import open_host

    found: dict[tuple[str, str, str], str | None] = {}
    for host in config.hosts:
        try:
            engine = open_host(host, timeout=10)
        except Unreachable as exc:
            warnings.append(exc.message)
            continue
        try:
            for c in engine.slot_containers(config.app):
                labels = c.labels
                key = (host.name, labels.get(slot_names.LABEL_SERVICE, ""),
                       labels.get(slot_names.LABEL_SLOT, ""))
                found[key] = labels.get(slot_names.LABEL_BUILD_ID)
        finally:
            engine.close()
    return found


def traffic_status(config: Config) -> TrafficStatus:
    """Per service: the split in percent, active color, backups and the BUILD_ID behind each server."""
    from pipeline_steps import sticky

    router = require_router(config)
    live = load_live(config)
    status = TrafficStatus(include=router.include, exists=live is not None)
    if live is None:
        status.warnings.append(missing_include(router))
        return status
    builds = _build_ids(config, status.warnings)
    upstreams = live.upstreams()
    for service in (s for s in config.services.values() if s.is_http):
        upstream = upstreams.get(service.upstream)
        if upstream is None:
            status.warnings.append(f"{service.name}: upstream {service.upstream} is not in the include file")
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
            status.warnings.append(f"{service.name}: ps.yaml asks for a sticky split that the include "
                                   "does not have yet (the next ps set-weights writes it)")
        status.services.append(ServiceStatus(
            service=service.name, upstream=service.upstream, kind=kind, split=split,
            active=active_color(upstream, service, config.hosts_of(service)) if kind == "blue-green"
            else None,
            backup=backups, servers=servers, mode=mode.mode, keys_percent=mode.keys_percent))
    return status
