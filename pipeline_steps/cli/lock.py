"""`ps lock status|release`: inspect and clear the deploy lock of the configured app."""

from __future__ import annotations

import click

from pipeline_steps.cli.command import load, pass_output, report
from pipeline_steps.cli.output import Output
from pipeline_steps.cli.types import DURATION
from pipeline_steps.config import Config
from pipeline_steps.deploy.lock import DeployLock, LockStatus, ReleaseResult


def _lock_of(config: Config) -> DeployLock:
    return DeployLock.for_config(config)


def lock_status(config: Config) -> LockStatus:
    """The deploy lock's state (held/free/stale) and holder."""
    return _lock_of(config).status()


def lock_release(config: Config, force: bool = False, wait: float = 10.0) -> ReleaseResult:
    """Clear a stale lock record; with force, stop the live holder and wait for the lock to be free."""
    return _lock_of(config).release(force=force, wait=wait)


@click.group("lock")
def group() -> None:
    """The deploy lock: one deployment per app at a time, across CI agents.

    \b
    The lock is a kernel file lock on <state_dir>/deploy.lock; it is freed the moment the
    deploying process exits, however it exits. <state_dir>/deploy.lock.json records the holder
    (pid, host, user, pipeline URL, deploy type, since). A record left by a dead process is
    stale and the next deploy takes it over.
    \b
    Then the engine lock: the volume ps-lock-<app> on the first host's engine, labelled with
    the holder (agent, pid, user, pipeline, type, since) and a lease its heartbeat renews
    (PS_LOCK_LEASE, 60s). A lock whose lease ran out (its agent is gone) is stale and taken
    over; PS_LOCK_ENGINE=off keeps the lock on this agent only.
    """


@group.command("status")
@pass_output
def status_command(out: Output) -> None:
    """Say whether the deploy lock is held, free or stale, and by whom."""
    config = load(out)
    status = lock_status(config)
    out.say(status.describe())
    report(out, "lock", {"action": "status", **status.as_dict()})


@group.command("release")
@click.option("--force", is_flag=True,
              help="Also stop a live holder: SIGTERM to its pid (this host only, and only when the kernel "
                   "confirms that pid holds the lock), then wait for the lock to be free; remove the "
                   "engine lock of a holder on another agent (not signalled) or a pipeline's lease.")
@click.option("--wait", "wait", type=DURATION, default="10s", show_default=True,
              help="With --force: how long to wait for the stopped holder to let go.")
@pass_output
def release_command(out: Output, force: bool, wait: float) -> None:
    """Clear a stale deploy lock record (left by a dead process).

    \b
    A lock held by a live process cannot be broken from outside: the kernel keeps it for that
    process until it exits. Without --force, release refuses (exit 1) and names the holder;
    with --force it stops the holder (SIGTERM) so the lock is freed, then clears the record.
    A stale engine lock is cleared; a live one (another agent) is removed only with --force.
    A half-finished deploy may need `ps deploy --type rollback` afterwards.
    """
    config = load(out)
    if out.dry_run:
        status = lock_status(config)
        out.say(f"dry run: {status.describe()}; nothing changed")
        report(out, "lock", {"action": "dry-run", **status.as_dict()})
        return
    result = lock_release(config, force=force, wait=wait)
    out.say(result.message)
    report(out, "lock", {"action": result.action, "app": result.app,
                         "holder": result.holder.public() if result.holder else None,
                         "engine": result.engine.public() if result.engine else None,
                         "message": result.message})
