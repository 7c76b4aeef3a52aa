"""`ps config validate|show|schema`: check ps.yaml, print the effective configuration or its JSON Schema."""

from __future__ import annotations

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.config import Config
from pipeline_steps.secrets import mask


def summary_lines(config: Config) -> list[str]:
    """A few human lines describing a valid config."""
    hosts = ", ".join(f"{h.name} ({h.docker or 'local engine'} at {h.address})" for h in config.hosts)
    lines = [f"app {config.app}, registry {config.registry}, timezone {config.timezone}",
             f"hosts: {hosts}"]
    for svc in config.services.values():
        slots = ", ".join(f"{slot} {port}" for slot, port in svc.slots.items())
        lines.append(f"service {svc.name}: {config.image_repo(svc)}, port {svc.port}, slots {slots}, "
                     f"health {svc.health.path}")
    if len(config.routers) == 1 and config.router is not None:
        where = f"container {config.router.container}" if config.router.container else "local nginx"
        lines.append(f"router: {where}, include {config.router.include}")
    for r in config.routers if len(config.routers) > 1 else ():  # issue 12: every router
        where = f"container {r.container} on {r.host}" if r.container else "local nginx"
        lines.append(f"router {r.name}: {where}, include {r.include}, hosts "
                     f"{', '.join(h.name for h in config.router_hosts(r))}")
    if config.routers_url:
        lines.append(f"routers_url: {config.routers_url}")
    steps = "/".join(str(s.weight) for s in config.canary.steps)
    lines.append(f"canary: steps {steps}%, pause {config.canary.pause:g}s, "
                 f"tolerance {config.canary.tolerance}, scale {config.canary.scale}")
    if config.canary.sticky is not None or config.canary.segments:  # issue 13
        from pipeline_steps.sticky import describe_mode

        lines.append(f"traffic split: {describe_mode(config.canary)}")
    return lines


@click.group("config")
def group() -> None:
    """Check ps.yaml and show the effective configuration."""


@group.command("validate")
@pass_output
def validate(out: Output) -> None:
    """Say "ok" and a summary, or list every problem with its path (exit 2)."""
    config = load(out)
    out.say(f"ok: {config.source} is valid")
    for line in summary_lines(config):
        out.say(f"  {line}")
    report(out, "config-validate", {"source": config.source, "app": config.app,
                                     "services": sorted(config.services)})


@group.command("show")
@pass_output
def show(out: Output) -> None:
    """Print the effective configuration (defaults filled in, secrets masked) as YAML, or JSON."""
    import yaml

    config = load(out)
    data = config.masked()
    if not out.json_mode:
        click.echo(mask(yaml.safe_dump(data, sort_keys=False, default_flow_style=False)), nl=False)
    report(out, "config-show", {"config": data})



@group.command("schema")
def schema() -> None:
    """Print the JSON Schema of ps.yaml (generated from the config models; no ps.yaml needed)."""
    from pipeline_steps.config.schema import schema_text

    click.echo(schema_text(), nl=False)
