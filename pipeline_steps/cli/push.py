"""`ps push` (the work: operations/push.py)."""

from __future__ import annotations

from dataclasses import asdict

import click

from pipeline_steps.cli.command import load, pass_output, report, service_option
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import BUILD_ID, DURATION, TAG
from pipeline_steps.operations.build import resolve_identity
from pipeline_steps.operations.push import push


@click.command("push")
@service_option
@click.option("--build-id", type=BUILD_ID, metavar="ID", help="Push this BUILD_ID (default: the commit's).")
@click.option("--tag", "tags", multiple=True, type=TAG, metavar="TAG",
              help="Also tag this build TAG and push it, e.g. latest (repeatable).")
@click.option("--attempts", type=click.IntRange(1, 20), default=4, show_default=True,
              help="Tries per registry call when it fails transiently.")
@click.option("--backoff", type=DURATION, default="2s", show_default=True,
              help="First wait between tries; doubles each time (at most 30s).")
@click.option("--timeout", type=DURATION, default="10s", show_default=True,
              help="Per request to the registry's API.")
@pass_output
def command(out: Output, service: str | None, build_id: str | None, tags: tuple[str, ...], attempts: int,
            backoff: float, timeout: float) -> None:
    """Push the built images to the registry (REGISTRY_USER / REGISTRY_PASSWORD or docker login)."""
    config = load(out)
    services = config.select(service)
    ident = resolve_identity(build_id)
    result = push(config, services, ident.build_id, out, extra_tags=tags, attempts=attempts,
                  backoff=backoff, timeout=timeout, dry_run=out.dry_run)
    report(out, "push", asdict(result))
