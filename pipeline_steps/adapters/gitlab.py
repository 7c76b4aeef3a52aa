"""GitLab through python-gitlab: commit statuses and pipeline triggers.

Errors map to exit codes: no answer or 5xx -> Unreachable (3), 401/403 -> CheckFailed (1) with a clear line,
other refusals -> CheckFailed (1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline_steps.errors import CheckFailed, Unreachable, unreachable

if TYPE_CHECKING:
    import gitlab

T = TypeVar("T")
STATES = ("pending", "running", "success", "failed", "canceled")


@dataclass(frozen=True)
class CommitStatus:
    """The status GitLab now holds for a commit (or that it already held: `changed` False)."""

    id: int | None
    sha: str
    state: str
    name: str
    target_url: str | None
    changed: bool = True


@dataclass(frozen=True)
class TriggeredPipeline:
    id: int | None
    ref: str
    web_url: str | None


def connect(url: str, token: str | None = None, timeout: float = 10.0) -> gitlab.Gitlab:
    """A python-gitlab client (no request is made yet)."""
    import gitlab

    return gitlab.Gitlab(url.rstrip("/"), private_token=token or None, timeout=timeout)


def _call(url: str, what: str, fn: Callable[[], T]) -> T:
    """Run one python-gitlab call, turning its failures into ps errors."""
    import gitlab.exceptions
    import requests

    try:
        return fn()
    except requests.RequestException as exc:
        raise unreachable(f"GitLab at {url}", exc, context=f"({what})") from None
    except gitlab.exceptions.GitlabError as exc:
        code = exc.response_code
        message = str(exc.error_message)[:200] if exc.error_message else ""
        if code in (401, 403):
            raise CheckFailed(f"GitLab refused {what} ({code}): check the token and its access to the "
                              "project") from None
        if code is not None and code >= 500:
            raise Unreachable(f"GitLab at {url} failed {what} ({code}): {message}") from None
        if code == 404:
            raise CheckFailed(f"GitLab found no such project or commit ({what}, 404)") from None
        raise CheckFailed(f"GitLab refused {what} ({code}): {message}") from None


def set_commit_status(url: str, token: str, project: str, sha: str, state: str, *, name: str = "ps",
                      description: str | None = None, target_url: str | None = None,
                      ref: str | None = None, timeout: float = 10.0) -> CommitStatus:
    """Create the commit status; a status already in `state` (GitLab's 400 "Cannot transition") is fine."""
    import gitlab.exceptions

    client = connect(url, token, timeout)
    body: dict[str, Any] = {"state": state, "name": name}
    for key, value in (("description", description), ("target_url", target_url), ("ref", ref)):
        if value:
            body[key] = value

    def create() -> CommitStatus:
        commit = client.projects.get(project, lazy=True).commits.get(sha, lazy=True)
        try:
            made = commit.statuses.create(body)
        except gitlab.exceptions.GitlabCreateError as exc:
            if exc.response_code == 400 and "transition" in str(exc.error_message).lower():
                return CommitStatus(None, sha, state, name, target_url, changed=False)
            raise
        attrs = made.attributes
        return CommitStatus(attrs.get("id"), sha, str(attrs.get("status") or state), name,
                            attrs.get("target_url") or target_url)

    return _call(url, f"the commit status of {sha[:12]}", create)


def trigger_pipeline(url: str, project: str, ref: str, trigger_token: str,
                     variables: Mapping[str, str], timeout: float = 10.0) -> TriggeredPipeline:
    """Start a pipeline on `ref` with a trigger token (no API token needed)."""
    client = connect(url, None, timeout)

    def trigger() -> TriggeredPipeline:
        pipeline = client.projects.get(project, lazy=True).trigger_pipeline(ref, trigger_token,
                                                                             variables=dict(variables))
        attrs = pipeline.attributes
        return TriggeredPipeline(attrs.get("id"), ref, attrs.get("web_url"))

    return _call(url, f"the pipeline trigger on {ref}", trigger)


def find_pipeline(url: str, token: str, project: str, ref: str, name: str, value: str, *,
                  since: str | None = None, timeout: float = 10.0,
                  depth: int = 20) -> TriggeredPipeline | None:
    """A recent triggered pipeline on `ref` whose variable name=value (needs an API token); None if none."""
    client = connect(url, token, timeout)

    def find() -> TriggeredPipeline | None:
        pipelines = client.projects.get(project, lazy=True).pipelines
        query: dict[str, Any] = {"ref": ref, "source": "trigger", "per_page": depth, "get_all": False}
        if since:
            query["updated_after"] = since
        for pipeline in pipelines.list(**query):
            for variable in pipeline.variables.list(get_all=True):
                if variable.attributes.get("key") == name and str(variable.attributes.get("value")) == value:
                    attrs = pipeline.attributes
                    return TriggeredPipeline(attrs.get("id"), ref, attrs.get("web_url"))
        return None

    return _call(url, f"the pipeline look-up on {ref}", find)
