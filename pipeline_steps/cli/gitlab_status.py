"""`ps gitlab-status`: token, URL, project and commit from the environment (the call: operations)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict

import click

from pipeline_steps.cli.command import pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.errors import BadInput
from pipeline_steps.operations.gitlab_status import (
    STATES,
    TOKEN_ENV,
    gitlab_url_from,
    project_from,
    set_status,
)
from pipeline_steps.secrets import register_secret

_SHA = re.compile(r"^[0-9a-f]{7,64}$")


@click.command("gitlab-status")
@click.option("--state", required=True, type=click.Choice(STATES), help="The commit status to set.")
@click.option("--name", default="ps", show_default=True, help="The status name (its context in GitLab).")
@click.option("--description", default=None, help="A short text shown with the status.")
@click.option("--target-url", default=None, help="Link of the status (default: the pipeline URL).")
@click.option("--sha", default=None, help="Commit (default: from the CI context).")
@click.option("--project", default=None,
              help="Project id or path (default: $GITLAB_PROJECT or $CI_PROJECT_ID).")
@click.option("--ref", default=None, help="Branch or tag of the commit (default: from the CI context).")
@pass_output
def command(out: Output, state: str, name: str, description: str | None, target_url: str | None,
            sha: str | None, project: str | None, ref: str | None) -> None:
    """Set a GitLab commit status (GITLAB_URL, GITLAB_TOKEN from the environment)."""
    from pipeline_steps.context import CIContext, detect

    env = os.environ
    token = env.get(TOKEN_ENV, "")
    if not token:
        raise BadInput(f"${TOKEN_ENV} is not set: give a GitLab access token with api scope in the "
                       "environment (never on the command line)")
    register_secret(token)
    url = gitlab_url_from(env)
    if not url:
        raise BadInput("$GITLAB_URL is not set (e.g. https://gitlab.example.com)")
    project = project or project_from(env)
    if not project:
        raise BadInput("no project: give --project or set $GITLAB_PROJECT (or $CI_PROJECT_ID)")
    if not sha or target_url is None or ref is None:
        try:
            ctx: CIContext | None = detect()
        except BadInput:
            if not sha:
                raise
            ctx = None  # --sha given outside CI and git: no link, no ref
        if ctx is not None:
            sha = sha or ctx.sha
            target_url = target_url if target_url is not None else ctx.pipeline_url
            ref = ref if ref is not None else ctx.branch
    assert sha is not None
    if not _SHA.match(sha.lower()):
        raise BadInput(f"not a commit sha: {sha[:64]!r}")
    result = set_status(url, token, project, sha.lower(), state, name=name, description=description,
                        target_url=target_url or None, ref=ref or None, dry_run=out.dry_run)
    if result.dry_run:
        out.say(f"would set GitLab status {name}={state} on {project}@{sha[:12]}")
    elif result.changed:
        out.say(f"GitLab status {name}={result.state} set on {project}@{sha[:12]}"
                + (f" -> {result.target_url}" if result.target_url else ""))
    else:
        out.say(f"GitLab status {name} of {project}@{sha[:12]} is already {state}")
    report(out, "gitlab-status", asdict(result))
