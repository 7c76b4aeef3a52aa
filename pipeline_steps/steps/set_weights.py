"""`ps set-weights --canary PCT`: the stable/canary split of nginx upstreams (one safe reload)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import PERCENT
from pipeline_steps.config import Config, Service
from pipeline_steps.errors import BadInput
from pipeline_steps.steps.traffic import (
    TrafficChange,
    change_upstreams,
    pair_services,
    require_router,
    say_change,
)
from pipeline_steps.upstreams import Upstream, canary_upstream
from pipeline_steps.weights import Weights, check_percent


def set_weights(config: Config, canary_pct: float, services: Sequence[str] | None = None, *,
                dry_run: bool = False) -> TrafficChange:
    """Give the canary slot `canary_pct` % of each chosen service's traffic. Never touches Docker."""
    check_percent(canary_pct)
    router = require_router(config)
    chosen = pair_services(config, "canary", services)
    weights = Weights.from_percent(canary_pct, config.canary.scale, config.canary.min_weight)

    def build(service: Service) -> Upstream:
        return canary_upstream(service, config.hosts, weights, router.keepalive)

    return change_upstreams(config, chosen, build, action="set-weights", target=f"{canary_pct:g}%",
                            dry_run=dry_run)


@click.command("set-weights")
@click.option("--canary", "canary_pct", required=True, type=PERCENT, metavar="PCT",
              help="The canary's share of the traffic: a whole percent 0..100.")
@click.option("--service", "-s", "service_names", multiple=True, metavar="NAME",
              help="Only this service (repeatable; default: all stable/canary services).")
@click.option("--all", "all_services", is_flag=True, help="Every stable/canary service.")
@pass_output
def command(out: Output, canary_pct: float, service_names: tuple[str, ...], all_services: bool) -> None:
    """Set the stable/canary weights in the nginx upstreams and reload nginx safely."""
    if service_names and all_services:
        raise BadInput("give --service NAME or --all, not both")
    check_percent(canary_pct)
    config = load(out)
    from pipeline_steps.deploy import pipeline  # issue 15: lease check + history (ci helper)

    with pipeline.step_guard(config, "set-weights", dry_run=out.dry_run):
        change = set_weights(config, canary_pct, list(service_names) or None, dry_run=out.dry_run)
        if not out.dry_run:
            chosen = pipeline.change_services(change)
            pipeline.record_step(config, "set-weights", weights=dict.fromkeys(chosen, canary_pct),
                                 message=f"canary {canary_pct:g} %")
    say_change(out, change)
    report(out, "set-weights", asdict(change))
