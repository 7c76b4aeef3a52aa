"""`ps mattermost-notify` (payload and delivery: operations/mattermost_notify.py)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from pipeline_steps.cli.command import pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import DURATION, HTTP_URL, PERCENT
from pipeline_steps.config import Config, load_config
from pipeline_steps.context import CIContext
from pipeline_steps.errors import BadInput
from pipeline_steps.operations.mattermost_notify import STATUSES, notify


@click.command("mattermost-notify")
@click.option("--status", required=True, type=click.Choice(STATUSES), help="What happened.")
@click.option("--deploy-type", metavar="TYPE", help="canary, blue-green, rolling, ...")
@click.option("--weight", type=PERCENT, metavar="PCT",
              help="Share of traffic on the new slot.")
@click.option("--message", metavar="TEXT", help="Free text for the team.")
@click.option("--rollback-info", metavar="TEXT", help="What was rolled back, and to what.")
@click.option("--log-url", type=HTTP_URL, metavar="URL",
              help="Where the log of the run is [the CI job: CI_JOB_URL or BUILD_URL].")
@click.option("--failed-at", metavar="TEXT",
              help="failure/rolled-back: the step that failed (shown instead of the split).")
@click.option("--services", metavar="A,B", help="The services deployed (comma separated).")
@click.option("--duration", type=DURATION, help="How long the deploy took.")
@click.option("--app", metavar="NAME", help="App name when there is no ps.yaml [app].")
@click.option("--fail-on-error", is_flag=True, help="Exit 1 when not delivered (exit 2 without a URL).")
@click.option("--timeout", type=DURATION, help="Per request [notify.mattermost.timeout, 5s].")
@click.option("--attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="Requests at most (connection errors, timeouts and 5xx are retried).")
@click.option("--backoff", type=DURATION, default="0.5s", show_default=True,
              help="First wait between attempts (doubles each time).")
@click.option("--dry-run", "local_dry_run", is_flag=True, help="Print the payload, send nothing.")
@pass_output
def command(out: Output, status: str, deploy_type: str | None, weight: int | None, message: str | None,
            rollback_info: str | None, log_url: str | None, failed_at: str | None, services: str | None,
            duration: float | None,
            app: str | None, fail_on_error: bool, timeout: float | None, attempts: int, backoff: float,
            local_dry_run: bool) -> None:
    """Post a deploy notification to Mattermost (a failure warns and exits 0 unless --fail-on-error)."""
    config = _optional_config(out.config_path)
    dry_run = out.dry_run or local_dry_run
    service_list = [s.strip() for s in services.split(",") if s.strip()] if services else None
    result = notify(config, _context(), status=status, deploy_type=deploy_type, weight=weight,
                    message=message, rollback_info=rollback_info, log_url=log_url, duration=duration,
                    services=service_list, fail_on_error=fail_on_error, dry_run=dry_run, app=app,
                    timeout=timeout, attempts=attempts, backoff=backoff, failed_at=failed_at)
    if result.dry_run:
        out.say(f"dry run: would post to {result.webhook}:")
        out.say(json.dumps(result.payload, indent=2, ensure_ascii=False))
    elif result.delivered:
        out.say(f"notified {result.webhook}: {status}"
                + (f" ({result.attempts} attempts)" if result.attempts > 1 else ""))
    else:
        out.warn(f"notification not delivered ({result.reason}); continuing")
    report(out, "mattermost-notify", asdict(result))


def _optional_config(path: str) -> Config | None:
    """ps.yaml when it exists (a broken one is still an error), else None."""
    return load_config(path) if Path(path).is_file() else None


def _context() -> CIContext | None:
    from pipeline_steps import context

    try:
        return context.detect()
    except BadInput:
        return None
