"""`ps context`: the CI context of this run (commit, BUILD_ID, branch, author, links)."""

from __future__ import annotations

import click

from pipeline_steps.cli.command import pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.context import CIContext, detect

FIELDS = ("provider", "sha", "build_id", "branch", "author", "title", "pipeline_url", "job_url",
          "source_url", "dirty")


def dotenv_lines(ctx: CIContext) -> list[str]:
    """`KEY=value` lines a later CI step can source or load as a dotenv artifact."""
    lines = [f"BUILD_ID={ctx.build_id}", f"COMMIT_SHA={ctx.sha}"]
    if ctx.branch:
        lines.append(f"COMMIT_BRANCH={ctx.branch}")
    return lines


@click.command("context")
@click.option("--dotenv", is_flag=True, help="Print BUILD_ID=... lines (for `source` or a dotenv artifact).")
@pass_output
def command(out: Output, dotenv: bool) -> None:
    """Show the CI context: commit, BUILD_ID, branch, author and links."""
    ctx = detect()
    if dotenv:
        for line in dotenv_lines(ctx):
            out.say(line)
    else:
        width = max(len(f) for f in FIELDS)
        for name in FIELDS:
            value = getattr(ctx, name)
            if value not in (None, ""):
                out.say(f"{name.ljust(width)}  {str(value).lower() if isinstance(value, bool) else value}")
    report(out, "context", ctx.as_dict())
