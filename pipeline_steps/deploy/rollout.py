"""One `ps deploy --type T`: the frame around the type's plan.

Take the deploy lock, notify `started` (rollback: in a thread, while the traffic moves), execute the
plan's steps (deploy/types.py), recover after a step that failed with a rollback (traffic back to
stable, or to the kept color), then notify the outcome once, append to the history and (with --report)
write the JSON + HTML report. `--dry-run` prints the same plan's lines. Inside a pipeline's lease no
message is sent (request.notify is False).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from pipeline_steps.config import Config, Service
from pipeline_steps.context import CIContext
from pipeline_steps.deploy.history import HistoryLog
from pipeline_steps.deploy.lock import DeployLock
from pipeline_steps.deploy.ops import DeployOps, RealOps
from pipeline_steps.deploy.plan import (
    DEPLOY_TYPES,
    Between,
    DeployOutcome,
    DeployRequest,
    Plan,
    Run,
    StepFailed,
    execute,
)
from pipeline_steps.deploy.report import RunReport
from pipeline_steps.errors import BadInput, PsError
from pipeline_steps.progress import Reporter

__all__ = ["DEPLOY_TYPES", "DeployOutcome", "DeployRequest", "Rollout", "StepFailed"]


class Rollout:
    """Runs one deployment type's plan against `ops` (default: the config's real hosts and router)."""

    def __init__(self, config: Config, request: DeployRequest, ctx: CIContext | None, out: Reporter,
                 ops: DeployOps | None = None) -> None:
        if request.type not in DEPLOY_TYPES:
            raise BadInput(f"unknown deploy type {request.type!r} (one of: {', '.join(DEPLOY_TYPES)})")
        if config.router is None and any(s.is_http for s in config.services.values()):
            raise BadInput(f"{config.source}: ps deploy needs a router section (nginx include, test, reload)")
        self.config = config
        self.request = request
        self.ctx = ctx
        self.out = out
        self.ops: DeployOps = ops or RealOps(config, ctx, out.say, out.warn, request.type, request.services)
        self.state = Run(config, request, ctx, self.ops, out.say)

    @property
    def outcome(self) -> DeployOutcome:
        return self.state.outcome

    @property
    def report(self) -> RunReport:
        return self.state.report

    def services(self, kind: str) -> list[Service]:
        return self.state.services(kind)

    def build_plan(self) -> Plan:
        from pipeline_steps.deploy.types import plan_for

        return plan_for(self.state)

    def plan(self) -> list[str]:
        """What the type would do, step by step, changing nothing (for --dry-run): the lines of the very
        steps a run executes, inside the frame's first and last line."""
        plan = self.build_plan()
        started = "notify started (sent while traffic moves)" if plan.notify_started_in_thread \
            else "notify started"
        sends = self.request.notify
        first = f"lock the deploy of {self.config.app}" + (f", {started}" if sends else "")
        last = "notify the outcome, " if sends else ""
        return [first, *plan.lines(self.state), f"{last}record the history" + (
            ", write the report" if self.request.report else "")]

    # ---------------------------------------------------------------- moves other layers reuse

    def rollback_to_stable(self, services: Sequence[Service], reason: str, after_check: bool = True) -> None:
        self.state.rollback_to_stable(services, reason, after_check=after_check)

    def prune(self, services: Sequence[Service]) -> None:
        self.ops.prune(services)

    # ---------------------------------------------------------------- the frame

    def run(self, between: Between | None = None) -> DeployOutcome:
        """Lock, run the plan, and notify, record and report its outcome. `between(i, step)` runs before
        every step but the first (the fast tier's kill points)."""
        plan = self.build_plan()
        state = self.state
        lock = DeployLock(self.config.state_dir, self.config.app, timezone=self.config.timezone,
                          deploy_type=self.request.type,
                          pipeline_url=self.ctx.pipeline_url if self.ctx else None,
                          engine=self.ops.engine_lock(), warn=self.out.warn)
        lock.acquire(wait=self.request.lock_wait)
        started = self.ops.now()
        sending: threading.Thread | None = None
        try:
            try:
                if plan.notify_started_in_thread:
                    # `started` goes out while the traffic moves: a slow chat endpoint delays nothing,
                    # and the outcome is sent only once it is delivered (the order holds)
                    sending = threading.Thread(target=self._notify_quietly, args=("started",), daemon=True)
                    sending.start()
                else:
                    self.notify("started")
                execute(plan, state, between)
                if plan.message is not None:
                    state.outcome.message = plan.message(state)
                if state.outcome.judgements:
                    last = state.outcome.judgements[-1]
                    state.outcome.message += (
                        "; judged at " + ", ".join(f"{j['weight']:g} % ({j['action']})"
                                                   for j in state.outcome.judgements)
                        + f", last: {last['reason']}")
                state.outcome.result = "success"
            except (StepFailed, PsError) as exc:
                self._finish_failure(plan, exc)
            outcome = state.outcome
            outcome.duration = round(self.ops.now() - started, 3)
            if sending is not None:
                sending.join()
            weight = self._notified_weight()
            if outcome.result == "success":
                self.notify("success", weight=_int(weight), message=outcome.message,
                            duration=outcome.duration)
            elif outcome.result == "rolled-back":
                self.notify("rolled-back", message=outcome.message, failed_at=state.stage or None,
                            rollback_info=outcome.message, duration=outcome.duration)
            else:
                self.notify("failure", weight=_int(weight), message=outcome.message,
                            failed_at=state.stage or None, duration=outcome.duration)
        finally:
            if sending is not None:
                sending.join()
            self._record()
            lock.release()
        return state.outcome

    def notify(self, status: str, **kw: Any) -> None:
        if not self.request.notify:
            return
        result = self.ops.notify(status, **kw)
        self.report.notify(f"{status}: {'delivered' if result.delivered else result.reason}",
                           ok=result.delivered)
        if not result.delivered and "no webhook URL" not in result.reason:
            self.out.say(f"warning: notification not delivered: {result.reason}")

    def _notify_quietly(self, status: str) -> None:
        try:
            self.notify(status)
        except Exception as exc:  # chat never fails a deploy; a thread cannot raise to the run
            self.out.say(f"warning: notification not delivered: {type(exc).__name__}")

    def _notified_weight(self) -> float | None:
        """The split a notification shows: the canary's share, or the new color's 100 %."""
        if "canary" in self.request.type:
            return next(iter(self.outcome.weights.values()), None)
        if self.request.type == "blue-green" and self.outcome.result == "success":
            return 100.0
        return None

    def _finish_failure(self, plan: Plan, exc: Exception) -> None:
        """The plan's recovery after a step that asked for a rollback; the outcome says what was done."""
        outcome = self.outcome
        message = exc.message if isinstance(exc, StepFailed | PsError) else str(exc)
        wants_rollback = isinstance(exc, StepFailed) and exc.rollback
        back: str | None = None
        try:
            if wants_rollback and plan.recover == "stable":
                from pipeline_steps.deploy.judging import JudgementFailed

                if isinstance(exc, JudgementFailed) and self.config.canary.rollback == "gradual":
                    back = self.state.rollback_gradually(self.services("canary"), message, exc.weight)
                else:
                    self.state.rollback_to_stable(self.services("canary"), message)
                    back = "rolled back to stable 100 %"
            elif wants_rollback and plan.recover == "color" and self.state.kept_color:
                back = self.state.switch_back(message)
        except (StepFailed, PsError) as again:
            outcome.message = f"{message}; ROLLBACK FAILED: {again.message}"
            outcome.result = "failure"
            outcome.exit_code = 1
            return
        if back:
            outcome.result = "rolled-back"
            outcome.message = f"{message}; {back}"
            outcome.exit_code = 1
            return
        outcome.result = "failure"
        outcome.message = message
        if wants_rollback and plan.recover == "color":
            outcome.message += "; no kept color to switch back to"
        outcome.exit_code = exc.exit_code if isinstance(exc, PsError) else 1

    def _record(self) -> None:
        outcome = self.outcome
        self.report.finish(outcome.result, outcome.message)
        history = HistoryLog(self.config.state_dir, timezone=self.config.timezone)
        judged: dict[str, Any] = {"judgements": outcome.judgements} if outcome.judgements else {}
        from pipeline_steps.deploy.history import acted_on

        where = acted_on(self.config, self.request.services)  # issue 12: hosts and routers by name
        self.report.hosts, self.report.routers = where["hosts"], where["routers"]
        history.record(app=self.config.app, type=self.request.type, result=outcome.result,
                       build_ids=outcome.build_ids, weights=dict(outcome.weights),
                       who=self.ctx.who if self.ctx else None,
                       pipeline_url=self.ctx.pipeline_url if self.ctx else None,
                       message=outcome.message, duration=outcome.duration,
                       hosts=where["hosts"], routers=where["routers"], **judged)
        if self.request.report:
            json_path, html_path = self.report.write(self.request.report)
            outcome.report = [str(json_path), str(html_path)]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self.outcome)


def _int(value: float | None) -> int | None:
    return None if value is None else int(round(value))
