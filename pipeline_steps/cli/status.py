"""`ps status`: the slot table, exit 1 on a BUILD_ID mismatch (the work: operations/status.py)."""

from __future__ import annotations

from dataclasses import asdict

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.durations import format_duration
from pipeline_steps.errors import CheckFailed, Unreachable
from pipeline_steps.operations.status import slot_status


@click.command("status")
@pass_output
def command(out: Output) -> None:
    """Show every slot on every host; exit 1 when hosts run different BUILD_IDs for a slot.

    With many routers also every router's split; exit 1 when routers split a service differently."""
    config = load(out)
    result = slot_status(config)
    out.say(f"{'HOST':<10} {'SERVICE':<12} {'SLOT':<7} {'CONTAINER':<28} {'BUILD_ID':<20} "
            f"{'STATE':<8} {'HEALTH':<10} UPTIME")
    for s in result.slots:
        uptime = format_duration(s.uptime_seconds) if s.uptime_seconds is not None else "-"
        out.say(f"{s.host:<10} {s.service:<12} {s.slot:<7} {s.container:<28} {s.build_id or '-':<20} "
                f"{s.state:<8} {s.health:<10} {uptime}")
    if len(result.routers) > 1 or any(r.problem for r in result.routers):
        out.say(f"{'ROUTER':<10} {'HOSTS':<16} {'SERVICE':<12} SPLIT")
        for r in result.routers:
            if r.problem:
                out.say(f"{r.router:<10} {','.join(r.hosts):<16} {'-':<12} {r.problem}")
            for service, split in r.splits.items():
                out.say(f"{r.router:<10} {','.join(r.hosts):<16} {service:<12} {split}")
    for line in result.mismatches:
        out.say(f"MISMATCH {line}")
    for line in result.unreachable:
        out.warn(line)
    data = {**asdict(result), "ok": result.ok}
    if result.unreachable:
        raise Unreachable(result.unreachable[0], result=data)
    if result.mismatches:
        raise CheckFailed(result.mismatches[0], result=data)
    report(out, "status", data)
