"""canary.analysis inside a deploy: one hold's judgement, canary against stable, from nginx's access log.

`HoldJudge` is opened by a hold once the step's weight is live (only lines written from then on
count), looks after every health check (the looks are planned: pause / interval, plus the extension),
and says what the hold does (`decide_hold`): continue, extend, pass, or rollback. Every look is kept
on the report (the judgement plot of the step); the last one of a hold goes into the outcome
(`--json`), the history and the notification with its numbers.

With a `watch:` section the same looks also run the watch's checks (`WatchCheck`: CPU and memory of
the canary against the limits, its error lines per minute against stable's): a failed watch check is a
failed judgement. `WatchCheck` also serves the watch after promote-canary and blue-green's switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipeline_steps.analysis import HoldAction, Judgement, SlotMap, StepAnalysis, decide_hold, planned_looks
from pipeline_steps.analysis.watch import Side, judge_watch
from pipeline_steps.config import Config, Service
from pipeline_steps.deploy.plan import StepFailed


class JudgementFailed(StepFailed):
    """A hold's judgement said the canary is worse than stable (or inconclusive and policy fails it)."""

    def __init__(self, message: str, weight: float) -> None:
        super().__init__(message, rollback=True)
        self.weight = weight


@dataclass
class JudgedHold:
    """The record of one judged hold (what the outcome, history and notification carry)."""

    step: str  # "2/3" or "rollback 40 %"
    weight: float
    action: str  # pass | rollback | observed
    reason: str
    looks: int
    extended: float
    judgements: list[dict[str, Any]]

    def line(self) -> str:
        return f"canary {self.weight:g} % ({self.step}): {self.action}: {self.reason}"


class HoldJudge:
    """The judgement of one hold (see the module doc); `close()` when the hold ends.

    `ops` (the DeployOps) runs the watch's checks at each look when ps.yaml has a `watch:` section; with
    canary.analysis off the hold is judged by the watch alone."""

    def __init__(self, config: Config, services: Sequence[Service], sources: Sequence[Any], *, pause: float,
                 interval: float, weight: float, step: str, holds: int, report: Any, clock: Any,
                 ops: Any = None) -> None:
        self.policy = config.canary.analysis
        self.weight = weight
        self.step = step
        self.report = report
        self.clock = clock
        self.started = clock()
        # a look at every check from 0 to the end of the pause and the extension (the first sees no line)
        self.looks = planned_looks(pause, interval, self.policy.extend) + 2
        self.sources = list(sources)
        self.analysis = StepAnalysis([], SlotMap.from_config(config, [s.name for s in services]), self.policy,
                                     self.looks, upstreams=[s.upstream for s in services], holds=holds,
                                     sources=sources) if self.policy.enabled else None
        self.watch = WatchCheck(config, ops, services, "canary", old="stable", report=report,
                                label=f"{step} canary {weight:g} %") \
            if ops is not None and config.watch.enabled else None
        self.names = {s.upstream: s.name for s in services}  # judgements name the service
        self.last: list[Judgement] = []
        self.watched: list[dict[str, Any]] = []
        self.count = 0

    def look(self, *, final: bool, extended: float) -> HoldAction:
        """Read the new lines, judge every upstream, run the watch's checks, record the look; the hold's
        next move (a failed watch check rolls back like a failed judgement)."""
        self.count += 1
        action = self._judge(final, extended) if self.analysis is not None else \
            HoldAction("pass" if final else "continue", "")
        if self.watch is None:
            return action
        self.watched = self.watch.look()
        failed = [w for w in self.watched if w["decision"] == "fail"]
        if failed:
            return HoldAction("rollback", reason_of(failed))
        if self.analysis is None or action.action == "pass":
            reasons = "; ".join(r for r in (action.reason, reason_of(self.watched)) if r)
            return HoldAction(action.action, reasons)
        return action

    def _judge(self, final: bool, extended: float) -> HoldAction:
        assert self.analysis is not None
        if self.count > self.looks:  # more checks than planned (slow checks): judge the last ones alike
            self.analysis.looks = self.looks = self.count
        self.last = [replace(j, upstream=self.names.get(j.upstream, j.upstream))
                     for j in self.analysis.look()]
        for j in self.last:
            self.report.judgement(self.step, self.weight, j.as_dict())
        action = decide_hold(self.last, self.policy, final=final, extended=extended)
        if action.action in ("extend", "rollback", "pass") and not any(
                j.canary.requests + j.stable.requests for j in self.last):
            action = HoldAction(action.action, action.reason + " (no line in the access log: does the server "
                                "log ps_json? an access_log of its own or `access_log off` hides ps's)")
        return action

    def record(self, action: str, reason: str, extended: float) -> JudgedHold:
        return JudgedHold(self.step, self.weight, action, reason, self.count, round(extended, 3),
                          [j.as_dict() for j in self.last] + self.watched)

    def close(self) -> None:
        if self.analysis is not None:
            self.analysis.close()
        else:  # judged by the watch alone: the log was opened, never read
            for source in self.sources:
                source.close()


class WatchCheck:
    """The watch's checks of `new` slot from now on, against `old` (a slot in the same window) or a
    `baseline` (the previous version's figures per service, taken before the change), else against the
    limits alone. Every look goes on the report (`extra.watch`) and is returned as dicts."""

    def __init__(self, config: Config, ops: Any, services: Sequence[Service], new: str, *,
                 old: str | None = None, baseline: dict[str, Side] | None = None, report: Any = None,
                 label: str = "") -> None:
        self.policy = config.watch
        self.ops = ops
        self.services = list(services)
        self.new = new
        self.old = old
        self.baseline = baseline or {}
        self.report = report
        self.label = label
        self.since = ops.now()

    def look(self) -> list[dict[str, Any]]:
        """One look at every service: its verdict as a dict (`decision` pass | fail, `reason`, figures)."""
        from pipeline_steps.adapters.interfaces import EngineError
        from pipeline_steps.errors import PsError

        found = []
        for service in self.services:
            try:
                new = Side.of(self.new, self.ops.watch_figures(self.new, service, self.since))
                old = Side.of(self.old, self.ops.watch_figures(self.old, service, self.since)) if self.old \
                    else self.baseline.get(service.name)
                verdict = judge_watch(self.policy, service.name, new, old).as_dict()
            except (PsError, EngineError) as exc:  # unwatched is not healthy: the watch fails
                why = exc.message if isinstance(exc, PsError) else str(exc)
                verdict = {"kind": "watch", "upstream": service.name, "service": service.name,
                           "decision": "fail", "reason": f"watch: cannot read the containers' figures: "
                                                         f"{' '.join(why.split())[:200]}: fail",
                           "new": None, "old": None}
            found.append(verdict)
            if self.report is not None:
                self.report.extra.setdefault("watch", []).append(
                    {"t": round(self.report.elapsed(), 3), "at": self.label, **verdict})
        return found


def baseline_of(config: Config, ops: Any, services: Sequence[Service], slot: str,
                span: float) -> dict[str, Side]:
    """The previous version's figures before a change: `slot` over the last `span` seconds (or since it
    started), labelled as the previous version."""
    since = ops.now() - max(span, 60.0)
    return {s.name: replace(Side.of(slot, ops.watch_figures(slot, s, since)), slot=f"before ({slot})")
            for s in services}


def reason_of(judgements: Sequence[dict[str, Any]]) -> str:
    """One line with each upstream's numbers."""
    return "; ".join(f"{j['upstream']}: {j['reason']}" for j in judgements)
