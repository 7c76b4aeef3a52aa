"""`ps deploy --type T`: the deployment types, composed from the single steps."""

from __future__ import annotations

import click

from pipeline_steps.cli.command import load, pass_output
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import BUILD_ID, DURATION, PERCENT, ROLLBACK_TARGET
from pipeline_steps.deploy.rollout import DEPLOY_TYPES, DeployRequest, Rollout
from pipeline_steps.errors import BadInput, CheckFailed, Unreachable


@click.command("deploy")
@click.option("--type", "deploy_type", required=True, type=click.Choice(DEPLOY_TYPES),
              help="Deployment type.")
@click.option("--weight", type=PERCENT, metavar="PCT",
              help="canary-manual: the canary's share; canary-auto: stop at the last step at or below it.")
@click.option("--service", "-s", "service_names", multiple=True, metavar="NAME",
              help="Only this service (repeatable; default: every service with the type's slot pair).")
@click.option("--all", "all_services", is_flag=True, help="Every service (the default).")
@click.option("--build-id", type=BUILD_ID, metavar="ID", help="BUILD_ID to deploy (default: CI context).")
@click.option("--to", "to", type=ROLLBACK_TARGET, metavar="BUILD_ID|previous",
              help="rollback: also redeploy stable with this build.")
@click.option("--keep", type=DURATION, metavar="D",
              help="blue-green: stop the old color after D (default: keep it running as backup).")
@click.option("--lock-wait", type=DURATION, default=None, metavar="D",
              help="Wait up to D for another deploy of this app (default deploy.lock_wait, 0).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write a JSON record of the run and an HTML timeline beside it.")
@click.option("--no-notify", is_flag=True,
              help="Send no Mattermost messages (also the case inside a pipeline holding the lease).")
@click.option("--traffic-only", is_flag=True,
              help="canary-auto: only the traffic phase, on the canary earlier stages deployed and gated "
                   "(exit 1 unless it runs BUILD_ID).")
@pass_output
def command(out: Output, deploy_type: str, weight: float | None, service_names: tuple[str, ...],
            all_services: bool, build_id: str | None, to: str | None, keep: float | None,
            lock_wait: float | None, report_path: str | None, no_notify: bool, traffic_only: bool) -> None:
    """Run a deployment type: stable, canary-manual, canary-auto, promote-canary, rollback, blue-green.

    Takes the deploy lock, notifies started and the outcome, explains every decision, appends to the
    history and, with --report, writes the run's JSON and HTML timeline. canary-auto rolls back to stable
    100 % by itself when a check fails (exit 1).
    """
    if service_names and all_services:
        raise BadInput("give --service NAME or --all, not both")
    if to and deploy_type != "rollback":
        raise BadInput("--to goes with --type rollback")
    if deploy_type == "canary-manual" and weight is None:
        raise BadInput("canary-manual needs --weight PCT")
    if traffic_only and deploy_type != "canary-auto":
        raise BadInput("--traffic-only goes with --type canary-auto")
    config = load(out)
    from pipeline_steps.deploy import pipeline  # issue 15: a step of a leased pipeline sends nothing

    no_notify = no_notify or pipeline.in_own_lease(config)
    ctx = None
    if deploy_type not in ("rollback", "promote-canary") or build_id is None:
        from pipeline_steps.context import detect

        try:
            ctx = detect()
        except BadInput:
            if build_id is None and deploy_type in ("stable", "canary-manual", "canary-auto", "blue-green"):
                raise
    request = DeployRequest(type=deploy_type, services=service_names, weight=weight, build_id=build_id, to=to,
                            keep=keep, lock_wait=config.deploy.lock_wait if lock_wait is None else lock_wait,
                            report=report_path, notify=not no_notify, traffic_only=traffic_only)
    rollout = Rollout(config, request, ctx, out)
    if out.dry_run:
        steps = rollout.plan()
        for number, line in enumerate(steps, 1):
            out.say(f"dry run {number}. {line}")
        out.result("deploy", {"ok": True, "dry_run": True, "type": deploy_type, "plan": steps})
        return
    out.say(f"ps deploy --type {deploy_type}: app {config.app}")
    outcome = rollout.run()
    if request.report:
        out.say(rollout.report.timeline_text())
        out.say(f"report: {', '.join(outcome.report)}")
    data = rollout.as_dict()
    if outcome.ok:
        out.say(f"done in {outcome.duration:.1f}s: {outcome.message}")
        out.result("deploy", {"ok": True, **data})
        return
    error = {2: BadInput, 3: Unreachable}.get(outcome.exit_code, CheckFailed)
    raise error(f"{deploy_type} {outcome.result}: {outcome.message}", result={"step": "deploy", **data})
