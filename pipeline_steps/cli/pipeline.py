"""`ps pipeline begin|end|status`: a CI pipeline's stages as one deploy (lease, history, messages)."""

from __future__ import annotations

from dataclasses import asdict

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import DURATION
from pipeline_steps.deploy.lock import DEFAULT_LEASE_TTL, DeployLock
from pipeline_steps.deploy.pipeline import DEPLOY_TYPES, begin, end


@click.group("pipeline")
def group() -> None:
    """A CI pipeline's stages as one deploy: lease the lock, record, notify once.

    \b
    begin  (first changing stage) leases the app's deploy lock to this pipeline, named by its
           URL (CI_PIPELINE_URL, Jenkins BUILD_URL), and notifies `started` once per pipeline.
           Every later changing step (deploy-env, set-weights, switch, deploy) of the same
           pipeline is allowed and renews the lease; anyone else is refused (exit 1, naming the
           pipeline) until the lease ends. `ps lock release --force` ends it by hand.
    end    (post / .post, whatever happened) finishes as `ps deploy` would: prunes after a
           successful stable, rolls a failed canary back to stable, records the type in the
           history, sends one outcome message and gives the lease back.
    A lease whose pipeline died without `end` expires --ttl after its last step (stale) and
    is taken over by the next pipeline.
    """


@group.command("begin")
@click.option("--deploy-type", "deploy_type", required=True, type=click.Choice(DEPLOY_TYPES),
              help="The type this pipeline deploys.")
@click.option("--ttl", type=DURATION, default=f"{int(DEFAULT_LEASE_TTL)}s", show_default=True,
              help="The lease goes stale this long after the pipeline's last step.")
@click.option("--wait", type=DURATION, default="0s", show_default=True,
              help="Wait up to D for another pipeline's lease to end.")
@click.option("--log-url", metavar="URL", help="Where the pipeline's log is (for the message).")
@click.option("--no-notify", is_flag=True, help="Send no `started` message.")
@pass_output
def begin_command(out: Output, deploy_type: str, ttl: float, wait: float, log_url: str | None,
                  no_notify: bool) -> None:
    """Lease the deploy lock to this pipeline and notify `started` (once per pipeline)."""
    config = load(out)
    if out.dry_run:
        status = DeployLock.for_config(config).status()
        out.say(f"dry run: would lease the deploy lock to this pipeline; {status.describe()}")
        report(out, "pipeline", {"action": "dry-run", **status.as_dict()})
        return
    result = begin(config, out, deploy_type=deploy_type, ttl=ttl, wait=wait, log_url=log_url,
                   services=tuple(config.services), notify=not no_notify)
    report(out, "pipeline", {"action": "begin", **asdict(result)})


@group.command("end")
@click.option("--status", "status", required=True, type=click.Choice(("success", "failure")),
              help="How CI says the pipeline went (Jenkins post condition, GitLab on_success/on_failure).")
@click.option("--deploy-type", "deploy_type", type=click.Choice(DEPLOY_TYPES),
              help="Default: the type given to begin.")
@click.option("--log-url", metavar="URL", help="Where the log is, for the message (default: the job URL).")
@click.option("--message", metavar="TEXT", help="Extra text for the outcome message.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the pipeline's run report: FILE (JSON) and the HTML timeline beside it.")
@click.option("--no-notify", is_flag=True, help="Send no outcome message.")
@pass_output
def end_command(out: Output, status: str, deploy_type: str | None, log_url: str | None, message: str | None,
                report_path: str | None, no_notify: bool) -> None:
    """Finish the pipeline as `ps deploy` would, notify the outcome once and end the lease."""
    config = load(out)
    result = end(config, out, status=status, deploy_type=deploy_type, log_url=log_url, message=message,
                 report=report_path, notify=not no_notify)
    out.say(f"pipeline {result.deploy_type}: {result.result}: {result.message}")
    if result.report:
        out.say(f"report: {', '.join(result.report)}")
    report(out, "pipeline", {"action": "end", **asdict(result)})


@group.command("status")
@pass_output
def status_command(out: Output) -> None:
    """Say whether the deploy lock is leased, to which pipeline, and until when."""
    config = load(out)
    status = DeployLock.for_config(config).status()
    out.say(status.describe())
    report(out, "pipeline", {"action": "status", **status.as_dict()})
