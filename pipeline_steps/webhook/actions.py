"""What an accepted push starts: a Jenkins job, a GitLab pipeline, or `ps deploy` run locally.

An action takes a Delivery and returns a one-line outcome; it raises a PsError when it did not succeed.
Secrets (Jenkins tokens, trigger tokens) are read from the environment when the action is made.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pipeline_steps.context import build_id_of
from pipeline_steps.errors import BadInput, CheckFailed
from pipeline_steps.secrets import register_secret
from pipeline_steps.webhook.store import Delivery

DEFAULT_DEPLOY_TYPE = "canary-auto"
DEFAULT_LOCAL_COMMAND = "deploy --type {deploy_type} --build-id {build_id}"


class Action(Protocol):
    """Runs the work a delivery asks for."""

    name: str

    def __call__(self, delivery: Delivery) -> str: ...


def _secret_env(env: Mapping[str, str], name: str | None) -> str | None:
    if not name:
        return None
    value = env.get(name) or None
    register_secret(value)
    return value


def parameters(delivery: Delivery, deploy_type: str) -> dict[str, str]:
    """The variables every action passes on: deploy type, commit, BUILD_ID and branch."""
    sha = delivery.sha or ""
    return {"DEPLOY_TYPE": deploy_type, "COMMIT_SHA": sha, "BUILD_ID": build_id_of(sha) if sha else "",
            "COMMIT_BRANCH": delivery.branch or ""}


@dataclass
class JenkinsAction:
    """POST {url}/job/{job}/buildWithParameters with DEPLOY_TYPE, COMMIT_SHA, BUILD_ID, COMMIT_BRANCH."""

    url: str
    job: str
    job_token: str | None = None
    user: str | None = None
    api_token: str | None = None
    deploy_type: str = DEFAULT_DEPLOY_TYPE
    timeout: float = 10.0
    name: str = "jenkins"

    @classmethod
    def from_env(cls, url: str | None, job: str | None, *, job_token_env: str, user_env: str,
                 api_token_env: str, deploy_type: str = DEFAULT_DEPLOY_TYPE,
                 env: Mapping[str, str] | None = None) -> JenkinsAction:
        env = os.environ if env is None else env
        if not url or not job:
            raise BadInput("the jenkins action needs --jenkins-url (or JENKINS_URL) and --jenkins-job")
        return cls(url=url, job=job, job_token=_secret_env(env, job_token_env),
                   user=env.get(user_env) or None, api_token=_secret_env(env, api_token_env),
                   deploy_type=deploy_type)

    def __call__(self, delivery: Delivery) -> str:
        from pipeline_steps.adapters import jenkins

        queued = jenkins.trigger_build(self.url, self.job, parameters(delivery, self.deploy_type),
                                       job_token=self.job_token, user=self.user, api_token=self.api_token,
                                       timeout=self.timeout)
        where = f" ({queued.queue_url})" if queued.queue_url else ""
        return f"Jenkins job {self.job} triggered: {queued.status}{where}"


@dataclass
class GitLabPipelineAction:
    """Trigger a pipeline on the pushed branch (or a fixed ref) with the same variables."""

    url: str
    project: str
    trigger_token: str
    ref: str | None = None
    deploy_type: str = DEFAULT_DEPLOY_TYPE
    timeout: float = 10.0
    name: str = "gitlab"

    @classmethod
    def from_env(cls, url: str | None, project: str | None, *, trigger_token_env: str, ref: str | None = None,
                 deploy_type: str = DEFAULT_DEPLOY_TYPE,
                 env: Mapping[str, str] | None = None) -> GitLabPipelineAction:
        env = os.environ if env is None else env
        if not url or not project:
            raise BadInput("the gitlab action needs --gitlab-url (or GITLAB_URL) and --gitlab-project "
                           "(or GITLAB_PROJECT)")
        token = _secret_env(env, trigger_token_env)
        if not token:
            raise BadInput(f"the gitlab action needs a pipeline trigger token in ${trigger_token_env}")
        return cls(url=url, project=project, trigger_token=token, ref=ref, deploy_type=deploy_type)

    def __call__(self, delivery: Delivery) -> str:
        from pipeline_steps.adapters import gitlab

        ref = self.ref or delivery.branch
        if not ref:
            raise CheckFailed("no ref to run the pipeline on")
        pipeline = gitlab.trigger_pipeline(self.url, self.project, ref, self.trigger_token,
                                           parameters(delivery, self.deploy_type), timeout=self.timeout)
        where = f" {pipeline.web_url}" if pipeline.web_url else ""
        return f"GitLab pipeline {pipeline.id} started on {ref}{where}"


def local_argv(template: str, delivery: Delivery, deploy_type: str,
               config_path: str | None = None) -> list[str]:
    """[python, -m, pipeline_steps, (--config FILE), *template words] with {sha}, {build_id}, {branch},
    {deploy_type} filled in per word (no shell ever sees it)."""
    sha = delivery.sha or ""
    values = {"sha": sha, "build_id": build_id_of(sha) if sha else "", "branch": delivery.branch or "",
              "deploy_type": deploy_type}
    try:
        words = [word.format(**values) for word in shlex.split(template)]
    except (KeyError, IndexError, ValueError) as exc:
        raise BadInput(f"bad local command template {template!r}: {exc}") from None
    prefix = [sys.executable, "-m", "pipeline_steps"]
    if config_path:
        prefix += ["--config", config_path]
    return prefix + words


@dataclass
class LocalDeployAction:
    """Run `ps deploy --type canary-auto --build-id <BUILD_ID>` (the deploy command serialises itself)."""

    template: str = DEFAULT_LOCAL_COMMAND
    config_path: str | None = None
    cwd: str | None = None
    deploy_type: str = DEFAULT_DEPLOY_TYPE
    timeout: float = 3600.0
    extra_env: dict[str, str] = field(default_factory=dict)
    name: str = "local"

    def argv(self, delivery: Delivery) -> list[str]:
        return local_argv(self.template, delivery, self.deploy_type, self.config_path)

    def __call__(self, delivery: Delivery) -> str:
        argv = self.argv(delivery)
        env = {**os.environ, **self.extra_env, **parameters(delivery, self.deploy_type)}
        try:
            done = subprocess.run(argv, env=env, cwd=self.cwd, capture_output=True, text=True,
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"`ps {' '.join(argv[3:])}` did not finish in {self.timeout:.0f}s") from None
        shown = " ".join(argv[3:])
        if done.returncode != 0:
            why = _last_line(done.stderr) or _last_line(done.stdout)
            raise CheckFailed(f"`ps {shown}` exited {done.returncode}: {why}")
        return f"`ps {shown}` done: {_last_line(done.stdout) or _last_line(done.stderr)}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def describe(action: Action) -> str:
    """A one-line, secret-free description for the start-up banner."""
    if isinstance(action, JenkinsAction):
        return f"trigger Jenkins job {action.job} at {action.url}"
    if isinstance(action, GitLabPipelineAction):
        return f"trigger a GitLab pipeline of project {action.project} at {action.url}"
    if isinstance(action, LocalDeployAction):
        return f"run `ps {' '.join(shlex.split(action.template))}` locally"
    return action.name
