"""`ps build` (the work: operations/build.py)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from pipeline_steps.cli.command import load, pass_output, report, service_option
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import BUILD_ID, TAG
from pipeline_steps.operations.build import build, parse_build_args, resolve_identity


@click.command("build")
@service_option
@click.option("--build-id", type=BUILD_ID, metavar="ID", help="Use this BUILD_ID, not the commit's.")
@click.option("--tag", "tags", multiple=True, type=TAG, metavar="TAG", help="Extra tag (repeatable).")
@click.option("--build-arg", "build_args", multiple=True, metavar="K=V",
              help="Build argument, e.g. BASE_IMAGE=...; a bare K reads $K (repeatable).")
@click.option("--force", is_flag=True, help="Rebuild even if the image is already there.")
@click.option("--dotenv-out", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write BUILD_ID= and IMAGE_<SERVICE>= lines to FILE.")
@pass_output
def command(out: Output, service: str | None, build_id: str | None, tags: tuple[str, ...],
            build_args: tuple[str, ...], force: bool, dotenv_out: Path | None) -> None:
    """Build service images tagged <registry>/<app>/<service>:<BUILD_ID>."""
    config = load(out)
    services = config.select(service)
    ident = resolve_identity(build_id)
    result = build(config, services, ident, out, extra_tags=tags, build_args=parse_build_args(build_args),
                   force=force, dotenv_out=dotenv_out, dry_run=out.dry_run)
    report(out, "build", asdict(result))
