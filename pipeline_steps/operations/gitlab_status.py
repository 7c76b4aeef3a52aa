"""Set a commit status in GitLab, for projects whose pipeline runs on Jenkins (`ps gitlab-status`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline_steps.errors import BadInput

STATES = ("pending", "running", "success", "failed", "canceled")
TOKEN_ENV = "GITLAB_TOKEN"


@dataclass(frozen=True)
class GitLabStatusResult:
    """The status set (or that was already set: `changed` False) on a commit."""

    project: str
    sha: str
    state: str
    name: str
    target_url: str | None
    description: str | None
    ref: str | None
    changed: bool
    dry_run: bool = False


def gitlab_url_from(env: Mapping[str, str]) -> str | None:
    """GITLAB_URL, else GitLab CI's CI_SERVER_URL."""
    return env.get("GITLAB_URL") or env.get("CI_SERVER_URL") or None


def project_from(env: Mapping[str, str]) -> str | None:
    """GITLAB_PROJECT, else GitLab CI's CI_PROJECT_ID."""
    return env.get("GITLAB_PROJECT") or env.get("CI_PROJECT_ID") or None


def set_status(url: str, token: str, project: str, sha: str, state: str, *, name: str = "ps",
               description: str | None = None, target_url: str | None = None, ref: str | None = None,
               dry_run: bool = False) -> GitLabStatusResult:
    """Set the commit status through python-gitlab; errors carry exit codes 1 (refused) or 3 (unreachable)."""
    from pipeline_steps.adapters import gitlab

    if state not in STATES:
        raise BadInput(f"unknown state {state!r} (use {', '.join(STATES)})")
    if dry_run:
        return GitLabStatusResult(project, sha, state, name, target_url, description, ref, changed=False,
                                  dry_run=True)
    made = gitlab.set_commit_status(url, token, project, sha, state, name=name, description=description,
                                    target_url=target_url, ref=ref)
    return GitLabStatusResult(project, sha, made.state, name, made.target_url, description, ref,
                              changed=made.changed)
