"""A deploy as a plan: an ordered list of step objects run by one executor.

`Step` (one thing, by calling one operation of `DeployOps`) has a `describe()` line and `run()`;
`Plan` is the list plus what to do when a step fails with a rollback (traffic back to stable, or to
the kept color). `--dry-run` prints `Plan.lines()`; running calls `execute()`, which runs exactly the
same list, so the two cannot drift, and a kill point is between two steps. `Run` holds what the steps
share: the request, the operations, the outcome and report, and the moves several steps make
(gate, verify, hold, rollback to stable) printed the same way wherever they are used.

About 460 lines: `Run` keeps the moves several steps make (gate, verify, hold with its judged looks,
rollback in one reload or gradually) in one class, so each is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline_steps.config import Config, Service
from pipeline_steps.context import CIContext
from pipeline_steps.deploy.ops import DeployOps
from pipeline_steps.deploy.report import RunReport
from pipeline_steps.errors import BadInput, PsError

DEPLOY_TYPES = ("stable", "canary-manual", "canary-auto", "promote-canary", "rollback", "blue-green")


@dataclass(frozen=True)
class DeployRequest:
    """What `ps deploy` was asked to do."""

    type: str
    services: tuple[str, ...] = ()
    weight: float | None = None
    build_id: str | None = None
    to: str | None = None
    keep: float | None = None
    lock_wait: float = 0.0
    report: str | None = None
    notify: bool = True
    traffic_only: bool = False  # canary-auto: the canary is already deployed and gated (issue 15)


@dataclass
class DeployOutcome:
    """How the run ended, with the decisions taken on the way."""

    type: str
    result: str  # success | failure | rolled-back
    message: str
    build_ids: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    active: dict[str, str] = field(default_factory=dict)
    decisions: list[str] = field(default_factory=list)
    duration: float = 0.0
    report: list[str] = field(default_factory=list)
    rollback_seconds: float | None = None
    judgements: list[dict[str, Any]] = field(default_factory=list)  # canary.analysis: one per judged hold
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.result == "success"


class StepFailed(Exception):
    """A step said no; `rollback` tells whether traffic must go back (to stable or the kept color)."""

    def __init__(self, message: str, rollback: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.rollback = rollback


class Step:
    """One step of a plan: a line for --dry-run, and one thing done when it runs."""

    name = "step"

    def describe(self, run: Run) -> str:
        raise NotImplementedError

    def run(self, run: Run) -> None:
        raise NotImplementedError


@dataclass
class Plan:
    """A deployment type: its steps in order, and the recovery after a step failed with a rollback."""

    type: str
    steps: list[Step]
    recover: str | None = None  # "stable" (canary types) | "color" (blue-green) | None
    notify_started_in_thread: bool = False  # rollback: `started` goes out while the traffic moves
    message: Callable[[Run], str] | None = None  # the outcome's message after the last step

    def lines(self, run: Run) -> list[str]:
        return [step.describe(run) for step in self.steps]


Between = Callable[[int, Step], None]


def execute(plan: Plan, run: Run, between: Between | None = None) -> None:
    """Run the plan's steps in order; `between(i, step)` is called before every step but the first
    (the kill points of the fast tier)."""
    for number, step in enumerate(plan.steps):
        if between is not None and number:
            between(number, step)
        run.step_no = number
        step.run(run)


class Run:
    """The state one deploy's steps share, and the moves they make the same way."""

    def __init__(self, config: Config, request: DeployRequest, ctx: CIContext | None, ops: DeployOps,
                 say: Callable[[str], None]) -> None:
        self.config = config
        self.request = request
        self.ctx = ctx
        self.ops = ops
        self.say = say
        self.report = RunReport(app=config.app, deploy_type=request.type, timezone=config.timezone,
                                pipeline_url=ctx.pipeline_url if ctx else None, who=ctx.who if ctx else None)
        from pipeline_steps import sticky  # issue 13: the report names a sticky / segment split

        if sticky.enabled(config.canary):
            self.report.extra["traffic split"] = sticky.describe_mode(config.canary)
        self.outcome = DeployOutcome(type=request.type, result="failure", message="")
        self.failed_at: float | None = None
        self.stage = ""  # where the run is now ("canary 40 %"): a rolled-back message names it
        self.kept_color: dict[str, str] = {}  # blue-green: the color traffic goes back to
        self.builds: dict[str, str] = {}  # service -> the build it gets (through the canary)
        self.first: list[Service] = []  # through the canary: services whose canary goes first
        self.later: list[Service] = []  # ... and those whose canary gets the build last
        self.active: str | None = None  # blue-green: the color active before, and the target
        self.target = ""
        self.colors: dict[str, str] = {}  # rollback: service -> the color it goes back to
        self.restart: set[str] = set()  # rollback: services whose kept color is started and gated first
        self.step_no = 0

    # ---------------------------------------------------------------- small helpers

    def decide(self, line: str) -> None:
        """A decision, explained: printed, kept in the outcome and on the report timeline."""
        self.outcome.decisions.append(line)
        self.report.step(line)
        self.say(f"-> {line}")

    def services(self, kind: str) -> list[Service]:
        """The HTTP services of the request with a `kind` pair ([] when it names only workers)."""
        from pipeline_steps.operations.traffic import pair_services

        named = [n for n in self.request.services if self.config.service(n).is_http]
        if self.request.services and not named:
            return []
        if not named and self.workers() and not any(s.pair(kind) for s in self.config.services.values()):
            return []  # an app of workers only
        return pair_services(self.config, kind, named or None)

    def workers(self) -> list[Service]:
        """The workers of the request (all of them when it names no service)."""
        chosen = [self.config.service(n) for n in self.request.services] if self.request.services \
            else list(self.config.services.values())
        return [s for s in chosen if s.is_worker]

    def services_or_empty(self, kind: str) -> list[Service]:
        try:
            return self.services(kind)
        except BadInput:
            if self.request.services:
                named = [self.config.service(n) for n in self.request.services]
                return [s for s in named if s.pair(kind)]
            return []

    def build_id(self) -> str:
        if self.request.build_id:
            return self.request.build_id
        if self.ctx is None:
            raise BadInput("no BUILD_ID: not in CI and not in a git checkout; give --build-id")
        return self.ctx.build_id

    def probing(self, services: Sequence[Service]) -> bool:
        """Whether verify measures the live split (canary.probe > 0 and a URL to probe)."""
        return bool(self.config.canary.probe) and any(s.url for s in services)

    # ---------------------------------------------------------------- the moves

    def deploy(self, slot: str, services: Sequence[Service], build_id: str, force: bool = False) -> None:
        changed = self.ops.deploy_slot(slot, services, build_id, force)
        for service in services:
            self.outcome.build_ids[f"{service.name}/{slot}"] = build_id
            self.report.build_ids[f"{service.name}/{slot}"] = build_id
        if not changed:
            names = ", ".join(s.name for s in services)
            self.say(f"{slot}: {names} already run {build_id}, nothing replaced")

    def gate(self, slot: str, services: Sequence[Service], rollback_on_failure: bool = False) -> None:
        """health-gate every host's `slot` of each service with its ps.yaml policy."""
        for service in services:
            result = self.ops.gate(slot, service)
            self.report.health(service.name, result.healthy,
                               f"{slot} gate: {result.reason} after {result.tries} tries")
            if not result.healthy:
                raise StepFailed(f"{service.name}/{slot} is not healthy after {result.tries} tries: "
                                 f"{result.reason}", rollback=rollback_on_failure)
            self.say(f"{service.name}/{slot} healthy ({result.tries} tries, {result.elapsed:.2f}s)")

    def set_weights(self, pct: float, services: Sequence[Service]) -> None:
        self.ops.set_weights(pct, [s.name for s in services])
        for service in services:
            self.outcome.weights[service.name] = pct
        self.report.weights({s.name: pct for s in services}, f"canary {pct:g} %")

    def switch(self, color: str, services: Sequence[Service]) -> None:
        self.ops.switch(color, [s.name for s in services])
        for service in services:
            self.outcome.active[service.name] = color
        self.report.weights({s.name: 100.0 if color == "green" else 0.0 for s in services}, f"{color} active")

    def verify(self, services: Sequence[Service], *, canary: float | None = None, active: str | None = None,
               rollback_on_failure: bool = False, measure: bool = True) -> None:
        """verify-weights against the live upstream file, and (measure, canary.probe > 0) the live split."""
        problems = self.ops.verify([s.name for s in services], canary, active)
        measured = False
        if not problems and measure and self.probing(services):
            problems = self.take_measures(self.measure(services, canary=canary, active=active))
            measured = True
        if problems:
            raise StepFailed(f"weights not as expected: {'; '.join(problems)}", rollback=rollback_on_failure)
        self.say(f"verified: {_what(canary, active)} live in nginx" + (" and measured" if measured else ""))

    def measure(self, services: Sequence[Service], *, canary: float | None = None,
                active: str | None = None) -> list[dict[str, Any]]:
        """The live split measured through nginx, one verdict per service (safe to run in a thread)."""
        return [v for s in services if s.url for v in self.ops.measure(s, canary, active)]

    def take_measures(self, verdicts: list[dict[str, Any]]) -> list[str]:
        """Print and record the measured splits; the problems found."""
        for svc in verdicts:
            m = svc.get("measured") or {}
            if m and m.get("by") == "keys":  # issue 13: a sticky split is measured by keys
                self.say(f"{svc['service']}: {m['slot']} got {100 * m['share']:.1f} % of {m['valid']} keys "
                         f"by {m['key']} (target {100 * m['expected_share']:.1f} %, "
                         f"{m['keys_on_both_slots']} keys on both slots, "
                         f"{m.get('keys_off_their_slot', 0)} off their slot)")
                self.report.add("step", f"{svc['service']}: measured {m['slot']} "
                                f"{100 * m['share']:.1f} % of {m['valid']} keys")
            elif m:
                self.say(f"{svc['service']}: {m['slot']} answered {100 * m['share']:.1f} % of "
                         f"{m['requests']} requests (target {100 * m['expected_share']:.1f} %)")
                self.report.add("step", f"{svc['service']}: measured {m['slot']} "
                                f"{100 * m['share']:.1f} % over {m['requests']} requests")
        return [p for svc in verdicts for p in svc.get("problems", [])]

    def hold(self, services: Sequence[Service], pause: float, checks: int | None, *, slot: str = "canary",
             canary: float | None = None, active: str | None = None, during: str = "the hold",
             judge: str | None = None, observe: bool = False) -> None:
        """Keep the traffic for `pause` seconds, checking `slot`'s health every check interval.

        With canary.probe > 0 the live split is measured meanwhile: the checks keep their cadence, the
        hold lasts until both the pause and the probe are over, and the first unhealthy check ends the
        step at once (StepFailed, rollback) whatever the probe is doing.

        With `judge` (the step's label, canary.analysis on) the canary is judged against stable after
        every check from the access log written since the hold began: a failed judgement ends the hold
        (JudgementFailed), an inconclusive one at the end extends it up to canary.analysis.extend, then
        the policy decides. `observe`: judged and recorded, never deciding (a gradual rollback's step).
        """
        interval = self.config.canary.check_interval
        if checks and pause > 0:
            interval = pause / checks
        judging = self._judging(services, pause, interval, canary, judge) if judge else None
        try:
            self._hold(services, pause, interval, slot, canary, active, during, judging, observe)
        finally:
            if judging is not None:
                judging.close()

    def _judging(self, services: Sequence[Service], pause: float, interval: float, canary: float | None,
                 step: str) -> Any:
        from pipeline_steps.deploy.judging import HoldJudge

        holds = max(1, len(self.config.canary.steps))  # the deploy's alpha is shared by its holds
        return HoldJudge(self.config, services, self.ops.access_logs(services), pause=pause,
                         interval=interval, weight=canary or 0.0, step=step, holds=holds, report=self.report,
                         clock=self.ops.now, ops=self.ops)

    def _hold(self, services: Sequence[Service], pause: float, interval: float, slot: str,
              canary: float | None, active: str | None, during: str, judging: Any, observe: bool) -> None:
        ops = self.ops
        probe = ops.start_probe(lambda: self.measure(services, canary=canary, active=active)) \
            if self.probing(services) else None
        started = ops.now()
        end = started + pause
        count = 0
        extended = 0.0
        while True:
            for service in services:
                record = ops.check_once(slot, service)
                count += 1
                self.report.health(service.name, record.ok, f"{slot} check: {record.reason or 'ok'}")
                if not record.ok:
                    self.failed_at = ops.now()
                    what = "the probe" if probe and not probe.is_done() else during
                    raise StepFailed(f"{service.name}/{slot} turned unhealthy during {what}: "
                                     f"{record.reason}", rollback=True)
            final = ops.now() >= end and (probe is None or probe.read)
            if judging is not None:
                action = judging.look(final=final, extended=extended)
                if observe and final:
                    self._judged(judging.record("observed", action.reason, extended))
                elif not observe and action.action == "rollback":
                    self.failed_at = ops.now()
                    self._judged(judging.record("rollback", action.reason, extended))
                    from pipeline_steps.deploy.judging import JudgementFailed

                    raise JudgementFailed(f"judgement at canary {canary or 0:g} %: {action.reason}",
                                          canary or 0.0)
                elif not observe and action.action == "extend":
                    grow = min(interval, self.config.canary.analysis.extend - extended)
                    if not extended:
                        self.decide(f"judgement inconclusive at canary {canary or 0:g} %: {action.reason}; "
                                    f"extending the hold up to "
                                    f"{self.config.canary.analysis.extend:g}s")
                    end += grow
                    extended += grow
                    final = False
                elif not observe and action.action == "pass" and final:
                    self._judged(judging.record("pass", action.reason, extended))
            if final:  # the end of the hold, decided before the last look (which takes time)
                self.say(f"held {ops.now() - started:.1f}s, {slot} healthy in {count} checks"
                         + (" while the live split was measured" if probe else ""))
                return
            next_check = ops.now() + interval
            while True:  # until the next check; a probe that ends meanwhile is read at once
                if probe is not None and probe.is_done() and not probe.read:
                    self._probe_verdict(probe.result, canary, active)
                now = ops.now()
                if now >= next_check or (now >= end and (probe is None or probe.read)):
                    break  # the next check (the last one when the hold is over)
                ops.pause(min(next_check, end) - now if end > now else next_check - now, probe)

    def _judged(self, held: Any) -> None:
        """A judged hold's end: its numbers printed as a decision, kept in the outcome."""
        self.outcome.judgements.append(asdict(held))
        self.decide(f"judgement {held.line()}")

    def _probe_verdict(self, result: Callable[[], list[dict[str, Any]]], canary: float | None,
                       active: str | None) -> None:
        try:
            problems = self.take_measures(result())
        except PsError as exc:
            raise StepFailed(f"measuring the live split failed: {exc.message}", rollback=True) from None
        if problems:
            self.failed_at = self.ops.now()
            raise StepFailed(f"weights not as expected: {'; '.join(problems)}", rollback=True)
        self.say(f"verified: {_what(canary, active)} live in nginx and measured")

    def not_serving(self, slot: str, services: Sequence[Service]) -> dict[str, str]:
        """The services whose `slot` does not answer healthy on every host, with why (a true sentence).

        One health check over HTTP each; the engine is asked only about a slot that failed it.
        """
        why: dict[str, str] = {}
        for service in services:
            record = self.ops.check_once(slot, service, logs_fallback=False)
            if not record.ok:
                why[service.name] = f"answers no healthy {service.health.path} ({record.reason})"
        if why:
            states = [s for s in self.ops.slots() if s.slot == slot and s.service in why]
            for name in why:
                down = [s for s in states if s.service == name and s.state != "running"]
                if down and all(s.state == "missing" for s in down):
                    many = len(self.config.hosts) > 1
                    why[name] = "has no container" + (f" on host {down[0].host}" if many else "")
                elif down:
                    gone = next(s for s in down if s.state != "missing")
                    why[name] = f"is {gone.state} ({gone.container} on host {gone.host})"
        return why

    def rollback_to_stable(self, services: Sequence[Service], reason: str, after_check: bool = True) -> None:
        """All traffic back on stable in one reload (no Docker call in the way), then verified."""
        started = (self.failed_at if after_check else None) or self.ops.now()
        self.report.rollback(f"rollback: {reason}")
        self.decide(f"{reason}: rolling back {', '.join(s.name for s in services)} to stable 100 % (canary "
                    f"keeps the minimum weight {self.config.canary.min_weight})")
        self.set_weights(0, services)
        self.outcome.rollback_seconds = round(self.ops.now() - started, 3)
        self.verify(services, canary=0)
        since = "after the failed check" if after_check else "after the rollback began"
        self.say(f"traffic back on stable {self.outcome.rollback_seconds:.3f}s {since}")

    def rollback_gradually(self, services: Sequence[Service], reason: str, weight: float) -> str:
        """canary.rollback gradual, after a failed judgement: back through the lower steps' weights to
        0 %, each verified and held a few checks (canary health, stable health, the judgement observed);
        a failed check or change sends the rest to stable at once. What was done."""
        from pipeline_steps.deploy.holds import gradual_hold, rollback_weights

        started = self.failed_at or self.ops.now()
        weights = rollback_weights(self, weight)
        names = ", ".join(s.name for s in services)
        self.report.rollback(f"gradual rollback: {reason}")
        self.decide(f"{reason}: rolling back {names} gradually: {weight:g} % -> "
                    + " -> ".join(f"{w:g} %" for w in weights))
        judged = self.config.canary.analysis.enabled
        for pct in weights:
            self.stage = f"gradual rollback {pct:g} %"
            try:
                self.set_weights(pct, services)
                self.verify(services, canary=pct)
                if pct <= 0:
                    break
                self.hold(services, gradual_hold(self), None, canary=pct, during=f"the rollback at {pct:g} %",
                          judge=f"rollback {pct:g} %" if judged else None, observe=True)
                for service in services:
                    record = self.ops.check_once("stable", service)
                    self.report.health(service.name, record.ok, f"stable check: {record.reason or 'ok'}")
                    if not record.ok:
                        raise StepFailed(f"{service.name}/stable turned unhealthy during the rollback at "
                                         f"{pct:g} %: {record.reason}")
            except (StepFailed, PsError) as exc:
                self.failed_at = self.ops.now()
                self.rollback_to_stable(services, f"{exc.message}: the rest of the rollback at once")
                return (f"rolled back to stable 100 % (the gradual rollback went at once at {pct:g} %: "
                        f"{exc.message})")
        self.outcome.rollback_seconds = round(self.ops.now() - started, 3)
        self.say(f"traffic back on stable {self.outcome.rollback_seconds:.3f}s after the failed judgement, "
                 f"through {len(weights)} steps")
        return "rolled back to stable 100 % gradually (" + " -> ".join(f"{w:g} %" for w in weights) + ")"

    def switch_back(self, reason: str) -> str:
        """blue-green: traffic back to the kept color in one reload, verified; what was done."""
        services = [self.config.service(n) for n in self.kept_color]
        color = next(iter(self.kept_color.values()))
        started = self.failed_at or self.ops.now()
        broken = self.not_serving(color, services)
        if broken:  # switching to a color that does not answer would make it worse
            raise StepFailed("; ".join(f"{n}: the kept color {color} {why} too" for n, why in broken.items())
                             + ", so the traffic stays where it is")
        self.report.rollback(f"rollback: {reason}")
        names = ", ".join(s.name for s in services)
        self.decide(f"{reason}: switching {names} back to {color} (kept running)")
        self.switch(color, services)
        self.outcome.rollback_seconds = round(self.ops.now() - started, 3)
        self.verify(services, active=color)
        self.say(f"traffic back on {color} {self.outcome.rollback_seconds:.3f}s after the failed check")
        return f"switched back to {color}"

    def live_canary_build(self, service: Service) -> str:
        """The BUILD_ID the canary slot runs now (the same on every host, or an error)."""
        builds = {s.build_id for s in self.ops.slots()
                  if s.service == service.name and s.slot == "canary" and s.state == "running"}
        builds.discard(None)
        if not builds:
            raise StepFailed(f"{service.name}: no canary is running to promote")
        if len(builds) > 1:
            raise StepFailed(f"{service.name}: canary runs different BUILD_IDs on the hosts: "
                             f"{', '.join(sorted(b for b in builds if b))}")
        return str(builds.pop())


def _what(canary: float | None, active: str | None) -> str:
    return f"canary {canary:g} %" if canary is not None else f"{active} active"
