"""`ps history`: the deployment actions recorded for the configured app."""

from __future__ import annotations

from typing import Any

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.config import Config
from pipeline_steps.deploy.history import HistoryEntry, HistoryLog, HistoryRead


def read_history(config: Config, limit: int | None = 20, type: str | None = None) -> HistoryRead:
    """The last `limit` recorded actions of the configured app (oldest first)."""
    return HistoryLog.for_config(config).read(limit=limit, app=config.app, type=type)


def _weights_text(weights: dict[str, Any]) -> str:
    parts = []
    for service, value in weights.items():
        if isinstance(value, dict):
            inner = "/".join(f"{slot}={w}" for slot, w in value.items())
            parts.append(f"{service}:{inner}")
        else:
            parts.append(f"{service}:{value}%")
    return " ".join(parts) or "-"


def table(entries: list[HistoryEntry]) -> list[str]:
    """Aligned text rows: time, type, result, BUILD_IDs, weights, who."""
    rows = [("TIME", "TYPE", "RESULT", "BUILD_IDS", "WEIGHTS", "WHO")]
    for e in entries:
        builds = " ".join(f"{k}={v}" for k, v in e.build_ids.items()) or "-"
        rows.append((e.time, e.type, e.result, builds, _weights_text(e.weights),
                     e.pipeline_url or e.who or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]


@click.command("history")
@click.option("--limit", "-n", type=click.IntRange(min=0), default=20, show_default=True,
              help="Show the last N actions (0: all).")
@click.option("--type", "type_", metavar="TYPE", help="Only this deploy type or action (e.g. canary-auto).")
@pass_output
def command(out: Output, limit: int, type_: str | None) -> None:
    """Show the recorded deployment actions (time, type, BUILD_IDs, weights, result, who)."""
    config = load(out)
    found = read_history(config, limit or None, type_)
    if found.corrupt:
        out.warn(f"{found.corrupt} unreadable line(s) skipped in {config.state_dir}/history.jsonl")
    if not found.entries:
        what = f" of type {type_}" if type_ else ""
        out.say(f"no deployment history{what} for app {config.app}")
    else:
        for row in table(found.entries):
            out.say(row)
    report(out, "history", {"app": config.app, "count": len(found.entries), "corrupt": found.corrupt,
                            "entries": [e.as_dict() for e in found.entries]})
