"""CI context: which commit, BUILD_ID, branch, author and links this run belongs to.

Read from Jenkins or GitLab CI variables, or else from the local git checkout.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline_steps.adapters import git
from pipeline_steps.errors import BadInput
from pipeline_steps.inputs import check_build_id

_SHA = re.compile(r"[0-9a-f]{7,64}")


@dataclass(frozen=True)
class CIContext:
    """Everything a step needs to know about the pipeline run it is part of."""

    provider: str  # gitlab | jenkins | local
    sha: str
    build_id: str
    branch: str | None = None
    author: str | None = None
    title: str | None = None
    pipeline_url: str | None = None
    job_url: str | None = None
    source_url: str | None = None
    dirty: bool = False

    def __post_init__(self) -> None:
        check_build_id(self.build_id, f"the BUILD_ID made from the {self.provider} commit")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def who(self) -> str:
        """Who is deploying: the pipeline URL in CI, else the local user."""
        if self.pipeline_url:
            return self.pipeline_url
        import getpass

        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return "unknown"

    def commit_url(self) -> str | None:
        """A link to the commit when the source is a GitLab/GitHub-style web URL."""
        if not self.source_url:
            return None
        base = self.source_url.removesuffix(".git")
        if base.startswith("git@") and ":" in base:
            host, _, repo = base[4:].partition(":")
            base = f"https://{host}/{repo}"
        if not base.startswith(("http://", "https://")):
            return None
        sep = "/-/commit/" if "gitlab" in base else "/commit/"
        return f"{base}{sep}{self.sha}"


def build_id_of(sha: str, dirty: bool = False) -> str:
    """BUILD_ID: the first 12 hex digits of the commit, marked `-dirty` for a dirty work tree."""
    return sha[:12] + ("-dirty" if dirty else "")


def _clean_branch(name: str | None) -> str | None:
    if not name:
        return None
    for prefix in ("refs/heads/", "origin/", "refs/remotes/origin/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def detect(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> CIContext:
    """The context of this run: GitLab CI, Jenkins, or the local checkout."""
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    if env.get("CI_COMMIT_SHA"):
        sha = env["CI_COMMIT_SHA"].lower()
        _check_sha(sha, "CI_COMMIT_SHA")
        return CIContext(
            provider="gitlab",
            sha=sha,
            build_id=build_id_of(sha),
            branch=env.get("CI_COMMIT_BRANCH") or env.get("CI_COMMIT_REF_NAME"),
            author=env.get("CI_COMMIT_AUTHOR"),
            title=env.get("CI_COMMIT_TITLE"),
            pipeline_url=env.get("CI_PIPELINE_URL"),
            job_url=env.get("CI_JOB_URL"),
            source_url=_without_userinfo(env.get("CI_PROJECT_URL")),
        )
    if env.get("GIT_COMMIT") and (env.get("JENKINS_URL") or env.get("BUILD_URL") or env.get("BUILD_NUMBER")):
        sha = env["GIT_COMMIT"].lower()
        _check_sha(sha, "GIT_COMMIT")
        job = env.get("BUILD_URL")
        if not job and env.get("JOB_NAME") and env.get("BUILD_NUMBER"):
            job = f"{env['JOB_NAME']} #{env['BUILD_NUMBER']}"
        return CIContext(
            provider="jenkins",
            sha=sha,
            build_id=build_id_of(sha),
            branch=_clean_branch(env.get("BRANCH_NAME") or env.get("GIT_BRANCH")),
            author=env.get("GIT_AUTHOR_NAME") or env.get("CHANGE_AUTHOR") or git.commit_field(cwd, "%an"),
            title=git.commit_field(cwd, "%s"),
            pipeline_url=job,
            job_url=job,
            source_url=_without_userinfo(env.get("GIT_URL")),
        )
    head = git.head_commit(cwd)
    if not head:
        raise BadInput("no commit: not in CI (no CI_COMMIT_SHA or GIT_COMMIT) and not in a git checkout "
                       "with a commit; give --build-id")
    sha = head
    dirty = git.is_dirty(cwd)
    return CIContext(
        provider="local",
        sha=sha,
        build_id=build_id_of(sha, dirty),
        branch=git.branch(cwd),
        author=git.commit_field(cwd, "%an <%ae>"),
        title=git.commit_field(cwd, "%s"),
        source_url=_without_userinfo(git.remote_url(cwd)),
        dirty=dirty,
    )


def _without_userinfo(url: str | None) -> str | None:
    """A remote URL without `user:token@` (CI clone URLs often carry a job token)."""
    if not url or "://" not in url:
        return url
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"


def _check_sha(sha: str, name: str) -> None:
    if not _SHA.fullmatch(sha):
        raise BadInput(f"{name} is not a commit sha: {sha[:40]!r}")
