"""`ps deploy-env --slot SLOT` (the work: operations/deploy_env.py)."""

from __future__ import annotations

from dataclasses import asdict

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import BUILD_ID
from pipeline_steps.config import SLOT_NAMES
from pipeline_steps.errors import BadInput
from pipeline_steps.operations.deploy_env import deploy_slot

# ---------------------------------------------------------------- command


@click.command("deploy-env")
@click.option("--slot", required=True, type=click.Choice(SLOT_NAMES), help="The slot to deploy.")
@click.option("--service", "-s", "service", metavar="NAME", help="Only this service (default: all).")
@click.option("--all", "all_services", is_flag=True, help="Every configured service with that slot.")
@click.option("--build-id", type=BUILD_ID, metavar="ID", help="BUILD_ID to run (default: the CI context's).")
@click.option("--force", is_flag=True, help="Replace the slot even while it carries traffic.")
@pass_output
def command(out: Output, slot: str, service: str | None, all_services: bool, build_id: str | None,
            force: bool) -> None:
    """Run the service image in SLOT on every configured host."""
    if service and all_services:
        raise BadInput("give --service NAME or --all, not both")
    config = load(out)
    from pipeline_steps.deploy import pipeline  # issue 15: lease check + history (ci helper)

    with pipeline.step_guard(config, "deploy-env", dry_run=out.dry_run):
        result = deploy_slot(config, slot, [service] if service else None, build_id, force=force,
                             dry_run=out.dry_run, say=out.say)
        if not out.dry_run:
            pipeline.record_step(config, "deploy-env", message=f"{slot}: build {result.build_id}",
                                 build_ids={f"{n}/{slot}": result.build_id
                                            for n in sorted({c.service for c in result.changes})})
    for c in result.changes:
        if c.action == "unchanged" or c.action.startswith("would-"):
            verb = "unchanged:" if c.action == "unchanged" else f"{c.action.replace('-', ' ')}:"
            out.say(f"host {c.host}: {c.container} {verb} {c.reason} ({c.image})")
    per_service: dict[str, list[str]] = {}
    for c in result.changes:
        per_service.setdefault(c.service, c.env_names)
    for name, env_names in per_service.items():
        out.say(f"env of {name} (names only): {', '.join(env_names)}")
    summary = "changed" if result.changed else ("dry run, nothing changed" if result.dry_run
                                                 else "no change, already running")
    out.say(f"deploy-env {slot} build {result.build_id}: {summary}")
    report(out, "deploy-env", asdict(result))
