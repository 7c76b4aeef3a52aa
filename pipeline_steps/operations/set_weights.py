"""`ps set-weights --canary PCT`: the stable/canary split of nginx upstreams (one safe reload)."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline_steps.config import Config, Service
from pipeline_steps.operations.traffic import (
    TrafficChange,
    change_upstreams,
    pair_services,
    require_router,
)
from pipeline_steps.upstreams import Upstream, canary_upstream
from pipeline_steps.weights import Weights, check_percent


def set_weights(config: Config, canary_pct: float, services: Sequence[str] | None = None, *,
                dry_run: bool = False) -> TrafficChange:
    """Give the canary slot `canary_pct` % of each chosen service's traffic. Never touches Docker."""
    check_percent(canary_pct)
    require_router(config)
    chosen = pair_services(config, "canary", services)
    weights = Weights.from_percent(canary_pct, config.canary.scale, config.canary.min_weight)

    def build(view: Config, service: Service) -> Upstream:  # view: one router's hosts
        assert view.router is not None
        return canary_upstream(service, view.hosts_of(service), weights, view.router.keepalive)

    return change_upstreams(config, chosen, build, action="set-weights", target=f"{canary_pct:g}%",
                            dry_run=dry_run)
