"""`ps switch --to blue|green`: the active color carries the traffic, the other stays as backup."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.config import SLOT_PAIRS, Config, Service
from pipeline_steps.errors import BadInput
from pipeline_steps.steps.traffic import (
    TrafficChange,
    change_upstreams,
    pair_services,
    require_router,
    say_change,
)
from pipeline_steps.upstreams import Upstream, blue_green_upstream

COLORS = SLOT_PAIRS["blue-green"]


def switch(config: Config, color: str, services: Sequence[str] | None = None, *,
           dry_run: bool = False) -> TrafficChange:
    """Make `color` active for the chosen blue/green services (the other color becomes backup)."""
    if color not in COLORS:
        raise BadInput(f"unknown color {color!r} (use blue or green)")
    router = require_router(config)
    chosen = pair_services(config, "blue-green", services)

    def build(service: Service) -> Upstream:
        return blue_green_upstream(service, config.hosts, color, router.keepalive)

    return change_upstreams(config, chosen, build, action="switch", target=color, dry_run=dry_run)


@click.command("switch")
@click.option("--to", "color", required=True, metavar="COLOR", help="blue or green.")
@click.option("--service", "-s", "service_names", multiple=True, metavar="NAME",
              help="Only this service (repeatable; default: all blue/green services).")
@pass_output
def command(out: Output, color: str, service_names: tuple[str, ...]) -> None:
    """Send the traffic to COLOR; the other color stays as nginx backup."""
    if color not in COLORS:
        raise BadInput(f"unknown color {color!r} (use blue or green)")
    config = load(out)
    from pipeline_steps.deploy import pipeline  # issue 15: lease check + history (ci helper)

    with pipeline.step_guard(config, "switch", dry_run=out.dry_run):
        change = switch(config, color, list(service_names) or None, dry_run=out.dry_run)
        if not out.dry_run:
            pipeline.record_step(config, "switch", message=f"{color} active",
                                 active={s: color for s in pipeline.change_services(change)})
    say_change(out, change)
    report(out, "switch", asdict(change))
