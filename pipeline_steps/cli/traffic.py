"""`ps traffic status`, and how every traffic change (set-weights, switch) is told to the user."""

from __future__ import annotations

from dataclasses import asdict

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.errors import CheckFailed
from pipeline_steps.operations.traffic import (
    ServiceStatus,
    TrafficChange,
    change_lines,
    missing_include,
    require_router,
    traffic_status,
)


@click.group("traffic")
def group() -> None:
    """How nginx splits traffic between the slots."""


@group.command("status")
@pass_output
def status_command(out: Output) -> None:
    """Per service: the current split, active color, backup, and the BUILD_ID behind each server."""
    config = load(out)
    result = traffic_status(config)
    if not result.exists:
        raise CheckFailed(missing_include(require_router(config)), result=asdict(result))
    many = len(result.routers) > 1
    for section in result.routers:
        if many:
            out.say(f"{section.router} (hosts {', '.join(section.hosts)}; {section.include}"
                    f"{'; ' + section.url if section.url else ''}):")
        _say_services(out, section.services, "  " if many else "")
    for w in result.warnings:
        out.warn(w)
    report(out, "traffic-status", asdict(result))


def _say_services(out: Output, services: list[ServiceStatus], indent: str) -> None:
    for svc in services:
        split = ", ".join(f"{slot} {pct:g} %" for slot, pct in sorted(svc.split.items()))
        extra = f"; active {svc.active}" if svc.active else ""
        extra += f"; backup {', '.join(svc.backup)}" if svc.backup else ""
        extra += f"; {svc.mode}" if svc.kind == "canary" else ""
        extra += f" ({svc.keys_percent:g} % of keys on the canary)" if svc.keys_percent is not None else ""
        out.say(f"{indent}{svc.service} (upstream {svc.upstream}): {split}{extra}")
        for s in svc.servers:
            flags = " backup" if s.backup else (" down" if s.down else "")
            out.say(f"{indent}  {s.address:<22} {s.host or '?'}/{s.slot or '?':<7} weight={s.weight}{flags} "
                    f"build {s.build_id or '-'}")


def say_change(out: Output, change: TrafficChange) -> None:
    """The lines of a set-weights or switch outcome (operations.traffic.change_lines), printed; a
    router that differed from router 1 (and was rewritten) as a warning."""
    for line in change_lines(change):
        out.say(line)
    for line in change.warnings:
        out.warn(line)
