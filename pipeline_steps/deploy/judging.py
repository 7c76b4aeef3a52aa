"""canary.analysis inside a deploy: one hold's judgement, canary against stable, from nginx's access log.

`HoldJudge` is opened by a hold once the step's weight is live (only lines written from then on
count), looks after every health check (the looks are planned: pause / interval, plus the extension),
and says what the hold does (`decide_hold`): continue, extend, pass, or rollback. Every look is kept
on the report (the judgement plot of the step); the last one of a hold goes into the outcome
(`--json`), the history and the notification with its numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipeline_steps.analysis import HoldAction, Judgement, SlotMap, StepAnalysis, decide_hold, planned_looks
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
    """The judgement of one hold (see the module doc); `close()` when the hold ends."""

    def __init__(self, config: Config, services: Sequence[Service], sources: Sequence[Any], *, pause: float,
                 interval: float, weight: float, step: str, holds: int, report: Any, clock: Any) -> None:
        self.policy = config.canary.analysis
        self.weight = weight
        self.step = step
        self.report = report
        self.clock = clock
        self.started = clock()
        # a look at every check from 0 to the end of the pause and the extension (the first sees no line)
        self.looks = planned_looks(pause, interval, self.policy.extend) + 2
        self.analysis = StepAnalysis([], SlotMap.from_config(config, [s.name for s in services]), self.policy,
                                     self.looks, upstreams=[s.upstream for s in services], holds=holds,
                                     sources=sources)
        self.names = {s.upstream: s.name for s in services}  # judgements name the service
        self.last: list[Judgement] = []
        self.count = 0

    def look(self, *, final: bool, extended: float) -> HoldAction:
        """Read the new lines, judge every upstream, record the look; the hold's next move."""
        if self.count >= self.looks:  # more checks than planned (slow checks): judge the last ones alike
            self.analysis.looks = self.looks = self.count + 1
        self.count += 1
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
                          [j.as_dict() for j in self.last])

    def close(self) -> None:
        self.analysis.close()


def reason_of(judgements: Sequence[dict[str, Any]]) -> str:
    """One line with each upstream's numbers."""
    return "; ".join(f"{j['upstream']}: {j['reason']}" for j in judgements)
