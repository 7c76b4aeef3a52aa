"""The steps that hold traffic and watch it, and the ones that move it back.

`Hold` (a canary step's pause), `Watch` (blue-green after the switch, the keep period included, and
promote-canary with a `watch:` section: health plus the watch's checks, against `WatchBaseline`'s
figures of the previous version) and `StopOld` (the old color, only after a healthy watch); rollback's
`ToStable`, `KeptColor`, `StartKept` and `SwitchBack` (a kept color that does not answer is started
and gated first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline_steps.config import Service
from pipeline_steps.deploy.ops import SlotMissing
from pipeline_steps.deploy.plan import Run, Step, StepFailed
from pipeline_steps.deploy.steps import other_color
from pipeline_steps.errors import PsError


class RolledBack(StepFailed):
    """A step that failed and already put the previous version back (`done` says how): the frame only
    reports it as rolled back (promote-canary's watch redeploys the previous stable build)."""

    def __init__(self, message: str, done: str) -> None:
        super().__init__(message, rollback=False)
        self.done = done


def every(run: Run) -> str:
    policy = run.config.canary
    probe = f"; the live split measured over {policy.probe} requests meanwhile" if policy.probe else ""
    return f"checking health every {policy.check_interval:g}s{probe}"


@dataclass
class Hold(Step):
    """Keep the canary's share for `pause` seconds, health checked all along (the probe included)."""

    services: list[Service]
    pause: float
    checks: int | None
    canary: float
    during: str = "the hold"
    step: str | None = None  # canary-auto: "2/3", the step judged when canary.analysis is on
    name = "hold"

    def judged(self, run: Run) -> bool:
        judging = run.config.canary.analysis.enabled or run.config.watch.enabled
        return bool(self.step) and judging and self.during == "the hold"

    def describe(self, run: Run) -> str:
        if self.during == "the probe":
            return f"{every(run)} while the probe runs (failure: rollback to stable)"
        if self.judged(run):
            what = []
            if run.config.canary.analysis.enabled:
                what.append(f"judging canary against stable from the access log at each check "
                            f"({judging_terms(run)}")
            if run.config.watch.enabled:
                what.append(f"watching the canary's containers against stable's at each check "
                            f"({run.config.watch.terms()}")
            return (f"hold {self.pause:g}s {every(run)} and {'; and '.join(what)}; unhealthy: rollback to "
                    f"stable at once; judgement failed: {back_from(run, self.canary)}, notify, exit 1)")
        return f"hold {self.pause:g}s {every(run)} (failure: rollback to stable, notify, exit 1)"

    def run(self, run: Run) -> None:
        if self.during == "the probe" and not run.probing(self.services):
            return
        run.hold(self.services, self.pause, self.checks, canary=self.canary, during=self.during,
                 judge=self.step if self.judged(run) else None)


def judging_terms(run: Run) -> str:
    a = run.config.canary.analysis
    return (f"fail: {'4xx+5xx' if a.count_4xx else '5xx'} +{a.max_error_rate_increase * 100:g} pp or p99 "
            f"+{a.max_p99_increase * 1000:g} ms at {a.confidence * 100:g} % confidence; fewer than "
            f"{a.min_requests} requests a side: extend up to {a.extend:g}s, then {a.inconclusive}")


def rollback_weights(run: Run, weight: float) -> list[float]:
    """canary.rollback gradual: the weights a failed judgement at `weight` steps back through, to 0."""
    below = sorted({float(s.weight) for s in run.config.canary.steps if s.weight < weight}, reverse=True)
    return [w for w in below if w > 0] + [0.0]


def back_from(run: Run, weight: float) -> str:
    """What a failed judgement at `weight` does, as the plan says it."""
    if run.config.canary.rollback != "gradual":
        return "rollback to stable in one reload"
    steps = " -> ".join(f"{w:g} %" for w in rollback_weights(run, weight))
    judged = " and judged" if run.config.canary.analysis.enabled else ""
    return (f"gradual rollback {weight:g} % -> {steps}, each verified, health-checked{judged} for "
            f"{gradual_hold(run):g}s (unhealthy: stable at once)")


def gradual_hold(run: Run) -> float:
    """How long each step of a gradual rollback is held: three check intervals."""
    return 3 * run.config.canary.check_interval


def keep_of(run: Run) -> float | None:
    """blue-green --keep (default deploy.blue_green_keep): None keeps the old color running."""
    return run.request.keep if run.request.keep is not None else run.config.deploy.blue_green_keep


def stops_old(run: Run) -> bool:
    """blue-green: the old color is stopped after the watch (there is one, and a keep period is set)."""
    return bool(run.active) and keep_of(run) is not None


def watch_span(run: Run, active: bool = True) -> float:
    """How long the new color is watched: watch.duration (else blue_green.watch), and through the keep
    period when the old color is stopped after it (the lock is held for it, but as a watch, never as a
    blind sleep)."""
    keep = keep_of(run)
    watch = run.config.watch.duration
    watch = run.config.blue_green.watch if watch is None else watch
    return max(watch, keep) if active and keep is not None else watch


def promote_watched(run: Run) -> bool:
    """promote-canary gets a watch: a `watch:` section with checks and a duration above 0."""
    return run.config.watch.enabled and bool(run.config.watch.duration)


@dataclass
class WatchBaseline(Step):
    """Before the change, the previous version's figures (the watch's baseline): `slot` "stable"
    (promote-canary, whose build is also what a failed watch goes back to) or "active" (blue-green)."""

    services: list[Service]
    slot: str
    figures: dict[str, Any] = field(default_factory=dict)
    builds: dict[str, str] = field(default_factory=dict)
    name = "watch-baseline"

    def describe(self, run: Run) -> str:
        what = "stable's" if self.slot == "stable" else "the active color's"
        return (f"note {what} CPU, memory and error lines per minute before the change (the watch's "
                "baseline)")

    def run(self, run: Run) -> None:
        from pipeline_steps.deploy.judging import baseline_of

        slot = run.active if self.slot == "active" else self.slot
        if not slot:
            return
        self.builds = {s.service: str(s.build_id) for s in run.ops.slots()
                       if s.slot == slot and s.state == "running" and s.build_id}
        self.figures = baseline_of(run.config, run.ops, self.services, slot,
                                   run.config.watch.duration or watch_span(run))
        for name, side in self.figures.items():
            run.say(f"{name}/{slot} before the change: CPU {_or(side.cpu_percent, ' %')}, memory "
                    f"{_or(side.memory_percent, ' %')}, {_or(side.per_minute, ' error lines/min')}")


def _or(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:g}{unit}"


@dataclass
class Watch(Step):
    """After blue-green's switch (failure: switch back) or promote-canary (`kind` "promote", failure:
    the previous stable build back through the canary): the new version's health checked like a canary
    hold, and with a `watch:` section its containers every watch.interval against the baseline."""

    services: list[Service]
    kind: str = "blue-green"
    baseline: WatchBaseline | None = None
    name = "watch"

    def span(self, run: Run, active: bool = True) -> float:
        if self.kind == "promote":
            return float(run.config.watch.duration or 0.0)
        return watch_span(run, active)

    def describe(self, run: Run) -> str:
        span = self.span(run)
        w = run.config.watch
        checks = (f" and its containers every {w.interval:g}s ({w.terms()}; against the previous version's "
                  "figures from before the change)") if w.enabled else ""
        if self.kind == "promote":
            return (f"watch stable {span:g}s {every(run)}{checks} (failure: the previous stable build back "
                    "through the canary slot, exit 1)")
        if span <= 0:
            return f"{every(run)} once before the old color may stop (failure: switch back, exit 1)"
        return (f"watch it {span:g}s {every(run)}{checks} (failure: switch back to the old color at once, "
                "verify, exit 1)")

    def run(self, run: Run) -> None:
        span = self.span(run, active=run.active is not None)
        target = "stable" if self.kind == "promote" else run.target
        w = run.config.watch
        if span > 0:
            back = f"traffic back to {run.active} at once" if run.active else "no kept color to go back to"
            if self.kind == "promote":
                back = "the previous stable build back through the canary"
            checks = f", its containers every {w.interval:g}s" if w.enabled else ""
            run.decide(f"watching {target} for {span:g}s, health every {run.config.canary.check_interval:g}s"
                       f"{checks} (failure: {back}, exit 1)")
            run.stage = f"{target} watch"
            if not w.enabled:
                run.hold(self.services, span, None, slot=target, active=target, during="the watch")
                return
            try:
                self.watch(run, span, target)
            except StepFailed as exc:
                if self.kind != "promote" or isinstance(exc, RolledBack):
                    raise
                done = self.back_to_previous(run, exc.message)
                if done is None:
                    raise StepFailed(f"{exc.message}; no previous stable build to go back to") from None
                raise RolledBack(exc.message, done) from None
        elif self.kind != "promote" and (run.probing(self.services) or stops_old(run)):
            run.hold(self.services, 0.0, None, slot=target, active=target,
                     during="the probe" if run.probing(self.services) else "the watch")

    def watch(self, run: Run, span: float, target: str) -> None:
        """Health every check interval, the watch's checks every watch.interval, until `span` is over."""
        from pipeline_steps.deploy.judging import WatchCheck, reason_of

        base = self.baseline.figures if self.baseline is not None else {}
        checks = WatchCheck(run.config, run.ops, self.services, target, baseline=base, report=run.report,
                            label=f"{target} watch")
        end = run.ops.now() + span
        looks = 0
        while True:
            run.hold(self.services, min(run.config.watch.interval, max(0.0, end - run.ops.now())), None,
                     slot=target, active=target, during="the watch")
            found = checks.look()
            looks += 1
            for verdict in found:
                run.say(f"{verdict['upstream']}/{target} {verdict['reason']}")
            failed = [v for v in found if v["decision"] == "fail"]
            done = run.ops.now() >= end
            if failed or done:
                action = "rollback" if failed else "pass"
                reason = reason_of(failed or found)
                run.outcome.judgements.append({"step": f"{target} watch", "weight": 100.0, "action": action,
                                               "reason": reason, "looks": looks, "extended": 0.0,
                                               "judgements": found})
                run.decide(f"watch {target} ({looks} looks): {action}: {reason}")
                if failed:
                    run.failed_at = run.ops.now()
                    raise StepFailed(f"watch of {target}: {reason}", rollback=True)
                return

    def back_to_previous(self, run: Run, reason: str) -> str | None:
        """promote-canary's failed watch: each service's previous stable build back through the canary
        slot (as rollback --to does), never an upstream without a healthy server."""
        from pipeline_steps.deploy.types import through_canary

        builds = self.baseline.builds if self.baseline is not None else {}
        run.report.rollback(f"rollback: {reason}")
        done = []
        for service in self.services:
            build = builds.get(service.name)
            if not build or build == run.builds.get(service.name):
                continue
            run.stage = f"back to {build}"
            run.builds = {service.name: build}
            intro = "{names}: the watch failed: redeploying the previous stable build {build} through the " \
                    "canary slot"
            try:
                for step in through_canary([service], build, intro):
                    step.run(run)
            except (StepFailed, PsError) as exc:
                raise StepFailed(f"{reason}; ROLLBACK FAILED: {exc.message}") from None
            done.append(f"{service.name} {build}")
        if not done:
            return None
        return "rolled back to the previous stable build (" + ", ".join(done) + ", through the canary slot)"


@dataclass
class StopOld(Step):
    """The old color stopped after the healthy watch (with --keep), or kept as the instant rollback."""

    services: list[Service]
    name = "stop-old"

    def describe(self, run: Run) -> str:
        keep = keep_of(run)
        if keep is None:
            return "keep the old color as backup"
        return f"stop the old color after {watch_span(run):g}s"

    def run(self, run: Run) -> None:
        active = run.active
        if active and stops_old(run):
            span = watch_span(run)
            if span > 0:
                run.decide(f"stopping the old color {active}: {run.target} stayed healthy for {span:g}s")
            else:
                run.decide(f"stopping the old color {active} after {keep_of(run):g}s")
            run.ops.stop_slot(active, self.services)
        elif active:
            run.say(f"{active} stays running as backup for an instant rollback")
        run.outcome.message = f"{run.target} runs {run.build_id()} and carries the traffic"


@dataclass
class ToStable(Step):
    """rollback: all the canary services' traffic on stable in one reload, verified (no engine call)."""

    services: list[Service]
    name = "to-stable"

    def describe(self, run: Run) -> str:
        return (f"all traffic of {', '.join(s.name for s in self.services)} to stable in one reload "
                "(canary keeps the minimum weight), verified")

    def run(self, run: Run) -> None:
        run.stage = "rollback to stable"
        run.rollback_to_stable(self.services, "rollback requested", after_check=False)


@dataclass
class KeptColor(Step):
    """rollback, blue-green: the color to go back to (from the live include only) and whether it
    answers healthy (else it is started and gated before traffic moves)."""

    service: Service
    name = "kept-color"

    def describe(self, run: Run) -> str:
        return (f"{self.service.name}: back to the kept color (read from nginx); a kept color that does not "
                "answer healthy is started and gated first, else exit 1")

    def run(self, run: Run) -> None:
        name = self.service.name
        active = run.ops.live_active(self.service)
        if active is None:
            run.say(f"{name}: no active color in nginx, nothing to switch back")
            return
        previous = other_color(active)
        run.colors[name] = previous
        run.stage = f"switch back to {previous}"
        why = run.not_serving(previous, [self.service]).get(name)
        if why:
            run.restart.add(name)
            run.decide(f"{name}: {previous} {why}: starting it and gating it before traffic "
                       f"moves (traffic stays on {active} until then)")


def kept_color(run: Run, service: Service) -> tuple[str, str | None]:
    """rollback, blue-green: the service's name and the color KeptColor chose to go back to (None:
    nothing to switch back, the decision StartKept and SwitchBack both start from)."""
    return service.name, run.colors.get(service.name)


@dataclass
class StartKept(Step):
    service: Service
    name = "start-kept"

    def describe(self, run: Run) -> str:
        return f"{self.service.name}: start the kept color if it is not running, and gate it"

    def run(self, run: Run) -> None:
        name, color = kept_color(run, self.service)
        if not color or name not in run.restart:
            return
        active = other_color(color)
        try:
            for line in run.ops.start_slot(color, self.service):
                run.say(line)
        except SlotMissing as exc:
            raise StepFailed(f"{name}: {color} has no container {exc.container} on host {exc.host}: "
                             f"nothing to switch back to, traffic stays on {active}; deploy a "
                             "build with ps deploy --type blue-green") from None
        run.gate(color, [self.service])


@dataclass
class SwitchBack(Step):
    service: Service
    name = "switch-back"

    def describe(self, run: Run) -> str:
        return f"{self.service.name}: switch to the kept color in one reload, verify"

    def run(self, run: Run) -> None:
        name, color = kept_color(run, self.service)
        if not color:
            return
        run.decide(f"{name}: switching back to {color} ("
                   + ("restarted and gated healthy)" if name in run.restart else
                      "kept as backup, answers healthy)"))
        run.switch(color, [self.service])
        run.verify([self.service], active=color)
