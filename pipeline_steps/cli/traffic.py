"""`ps traffic status`, and how every traffic change (set-weights, switch) is told to the user."""

from __future__ import annotations

from dataclasses import asdict

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.errors import CheckFailed
from pipeline_steps.operations.traffic import (
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
    for svc in result.services:
        split = ", ".join(f"{slot} {pct:g} %" for slot, pct in sorted(svc.split.items()))
        extra = f"; active {svc.active}" if svc.active else ""
        extra += f"; backup {', '.join(svc.backup)}" if svc.backup else ""
        extra += f"; {svc.mode}" if svc.kind == "canary" else ""
        extra += f" ({svc.keys_percent:g} % of keys on the canary)" if svc.keys_percent is not None else ""
        out.say(f"{svc.service} (upstream {svc.upstream}): {split}{extra}")
        for s in svc.servers:
            flags = " backup" if s.backup else (" down" if s.down else "")
            out.say(f"  {s.address:<22} {s.host or '?'}/{s.slot or '?':<7} weight={s.weight}{flags} "
                    f"build {s.build_id or '-'}")
    for w in result.warnings:
        out.warn(w)
    report(out, "traffic-status", asdict(result))


def say_change(out: Output, change: TrafficChange) -> None:
    """The lines of a set-weights or switch outcome (operations.traffic.change_lines), printed."""
    for line in change_lines(change):
        out.say(line)
