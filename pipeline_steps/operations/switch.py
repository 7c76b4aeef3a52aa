"""`ps switch --to blue|green`: the active color carries the traffic, the other stays as backup."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline_steps.config import SLOT_PAIRS, Config, Service
from pipeline_steps.errors import BadInput
from pipeline_steps.operations.traffic import (
    TrafficChange,
    change_upstreams,
    pair_services,
    require_router,
)
from pipeline_steps.upstreams import Upstream, blue_green_upstream

COLORS = SLOT_PAIRS["blue-green"]


def switch(config: Config, color: str, services: Sequence[str] | None = None, *,
           dry_run: bool = False) -> TrafficChange:
    """Make `color` active for the chosen blue/green services (the other color becomes backup)."""
    if color not in COLORS:
        raise BadInput(f"unknown color {color!r} (use blue or green)")
    require_router(config)
    chosen = pair_services(config, "blue-green", services)

    def build(view: Config, service: Service) -> Upstream:  # view: one router's hosts
        assert view.router is not None
        return blue_green_upstream(service, view.hosts_of(service), color, view.router.keepalive)

    return change_upstreams(config, chosen, build, action="switch", target=color, dry_run=dry_run)
