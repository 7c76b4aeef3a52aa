"""A CI pipeline, stage by stage, ending in the same state as `ps deploy --type T`.

`begin` leases the app's deploy lock to the pipeline (named by its URL) and notifies `started` once;
every changing step (deploy-env, set-weights, switch, deploy) runs under `step_guard` (the lease of
another pipeline, or of any pipeline for a person at a shell, refuses it) and records its action in
the history with `record_step`; `end` reads what this pipeline did from the history, does what
`ps deploy` would do at the end of the type (prune after a stable/promote, put the traffic back on
stable after a failed canary), records the type's own history entry, sends the one outcome message
(succeeded / rolled back / failed, with the split and the log link) and gives the lease back.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline_steps.config import Config
from pipeline_steps.context import CIContext
from pipeline_steps.deploy.history import HistoryEntry, HistoryLog
from pipeline_steps.deploy.lock import DEFAULT_LEASE_TTL, DeployLock, Lease
from pipeline_steps.deploy.plan import DEPLOY_TYPES
from pipeline_steps.errors import BadInput, PsError
from pipeline_steps.progress import Reporter

STEP_TYPES = ("deploy-env", "set-weights", "switch")
LEASED_WAIT = 120.0  # a step of the leased pipeline waits this long for another of its steps


def context() -> CIContext | None:
    """The CI context, or None outside a checkout."""
    from pipeline_steps.context import detect

    try:
        return detect()
    except BadInput:
        return None


def pipeline_label(env: dict[str, str] | None = None) -> str | None:
    """CI_PIPELINE_ID (GitLab) or BUILD_TAG (Jenkins): the run's short name for people."""
    env = dict(os.environ) if env is None else env
    return env.get("CI_PIPELINE_ID") or env.get("BUILD_TAG") or None


def in_own_lease(config: Config) -> bool:
    """True when this process is a step of the pipeline that holds the lease (then it sends nothing)."""
    return DeployLock.for_config(config).own_lease() is not None


@contextlib.contextmanager
def step_guard(config: Config, step: str, dry_run: bool = False) -> Iterator[Lease | None]:
    """Around a changing step: with an active lease, take the lock for the step (refused, exit 1, when
    the lease belongs to another pipeline or the caller is not in a pipeline); without one, as before."""
    lock = DeployLock.for_config(config, deploy_type=step)
    lease = lock.read_lease()
    leased = lease is not None and not lease.expired()
    if dry_run or not (leased or lock.engine_leased()):  # the engine: a lease taken on another agent
        yield None
        return
    lock.acquire(wait=LEASED_WAIT)
    try:
        yield lock.own_lease()
    finally:
        lock.release()


def record_step(config: Config, step: str, *, build_ids: dict[str, str] | None = None,
                weights: dict[str, Any] | None = None, message: str = "", **extra: Any) -> HistoryEntry:
    """A changing step's action in the history (result `ok`: the type's own entry says success)."""
    ctx = context()
    return HistoryLog.for_config(config).record(
        app=config.app, type=step, result="ok", build_ids=build_ids, weights=weights,
        who=ctx.who if ctx else None, pipeline_url=ctx.pipeline_url if ctx else None, message=message,
        **extra)


# ---------------------------------------------------------------- begin


@dataclass
class BeginResult:
    lease: dict[str, Any]
    new: bool
    took_over: dict[str, Any] | None
    notified: bool


def begin(config: Config, out: Reporter, *, deploy_type: str, ttl: float = DEFAULT_LEASE_TTL,
          wait: float = 0.0, log_url: str | None = None, services: Sequence[str] = (),
          notify: bool = True) -> BeginResult:
    """Lease the deploy lock to this pipeline; the first call of a pipeline notifies `started`."""
    if deploy_type not in DEPLOY_TYPES:
        raise BadInput(f"unknown deploy type {deploy_type!r} (one of: {', '.join(DEPLOY_TYPES)})")
    lock = DeployLock.for_config(config, deploy_type=deploy_type, warn=out.warn)
    ctx = context()
    log_url = log_url or (ctx.job_url if ctx else None)
    lease, new, stale = lock.take_lease(ttl=ttl, wait=wait, label=pipeline_label(), services=tuple(services))
    if stale is not None:
        out.warn(f"took over the stale lease of {stale.describe()} (its pipeline ended without `ps pipeline "
                 "end`)")
    out.say(("leased" if new else "renewed the lease of") + f" the deploy lock of app {config.app} to "
            f"{lease.describe()}")
    notified = False
    if new and notify:
        notified = _notify(config, "started", deploy_type=deploy_type, log_url=log_url,
                           services=list(services) or None, out=out)
    return BeginResult(lease.as_dict(), new, stale.as_dict() if stale else None, notified)


# ---------------------------------------------------------------- end


@dataclass
class EndResult:
    """How the pipeline ended: the type's result, what end did, and the message sent."""

    deploy_type: str
    status: str  # success | failure (what CI said)
    result: str  # success | failure | rolled-back (what the pipeline did)
    message: str
    build_ids: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    recorded: bool = False
    pruned: bool = False
    rolled_back: bool = False
    notified: bool = False
    lease: dict[str, Any] | None = None
    report: list[str] = field(default_factory=list)


def pipeline_entries(config: Config, pipeline_url: str | None, since: float | None) -> list[HistoryEntry]:
    """This pipeline's history entries, oldest first."""
    if not pipeline_url:
        return []
    found = []
    for entry in HistoryLog.for_config(config).read(app=config.app).entries:
        if entry.pipeline_url != pipeline_url:
            continue
        if since is not None and _epoch(entry.time) is not None and (_epoch(entry.time) or 0) < since - 1:
            continue
        found.append(entry)
    return found


def end(config: Config, out: Reporter, *, status: str, deploy_type: str | None = None,
        log_url: str | None = None, message: str | None = None, report: str | None = None,
        notify: bool = True) -> EndResult:
    """Finish the pipeline as `ps deploy` finishes its type, notify the outcome once, end the lease."""
    if status not in ("success", "failure"):
        raise BadInput(f"unknown pipeline status {status!r} (success or failure)")
    ctx = context()
    log_url = log_url or (ctx.job_url if ctx else None)
    lock = DeployLock.for_config(config, warn=out.warn)
    lease = lock.own_lease() or _own_record(lock)
    kind = deploy_type or (lease.deploy_type if lease else None) or "deploy"
    since = _epoch(lease.since) if lease else None
    entries = pipeline_entries(config, ctx.pipeline_url if ctx else None, since)
    steps = [e for e in entries if e.type in STEP_TYPES]
    runs = [e for e in entries if e.type in DEPLOY_TYPES]
    build_ids: dict[str, str] = {}
    weights: dict[str, float] = {}
    for entry in entries:
        build_ids.update(entry.build_ids)
        weights.update({k: float(v) for k, v in entry.weights.items() if isinstance(v, int | float)})
    result = EndResult(deploy_type=kind, status=status, result=status, message=message or "",
                       build_ids=build_ids, weights=weights, steps=[e.type for e in entries],
                       lease=lease.as_dict() if lease else None)
    own_run = next((e for e in reversed(runs) if e.type == kind), None)
    rollout = _rollout(config, kind, ctx, out) if kind in DEPLOY_TYPES else None
    if status == "failure":
        rolled = [e for e in runs if e.result == "rolled-back" or e.type == "rollback"]
        canary_touched = any(k.endswith("/canary") for e in steps for k in e.build_ids) or \
            any(e.type == "set-weights" for e in steps)
        if own_run is not None and own_run.result == "rolled-back":
            result.result = "rolled-back"  # `ps deploy` rolled back and recorded it: nothing more to do
        elif kind in ("canary-auto", "canary-manual") and canary_touched and rollout is not None:
            try:
                rollout.rollback_to_stable(rollout.services("canary"), "the pipeline failed")
                result.rolled_back = True
                result.weights = {s: 0.0 for s in result.weights} or dict(rollout.outcome.weights)
                result.result = "rolled-back"
            except PsError as exc:
                result.result = "failure"
                result.message = f"{result.message + '; ' if result.message else ''}ROLLBACK FAILED: " \
                                 f"{exc.message}"
        elif rolled:
            result.result = "rolled-back"
        else:
            result.result = "failure"
        if not result.message:
            last = (own_run.message if own_run else "") or "a stage of the pipeline failed"
            result.message = last + ("; rolled back to stable 100 %" if result.rolled_back else "")
    else:
        result.message = result.message or (own_run.message if own_run else _success_text(kind, build_ids))
        if rollout is not None and own_run is None and kind in ("stable", "promote-canary"):
            with contextlib.suppress(PsError):
                rollout.prune(rollout.services("canary"))
                result.pruned = True
    if entries and (own_run is None or result.rolled_back):
        HistoryLog.for_config(config).record(
            app=config.app, type=kind, result=result.result, build_ids=build_ids, weights=result.weights,
            who=ctx.who if ctx else None, pipeline_url=ctx.pipeline_url if ctx else None,
            message=result.message, duration=_duration(lease), via="pipeline", steps=result.steps)
        result.recorded = True
    if report:
        result.report = _write_report(config, kind, ctx, entries, result, report)
    if notify:
        weight = _notified_weight(kind, result)
        text = result.message
        status_word = {"success": "success", "rolled-back": "rolled-back"}.get(result.result, "failure")
        result.notified = _notify(config, status_word, deploy_type=kind, log_url=log_url, out=out,
                                  weight=weight, message=text, duration=_duration(lease),
                                  rollback_info=text if status_word == "rolled-back" else None,
                                  services=list(lease.services) if lease and lease.services else None)
    lock.end_lease()
    return result


def _own_record(lock: DeployLock) -> Lease | None:
    """This pipeline's lease even when it expired meanwhile (so end still gives it back)."""
    lease = lock.read_lease()
    return lease if lease is not None and lock.pipeline_url and lease.pipeline_url == lock.pipeline_url \
        else None


def _rollout(config: Config, kind: str, ctx: CIContext | None, out: Reporter) -> Any:
    """A Rollout of the type: its end-of-type moves (prune, rollback), not re-implemented here."""
    if config.router is None:
        return None
    from pipeline_steps.deploy.rollout import DeployRequest, Rollout

    return Rollout(config, DeployRequest(type=kind, notify=False), ctx, out)


def _success_text(kind: str, build_ids: dict[str, str]) -> str:
    builds = ", ".join(f"{k} {v}" for k, v in sorted(build_ids.items()))
    return f"{kind} done" + (f": {builds}" if builds else "")


def _notified_weight(kind: str, result: EndResult) -> int | None:
    """The split the outcome shows, as `ps deploy` shows it."""
    if result.result == "rolled-back":
        return 0
    if "canary" in kind and kind != "promote-canary":
        values = list(result.weights.values())
        return int(round(values[-1])) if values else None
    if kind == "blue-green" and result.result == "success":
        return 100
    return None


def _notify(config: Config, status: str, *, out: Reporter, **kw: Any) -> bool:
    from pipeline_steps.operations.mattermost_notify import notify

    sent = notify(config, context(), status=status, **kw)
    if not sent.delivered and "no webhook URL" not in sent.reason:
        out.warn(f"notification not delivered: {sent.reason}")
    elif sent.delivered:
        out.say(f"notified {sent.webhook}: {status}")
    return sent.delivered


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def _duration(lease: Lease | None) -> float | None:
    start = _epoch(lease.since) if lease else None
    return round(time.time() - start, 1) if start else None


def _write_report(config: Config, kind: str, ctx: CIContext | None, entries: list[HistoryEntry],
                  result: EndResult, path: str) -> list[str]:
    """The pipeline's run report (JSON + HTML timeline) from its history entries."""
    from pipeline_steps.deploy.report import RunReport

    run = RunReport(app=config.app, deploy_type=kind, timezone=config.timezone,
                    pipeline_url=ctx.pipeline_url if ctx else None, who=ctx.who if ctx else None,
                    build_ids=dict(result.build_ids))
    start = _epoch(entries[0].time) if entries else None
    for entry in entries:
        at = max(0.0, (_epoch(entry.time) or 0) - start) if start else None
        if entry.weights:
            run.weights({k: float(v) for k, v in entry.weights.items() if isinstance(v, int | float)},
                        f"{entry.type}: {entry.message}", at=at)
        else:
            run.step(f"{entry.type}: {entry.message or entry.result}", at=at)
    if result.rolled_back:
        run.rollback("rollback: the pipeline failed")
    run.finish(result.result, result.message)
    json_path, html_path = run.write(path)
    return [str(json_path), str(html_path)]


def change_services(change: Any) -> list[str]:
    """The service names a set-weights / switch TrafficChange touched."""
    return [s.service if hasattr(s, "service") else str(s.get("service")) for s in change.services]
