"""What an accepted push starts: a Jenkins job, a GitLab pipeline, or `ps deploy` run locally.

An action takes a Delivery and returns a one-line outcome; it raises a PsError when it did not succeed
(FinalFailure: it ran and said no, never retried; any other error is retried by the worker).
`resume(delivery)` is asked before a repeat (after a failed attempt, or after a restart found the delivery
in flight): it returns an outcome when the far side already has this delivery, None when it must run again.
Every action passes the delivery key on (PS_DELIVERY) so the far side can recognise a repeat.
Secrets (Jenkins tokens, trigger tokens) are read from the environment when the action is made.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline_steps.context import build_id_of
from pipeline_steps.errors import BadInput, CheckFailed
from pipeline_steps.secrets import register_secret
from pipeline_steps.waiting import poll_until
from pipeline_steps.webhook.store import Delivery

DEFAULT_DEPLOY_TYPE = "canary-auto"
DEFAULT_LOCAL_COMMAND = "deploy --type {deploy_type} --build-id {build_id}"
DELIVERY_PARAMETER = "PS_DELIVERY"


class FinalFailure(CheckFailed):
    """The action ran to its end and said no (a deploy that rolled back): retrying would not help."""


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
    """The variables every action passes on: deploy type, commit, BUILD_ID, branch and the delivery key."""
    sha = delivery.sha or ""
    return {"DEPLOY_TYPE": deploy_type, "COMMIT_SHA": sha, "BUILD_ID": build_id_of(sha) if sha else "",
            "COMMIT_BRANCH": delivery.branch or "", DELIVERY_PARAMETER: delivery.key}


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

    def resume(self, delivery: Delivery) -> str | None:
        """The queue item or build that already carries PS_DELIVERY=<key>, if Jenkins has one."""
        from pipeline_steps.adapters import jenkins

        found = jenkins.find_build(self.url, self.job, DELIVERY_PARAMETER, delivery.key, user=self.user,
                                   api_token=self.api_token, timeout=self.timeout)
        return f"Jenkins already has this delivery ({found}): not triggered again" if found else None


@dataclass
class GitLabPipelineAction:
    """Trigger a pipeline on the pushed branch (or a fixed ref) with the same variables."""

    url: str
    project: str
    trigger_token: str
    ref: str | None = None
    deploy_type: str = DEFAULT_DEPLOY_TYPE
    timeout: float = 10.0
    api_token: str | None = None  # only to look a repeat up (resume); triggers need no API token
    name: str = "gitlab"

    @classmethod
    def from_env(cls, url: str | None, project: str | None, *, trigger_token_env: str, ref: str | None = None,
                 deploy_type: str = DEFAULT_DEPLOY_TYPE, api_token_env: str | None = None,
                 env: Mapping[str, str] | None = None) -> GitLabPipelineAction:
        env = os.environ if env is None else env
        if not url or not project:
            raise BadInput("the gitlab action needs --gitlab-url (or GITLAB_URL) and --gitlab-project "
                           "(or GITLAB_PROJECT)")
        token = _secret_env(env, trigger_token_env)
        if not token:
            raise BadInput(f"the gitlab action needs a pipeline trigger token in ${trigger_token_env}")
        return cls(url=url, project=project, trigger_token=token, ref=ref, deploy_type=deploy_type,
                   api_token=_secret_env(env, api_token_env))

    def __call__(self, delivery: Delivery) -> str:
        from pipeline_steps.adapters import gitlab

        ref = self.ref or delivery.branch
        if not ref:
            raise CheckFailed("no ref to run the pipeline on")
        pipeline = gitlab.trigger_pipeline(self.url, self.project, ref, self.trigger_token,
                                           parameters(delivery, self.deploy_type), timeout=self.timeout)
        where = f" {pipeline.web_url}" if pipeline.web_url else ""
        return f"GitLab pipeline {pipeline.id} started on {ref}{where}"

    def resume(self, delivery: Delivery) -> str | None:
        """With an API token: the triggered pipeline whose PS_DELIVERY is this key. Without: None (the
        pipeline is triggered again with the same PS_DELIVERY, for the pipeline to recognise)."""
        from pipeline_steps.adapters import gitlab

        ref = self.ref or delivery.branch
        if not self.api_token or not ref:
            return None
        since = None
        if delivery.started_at:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(delivery.started_at - 300))
        found = gitlab.find_pipeline(self.url, self.api_token, self.project, ref, DELIVERY_PARAMETER,
                                     delivery.key, since=since, timeout=self.timeout)
        if found is None:
            return None
        return f"GitLab already has this delivery (pipeline {found.id}): not triggered again"


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
    """Run `ps deploy --type canary-auto --build-id <BUILD_ID>` in a process group of its own.

    The child runs under pipeline_steps.webhook.runner, which writes its exit code to `<run>.rc`; output
    goes to `<run>.log` (not a pipe: the deploy must outlive a receiver that dies). Its pid is recorded
    in the store (`record_pid`) so that after a restart `resume` adopts it: waits for the group to end and
    reads the exit code, instead of starting a second deploy.
    """

    template: str = DEFAULT_LOCAL_COMMAND
    config_path: str | None = None
    cwd: str | None = None
    deploy_type: str = DEFAULT_DEPLOY_TYPE
    timeout: float = 3600.0
    extra_env: dict[str, str] = field(default_factory=dict)
    run_dir: str | None = None
    record_pid: Callable[[str, int | None], None] | None = None
    name: str = "local"

    def bind(self, store: Any) -> None:
        """Keep run files beside the store and record pids in it."""
        if self.run_dir is None:
            self.run_dir = str(Path(store.path).parent / "runs")
        self.record_pid = store.set_pid

    def argv(self, delivery: Delivery) -> list[str]:
        return local_argv(self.template, delivery, self.deploy_type, self.config_path)

    def files(self, delivery: Delivery) -> tuple[Path, Path]:
        """The log and exit-code files of a delivery's run."""
        base = Path(self.run_dir) if self.run_dir else Path.cwd() / ".ps-webhook-runs"
        name = hashlib.sha256(delivery.key.encode()).hexdigest()[:24]
        return base / f"{name}.log", base / f"{name}.rc"

    def __call__(self, delivery: Delivery) -> str:
        argv = self.argv(delivery)
        log, rc = self.files(delivery)
        log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        rc.unlink(missing_ok=True)
        env = {**os.environ, **self.extra_env, **parameters(delivery, self.deploy_type)}
        old = os.umask(0o077)
        try:
            with open(log, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "pipeline_steps.webhook.runner", str(rc), "--",
                                         *argv], env=env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            os.umask(old)
        if self.record_pid:
            self.record_pid(delivery.key, proc.pid)
        try:
            proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            end_group(proc.pid)
            proc.wait()
            raise CheckFailed(f"`ps {' '.join(argv[3:])}` did not finish in {self.timeout:.0f}s") from None
        return self._outcome(delivery, proc.returncode)

    def resume(self, delivery: Delivery) -> str | None:
        """Adopt a run a previous receiver started: wait for its process group, then read its exit code.
        None when it never finished (killed with the receiver, or never started): run it again."""
        log, rc = self.files(delivery)
        if delivery.pid and self._alive(delivery.pid, rc):
            left = (delivery.started_at or time.time()) + self.timeout - time.time()
            pid = delivery.pid
            if poll_until(lambda: not self._alive(pid, rc) or None, timeout=left, interval=0.1) is None:
                end_group(pid)
        code = read_rc(rc)
        if code is None or code not in (0, 1, 2):
            return None  # never finished, or failed in a way worth running again
        return self._outcome(delivery, code, adopted=True)

    @staticmethod
    def _alive(pgid: int, rc: Path) -> bool:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        try:  # the leader still there must be our runner (not a reused pid)
            return str(rc).encode() in Path(f"/proc/{pgid}/cmdline").read_bytes()
        except OSError:
            return True  # the leader is gone but its group lives on: still ours until it ends

    def _outcome(self, delivery: Delivery, code: int, adopted: bool = False) -> str:
        shown = " ".join(self.argv(delivery)[3:])
        log, _ = self.files(delivery)
        last = _last_line(log.read_text(errors="replace")) if log.is_file() else ""
        how = " (adopted after a restart)" if adopted else ""
        if code == 0:
            return f"`ps {shown}` done{how}: {last}"
        if code in (1, 2):  # the deploy decided no (1) or its input is wrong (2): running again won't help
            raise FinalFailure(f"`ps {shown}` exited {code}{how}: {last}")
        raise CheckFailed(f"`ps {shown}` exited {code}{how}: {last}")


def end_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM a process group, SIGKILL it after `grace` seconds if it is still there."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        if poll_until(lambda: _group_gone(pgid) or None, timeout=wait, interval=0.05):
            return


def _group_gone(pgid: int) -> bool:
    """True when no process of the group is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def read_rc(path: Path) -> int | None:
    """The exit code the runner wrote, or None."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


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
