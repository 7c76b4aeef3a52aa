"""`ps switch --to blue|green` (the work: operations/switch.py)."""

from __future__ import annotations

from dataclasses import asdict

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.traffic import say_change
from pipeline_steps.errors import BadInput
from pipeline_steps.operations.switch import COLORS, switch


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
