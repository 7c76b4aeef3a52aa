"""`ps set-weights --canary PCT` (the work: operations/set_weights.py)."""

from __future__ import annotations

from dataclasses import asdict

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.traffic import say_change
from pipeline_steps.cli.types import PERCENT
from pipeline_steps.errors import BadInput
from pipeline_steps.operations.set_weights import set_weights
from pipeline_steps.weights import check_percent


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
