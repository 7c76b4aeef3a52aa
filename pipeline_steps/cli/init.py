"""`ps init --from-compose docker-compose.yml`: write a ps.yaml from a compose file."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline_steps.cli.command import pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.errors import BadInput


@click.command("init")
@click.option("--from-compose", "compose_file", required=True, metavar="FILE",
              help="The docker-compose.yml to read (interpolation, extends and anchors as compose does).")
@click.option("--service", "-s", "services", multiple=True, metavar="NAME",
              help="Only this service (repeatable; default: every service compose builds).")
@click.option("--app", metavar="NAME", help="The app name (default: the compose project's).")
@click.option("--registry", default="registry.example.com:5000", show_default=True, metavar="HOST[:PORT]")
@click.option("--output", "-o", default="ps.yaml", show_default=True, metavar="FILE")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@pass_output
def command(out: Output, compose_file: str, services: tuple[str, ...], app: str | None, registry: str,
            output: str, force: bool) -> None:
    """Write a ps.yaml from a docker-compose.yml and name what it could not carry over."""
    import yaml

    from pipeline_steps.config import parse_config
    from pipeline_steps.files import atomic_write
    from pipeline_steps.operations.init_compose import from_compose

    target = Path(output).resolve()
    if target.exists() and not force and not out.dry_run:
        raise BadInput(f"{output} exists: not overwritten (use --force, or --output another file)")
    result = from_compose(compose_file, app=app, registry=registry, only=list(services) or None,
                          out_dir=target.parent)
    text = ("# Written by `ps init --from-compose " + compose_file + "`: check every note it printed.\n"
            + yaml.safe_dump(result.config, sort_keys=False))
    parse_config(yaml.safe_load(text), source=str(target), base_dir=target.parent)  # never a file ps refuses
    for name, kind in result.kinds.items():
        out.say(f"{name}: {kind if kind != 'stack' else 'left to compose (image only)'}")
    for note in result.notes:
        out.say(f"note: {note}")
    if out.dry_run:
        out.say(f"dry run: would write {output}")
        click.echo(text, nl=False)
    else:
        atomic_write(target, text, mode=0o644)
        count = len(result.config["services"])
        out.say(f"wrote {output} ({count} services); check it with ps config validate")
    report(out, "init", {"output": str(target), "kinds": result.kinds, "notes": result.notes,
                         "written": not out.dry_run})
