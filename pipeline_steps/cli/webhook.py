"""`ps webhook serve` (receive GitLab pushes, start canary-auto), `ps webhook deliveries` and `retry`."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from pipeline_steps.cli.command import pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import DURATION
from pipeline_steps.errors import BadInput, CheckFailed
from pipeline_steps.secrets import mask, register_secret
from pipeline_steps.webhook import actions
from pipeline_steps.webhook.store import RETRIABLE_BY_HAND, DeliveryStore, default_db_path

if TYPE_CHECKING:
    from pipeline_steps.webhook.server import ReceiverSettings

MIN_TOKEN_LENGTH = 16  # = server.MIN_TOKEN_LENGTH (not imported: the server module pulls in uvicorn)

ACTIONS = ("jenkins", "gitlab", "local")
MAX_WORKERS = 16


@dataclass(frozen=True)
class ServeSettings:
    """Everything `serve` was given, after checking (secrets are not part of it)."""

    host: str
    port: int
    branches: tuple[str, ...]
    db: str
    action: str
    action_description: str
    workers: int = 1


def read_token(env_name: str, env: dict[str, str] | None = None) -> str:
    """The shared webhook secret from the environment (registered for masking); BadInput when unset."""
    value = (env if env is not None else os.environ).get(env_name, "")
    if not value:
        raise BadInput(f"${env_name} is not set: the receiver needs the secret token GitLab sends in "
                       "X-Gitlab-Token (set it in the environment, never on the command line)")
    register_secret(value)
    if len(value) < MIN_TOKEN_LENGTH:
        raise BadInput(f"${env_name} is too short ({len(value)} characters): use a random secret of at least "
                       f"{MIN_TOKEN_LENGTH} (e.g. `openssl rand -hex 24`)")
    return value


def make_action(kind: str, *, deploy_type: str, jenkins_url: str | None, jenkins_job: str | None,
                jenkins_user_env: str, jenkins_api_token_env: str, jenkins_job_token_env: str,
                gitlab_url: str | None, gitlab_project: str | None, gitlab_trigger_token_env: str,
                gitlab_ref: str | None, local_command: str, config_path: str | None,
                workdir: str | None, gitlab_token_env: str | None = None) -> actions.Action:
    """The configured action, with its secrets read from the environment."""
    if kind == "jenkins":
        return actions.JenkinsAction.from_env(jenkins_url, jenkins_job, job_token_env=jenkins_job_token_env,
                                              user_env=jenkins_user_env, api_token_env=jenkins_api_token_env,
                                              deploy_type=deploy_type)
    if kind == "gitlab":
        return actions.GitLabPipelineAction.from_env(gitlab_url, gitlab_project,
                                                     trigger_token_env=gitlab_trigger_token_env,
                                                     ref=gitlab_ref, deploy_type=deploy_type,
                                                     api_token_env=gitlab_token_env)
    return actions.LocalDeployAction(template=local_command, config_path=config_path, cwd=workdir,
                                     deploy_type=deploy_type)


@click.group("webhook")
def group() -> None:
    """Receive GitLab push events and start a canary-auto deploy."""


@group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=9000, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--token-env", default="WEBHOOK_TOKEN", show_default=True, metavar="NAME",
              help="Environment variable holding the secret GitLab sends as X-Gitlab-Token.")
@click.option("--branch", "branches", multiple=True, default=("develop",), show_default=True,
              help="Branch whose pushes deploy (repeatable).")
@click.option("--db", type=click.Path(dir_okay=False), default=None,
              help="Deliveries database (default $XDG_STATE_HOME/pipeline-steps/webhook/deliveries.sqlite3).")
@click.option("--action", "action_kind", type=click.Choice(ACTIONS), default="local", show_default=True,
              help="What an accepted push starts.")
@click.option("--deploy-type", default=actions.DEFAULT_DEPLOY_TYPE, show_default=True,
              help="DEPLOY_TYPE passed on.")
@click.option("--jenkins-url", envvar="JENKINS_URL", help="Jenkins base URL (env JENKINS_URL).")
@click.option("--jenkins-job", help="Job to trigger; folders as folder/job.")
@click.option("--jenkins-user-env", default="JENKINS_USER", show_default=True, metavar="NAME",
              help="Env var with the Jenkins user.")
@click.option("--jenkins-api-token-env", default="JENKINS_API_TOKEN", show_default=True, metavar="NAME",
              help="Env var with that user's API token.")
@click.option("--jenkins-job-token-env", default="JENKINS_JOB_TOKEN", show_default=True, metavar="NAME",
              help="Env var with the job's 'trigger builds remotely' token.")
@click.option("--gitlab-url", envvar="GITLAB_URL", help="GitLab base URL (env GITLAB_URL).")
@click.option("--gitlab-project", envvar="GITLAB_PROJECT", help="Project id or path (env GITLAB_PROJECT).")
@click.option("--gitlab-trigger-token-env", default="GITLAB_TRIGGER_TOKEN", show_default=True, metavar="NAME",
              help="Env var with the pipeline trigger token.")
@click.option("--gitlab-ref", default=None, help="Ref to run the pipeline on (default: the pushed branch).")
@click.option("--gitlab-token-env", default="GITLAB_TOKEN", show_default=True, metavar="NAME",
              help="Env var with an API token, used only to look up whether a repeat already has a pipeline.")
@click.option("--local-command", default=actions.DEFAULT_LOCAL_COMMAND, show_default=True,
              help="ps arguments the local action runs; {sha} {build_id} {branch} {deploy_type} "
                   "are filled in.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Working directory of the local action (default: here).")
@click.option("--coalesce/--no-coalesce", default=True, show_default=True,
              help="Pushes of one branch waiting behind a running deploy collapse to the newest.")
@click.option("--attempts", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Attempts per delivery before it is dead.")
@click.option("--retry-wait", type=DURATION, default="1s", show_default=True, metavar="D",
              help="First backoff (doubling, at most --retry-max-wait).")
@click.option("--retry-max-wait", type=DURATION, default="60s", show_default=True, metavar="D",
              help="Longest backoff.")
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS), default=1, show_default=True,
              help="Receiving processes on the one port (more than 1: a further process acts on the "
                   "deliveries; uses more cores under bursts).")
@pass_output
def serve(out: Output, host: str, port: int, token_env: str, branches: tuple[str, ...], db: str | None,
          action_kind: str, deploy_type: str, jenkins_url: str | None, jenkins_job: str | None,
          jenkins_user_env: str, jenkins_api_token_env: str, jenkins_job_token_env: str,
          gitlab_url: str | None, gitlab_project: str | None, gitlab_trigger_token_env: str,
          gitlab_ref: str | None, gitlab_token_env: str, local_command: str, workdir: str | None,
          coalesce: bool, attempts: int, retry_wait: float, retry_max_wait: float, workers: int) -> None:
    """Receive GitLab push events; pushes to --branch run the action (default: `ps deploy` locally).

    Every delivery is stored (SQLite) before the 200, deduplicated by Idempotency-Key /
    X-Gitlab-Event-UUID, and run once by a worker; pending ones survive a restart.
    GET /healthz and GET /deliveries show the state.
    """
    from pipeline_steps.webhook.httpd import cap_malloc_arenas
    from pipeline_steps.webhook.server import ReceiverSettings, WebhookServer

    token = read_token(token_env)
    config_path = out.config_path if Path(out.config_path).is_file() else None
    action = make_action(action_kind, deploy_type=deploy_type, jenkins_url=jenkins_url,
                         jenkins_job=jenkins_job, jenkins_user_env=jenkins_user_env,
                         jenkins_api_token_env=jenkins_api_token_env,
                         jenkins_job_token_env=jenkins_job_token_env, gitlab_url=gitlab_url,
                         gitlab_project=gitlab_project, gitlab_trigger_token_env=gitlab_trigger_token_env,
                         gitlab_ref=gitlab_ref, local_command=local_command,
                         config_path=str(Path(config_path).resolve()) if config_path else None,
                         workdir=workdir, gitlab_token_env=gitlab_token_env)
    if action_kind == "local":
        actions.local_argv(local_command, _probe_delivery(), deploy_type)  # a bad template fails now
    db_path = Path(db) if db else default_db_path()
    settings = ServeSettings(host, port, tuple(branches), str(db_path), action.name,
                             actions.describe(action), workers)
    if out.dry_run:
        out.say(f"would listen on http://{host}:{port}, deploy pushes to {', '.join(branches)} "
                f"and {settings.action_description}")
        report(out, "webhook-serve", {**settings.__dict__, "dry_run": True})
        return
    cap_malloc_arenas()  # before the store's, worker's and action's threads start: a flatter RSS
    receiver = ReceiverSettings(token=token, branches=tuple(branches), coalesce=coalesce, attempts=attempts,
                                retry_wait=retry_wait, retry_max_wait=retry_max_wait, workers=workers)
    if workers > 1:
        serve_prefork(out, receiver, action, settings, db_path)
        return
    store = DeliveryStore(db_path)
    try:
        server = WebhookServer(store, action, receiver, host, port, log=log_writer(out))
    except OSError as exc:
        store.close()
        raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    out.say(f"ps webhook listening on {server.url} (deliveries in {db_path}); pushes to "
            f"{', '.join(branches)} {settings.action_description}")

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()  # on SIGINT/SIGTERM uvicorn stops, then raises it again: KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    out.say("ps webhook stopped")
    report(out, "webhook-serve", {**settings.__dict__, "port": server.port})


def serve_prefork(out: Output, receiver: ReceiverSettings, action: actions.Action, settings: ServeSettings,
                  db_path: Path) -> None:
    """`serve --workers N` (N > 1): bind here, then the supervisor forks the receivers and the actor
    (webhook/prefork.py) before any thread starts; returns when stopped, CheckFailed after a crash loop."""
    import socket

    from pipeline_steps.webhook.prefork import ACTOR, Supervisor, listen_socket, notify_writer
    from pipeline_steps.webhook.server import WebhookServer

    try:
        sock = listen_socket(settings.host, settings.port, receiver.backlog)
    except OSError as exc:
        raise BadInput(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    DeliveryStore(db_path, shared=True).close()  # created or migrated once, before the children open it
    log = log_writer(out)
    port = int(sock.getsockname()[1])

    def child(role: str, shared: socket.socket, pipe: tuple[int, int]) -> int:
        prefix = f"[{role} {os.getpid()}] "

        def own_log(line: str) -> None:
            log(prefix + line)

        def stop(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        store = DeliveryStore(db_path, shared=True)  # writes of all processes take turns on an flock
        try:
            if role == ACTOR:
                shared.close()
                os.close(pipe[1])
                server = WebhookServer(store, action, receiver, settings.host, port, log=own_log,
                                       listen=False)
                server.watch(pipe[0])
            else:
                os.close(pipe[0])
                server = WebhookServer(store, action, receiver, settings.host, port, log=own_log, sock=shared,
                                       start_worker=False, notify=notify_writer(pipe[1]))
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            store.close()
        return 0

    out.say(f"ps webhook listening on http://{settings.host}:{port} (deliveries in {db_path}; "
            f"{settings.workers} receiving processes, one acting); pushes to {', '.join(settings.branches)} "
            f"{settings.action_description}")
    code = Supervisor(settings.workers, sock, child, log, flush=_flush_streams).run()
    sock.close()
    if code:
        raise CheckFailed("ps webhook stopped: its processes kept ending (see the lines above)")
    out.say("ps webhook stopped")
    report(out, "webhook-serve", {**settings.__dict__, "port": port})


@group.command("deliveries")
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="Deliveries database.")
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@pass_output
def deliveries(out: Output, db: str | None, limit: int) -> None:
    """List the newest deliveries and what became of them."""
    with existing_store(db) as (db_path, store):
        rows = store.recent(limit)
    for d in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.received_at))
        out.say(f"{when}  {d.status:<10} {d.event:<13} {d.branch or '-':<16} {(d.sha or '-')[:12]:<12}  "
                f"{d.attempts}x  {d.key}  {d.outcome or ''}".rstrip())
    if not rows:
        out.say("no deliveries yet")
    report(out, "webhook-deliveries", {"db": str(db_path), "deliveries": [d.as_dict() for d in rows]})


@group.command("retry")
@click.argument("key")
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="Deliveries database.")
@pass_output
def retry(out: Output, key: str, db: str | None) -> None:
    """Run a dead, failed or superseded delivery KEY again (the running receiver picks it up)."""
    with existing_store(db) as (db_path, store):
        try:
            delivery = store.requeue(key)
        except KeyError:
            raise BadInput(f"no delivery {key!r} in {db_path} (see `ps webhook deliveries`)") from None
        except ValueError as exc:
            raise BadInput(f"delivery {key!r} is {exc}: only {', '.join(RETRIABLE_BY_HAND)} deliveries can "
                           "be re-triggered") from None
    out.say(f"delivery {key} is pending again ({delivery.branch} {(delivery.sha or '')[:12]}); the receiver "
            "runs it next")
    report(out, "webhook-retry", {"db": str(db_path), "delivery": delivery.as_dict()})


@contextmanager
def existing_store(db: str | None) -> Iterator[tuple[Path, DeliveryStore]]:
    """(path, store) of the deliveries database `serve` made (--db or the default), closed after;
    BadInput when there is none (never a new empty one)."""
    db_path = Path(db) if db else default_db_path()
    if not db_path.is_file():
        raise BadInput(f"no deliveries database at {db_path} (has `ps webhook serve` run here?)")
    store = DeliveryStore(db_path)
    try:
        yield db_path, store
    finally:
        store.close()


def log_writer(out: Output) -> Callable[[str], None]:
    """The receiver's log: each line timestamped, masked, written and flushed at once (stdout, or stderr
    with --json). Not Output.say: click.echo asks the stream whether it is a terminal on every line, a
    system call per delivery on the receiving path."""
    stream = sys.stderr if out.json_mode else sys.stdout
    lock = threading.Lock()

    def log(line: str) -> None:
        text = mask(f"{_now()} {line}") + "\n"
        with lock:
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):  # stdout gone (a closed pipe): a delivery never fails on its log
                pass

    return log


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _probe_delivery() -> actions.Delivery:
    return actions.Delivery(key="probe", received_at=0.0, event="push", ref="refs/heads/x", branch="x",
                            sha="0" * 40, project=None, user=None, status="pending")


def _now() -> str:
    return time.strftime("%H:%M:%S")
