"""`ps router init` (the work: operations/router.py)."""

from __future__ import annotations

from dataclasses import asdict

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.errors import BadInput
from pipeline_steps.operations.router import RouterInit, router_init


@click.group("router")
def group() -> None:
    """Write the first nginx include (router init)."""


@group.command("init")
@click.option("--service", "-s", "service_names", multiple=True, metavar="NAME",
              help="Only this service (repeatable; default: every service in ps.yaml).")
@click.option("--all", "all_services", is_flag=True, help="Every service in ps.yaml (the default).")
@click.option("--force", is_flag=True, help="Rewrite the chosen upstreams even when the file exists.")
@pass_output
def init_command(out: Output, service_names: tuple[str, ...], all_services: bool, force: bool) -> None:
    """Write router.include for the services of ps.yaml (stable 100 % / blue active); nginx may be down."""
    if service_names and all_services:
        raise BadInput("give --service NAME or --all, not both")
    config = load(out)
    result = router_init(config, list(service_names) or None, force=force, dry_run=out.dry_run)
    for one in result.routers or [result]:
        _say(out, one, f"{one.router}: " if result.routers else "")
    report(out, "router-init", asdict(result))


def _say(out: Output, result: RouterInit, prefix: str) -> None:
    """The lines of one router's init (`prefix`: its name when there are many)."""
    if result.note == "already there":
        out.say(f"{prefix}{result.include} already there with these upstreams, left alone "
                "(--force rewrites them)")
    else:
        for name, state in result.services.items():
            out.say(f"{prefix}{name}: {state}")
        if result.dry_run:
            out.say(f"{prefix}dry run: {result.note} {result.include} (nothing written)")
        elif not result.written:
            out.say(f"{prefix}{result.include} already says so, nothing changed")
        elif result.nginx_running:
            out.say(f"{prefix}wrote {result.include}, nginx tested and reloaded")
        else:
            tested = "nginx -t passed" if result.tested else result.note
            out.say(f"{prefix}wrote {result.include} (nginx not running; {tested}): nginx can start with it")
    for name, lines in result.locations.items():  # issue 13: what the site's location needs
        out.say(f"{prefix}{name}: sticky split / segments: the location needs " + " ".join(lines))
