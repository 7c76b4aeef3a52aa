"""`ps status`: per host and service, what runs in each slot, and hosts whose BUILD_IDs differ."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline_steps.adapters import slots as slot_names
from pipeline_steps.adapters.docker_host import open_host
from pipeline_steps.config import Config
from pipeline_steps.errors import Unreachable


@dataclass
class SlotState:
    """One slot of one service on one host."""

    host: str
    service: str
    slot: str
    container: str
    port: int
    state: str  # running | exited | ... | missing | foreign (the slot's name, not made by ps)
    health: str  # healthy | unhealthy | starting | none | -
    build_id: str | None = None
    uptime_seconds: float | None = None
    image: str | None = None


@dataclass
class RouterState:
    """One router's live split per service (`ps status`, issue 12)."""

    router: str
    include: str
    hosts: list[str]
    splits: dict[str, str] = field(default_factory=dict)  # service -> `stable 900 : canary 100 (10.0 %)`
    problem: str | None = None  # the include could not be read


@dataclass
class StatusResult:
    """Every slot on every host and every router, the BUILD_ID mismatches between hosts and weight
    mismatches between routers, and hosts that did not answer."""

    slots: list[SlotState] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    unreachable_hosts: list[str] = field(default_factory=list)
    routers: list[RouterState] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.unreachable


def _started(attrs: Mapping[str, Any]) -> float | None:
    """Seconds since the container started (None when it never did)."""
    from pipeline_steps.timestamps import parse_state_time

    started = parse_state_time((attrs.get("State") or {}).get("StartedAt"))
    if started is None:
        return None
    return max(0.0, time.time() - started / 1e9)


def slot_status(config: Config) -> StatusResult:
    """Inspect the slot containers on every host and flag differing BUILD_IDs per slot."""
    result = StatusResult()
    for host in config.hosts:
        try:
            engine = open_host(host, timeout=20)
        except Unreachable as exc:
            result.unreachable.append(exc.message)
            result.unreachable_hosts.append(exc.host or host.name)
            continue
        try:
            found = {c.name: c for c in engine.slot_containers(config.app)}
            others = engine.container_images()
        finally:
            engine.close()
        for service in (s for s in config.services.values() if host in config.hosts_of(s)):
            for slot, port in service.members().items():
                name = slot_names.container_name(config.app, service.name, slot)
                c = found.get(name)
                if c is None and name in others:  # the slot's name, but ps did not make it
                    result.slots.append(SlotState(host.name, service.name, slot, name, port, "foreign", "-",
                                                  image=others[name]))
                    continue
                if c is None:
                    result.slots.append(SlotState(host.name, service.name, slot, name, port, "missing", "-"))
                    continue
                state = c.attrs.get("State") or {}
                running = state.get("Status") == "running"
                result.slots.append(SlotState(
                    host=host.name, service=service.name, slot=slot, container=name, port=port,
                    state=str(state.get("Status") or c.status),
                    health=str((state.get("Health") or {}).get("Status") or "none"),
                    build_id=(c.labels or {}).get(slot_names.LABEL_BUILD_ID),
                    uptime_seconds=_started(c.attrs) if running else None,
                    image=(c.attrs.get("Config") or {}).get("Image")))
    for service in config.services.values():
        hosts = config.hosts_of(service)
        if len(hosts) < 2:
            continue
        reachable = len(hosts) - sum(1 for h in hosts if h.name in result.unreachable_hosts)
        for slot in service.members():
            states = [s for s in result.slots if s.service == service.name and s.slot == slot]
            deployed = {s.host: s.build_id for s in states if s.state not in ("missing", "foreign")}
            if not deployed:
                continue
            builds = set(deployed.values())
            if len(builds) > 1 or len(deployed) < reachable:
                per_host = ", ".join(f"{s.host}={s.build_id or '-'}" for s in states)
                result.mismatches.append(f"{service.name} {slot}: BUILD_ID differs between hosts "
                                         f"({per_host})")
    router_status(config, result)
    return result


def router_status(config: Config, result: StatusResult) -> None:
    """Every router's split per service into `result`; a service whose split differs between routers is
    a mismatch naming them."""
    from pipeline_steps.errors import PsError
    from pipeline_steps.operations.traffic import describe, read_live

    for router in config.routers:
        state = RouterState(router.name, router.include, [h.name for h in config.router_hosts(router)])
        try:
            live = read_live(config, router)
        except PsError as exc:
            state.problem = exc.message
            result.routers.append(state)
            continue
        view = config.for_router(router)
        for service in (s for s in config.services.values() if s.is_http):
            said = describe(live.get(service.upstream), service, view) if live is not None else None
            state.splits[service.name] = said or "-"
        result.routers.append(state)
    if len(result.routers) < 2:
        return
    for service in (s for s in config.services.values() if s.is_http):
        splits = {r.router: r.splits.get(service.name, "-") for r in result.routers if r.problem is None}
        if len(set(splits.values())) > 1:
            per_router = ", ".join(f"{name}={split}" for name, split in splits.items())
            result.mismatches.append(f"{service.name}: weights differ between routers ({per_router})")
