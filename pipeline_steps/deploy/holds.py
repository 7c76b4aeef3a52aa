"""The steps that hold traffic and watch it, and the ones that move it back.

`Hold` (a canary step's pause), `Watch` (blue-green after the switch, the keep period included) and
`StopOld` (the old color, only after a healthy watch); rollback's `ToStable`, `KeptColor`,
`StartKept` and `SwitchBack` (a kept color that does not answer is started and gated first).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline_steps.config import Service
from pipeline_steps.deploy.ops import SlotMissing
from pipeline_steps.deploy.plan import Run, Step, StepFailed


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
        return bool(self.step) and run.config.canary.analysis.enabled and self.during == "the hold"

    def describe(self, run: Run) -> str:
        if self.during == "the probe":
            return f"{every(run)} while the probe runs (failure: rollback to stable)"
        if self.judged(run):
            return (f"hold {self.pause:g}s {every(run)} and judging canary against stable from the access "
                    f"log at each check ({judging_terms(run)}; unhealthy: rollback to stable at once; "
                    f"judgement failed: {back_from(run, self.canary)}, notify, exit 1)")
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
    return (f"gradual rollback {weight:g} % -> {steps}, each verified, health-checked and judged for "
            f"{gradual_hold(run):g}s (unhealthy: stable at once)")


def gradual_hold(run: Run) -> float:
    """How long each step of a gradual rollback is held: three check intervals."""
    return 3 * run.config.canary.check_interval


def keep_of(run: Run) -> float | None:
    """blue-green --keep (default deploy.blue_green_keep): None keeps the old color running."""
    return run.request.keep if run.request.keep is not None else run.config.deploy.blue_green_keep


def watch_span(run: Run, active: bool = True) -> float:
    """How long the new color is watched: blue_green.watch, and through the keep period when the old
    color is stopped after it (the lock is held for it, but as a watch, never as a blind sleep)."""
    keep = keep_of(run)
    watch = run.config.blue_green.watch
    return max(watch, keep) if active and keep is not None else watch


@dataclass
class Watch(Step):
    """blue-green after the switch: the new color watched like a canary hold (failure: switch back)."""

    services: list[Service]
    name = "watch"

    def describe(self, run: Run) -> str:
        span = watch_span(run)
        if span <= 0:
            return f"{every(run)} once before the old color may stop (failure: switch back, exit 1)"
        return (f"watch it {span:g}s {every(run)} (failure: switch back to the old color at once, verify, "
                "exit 1)")

    def run(self, run: Run) -> None:
        span = watch_span(run, active=run.active is not None)
        target = run.target
        if span > 0:
            back = f"traffic back to {run.active} at once" if run.active else "no kept color to go back to"
            run.decide(f"watching {target} for {span:g}s, health every {run.config.canary.check_interval:g}s "
                       f"(failure: {back}, exit 1)")
            run.stage = f"{target} watch"
            run.hold(self.services, span, None, slot=target, active=target, during="the watch")
        elif run.probing(self.services) or (run.active and keep_of(run) is not None):
            run.hold(self.services, 0.0, None, slot=target, active=target,
                     during="the probe" if run.probing(self.services) else "the watch")


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
        if active and keep_of(run) is not None:
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
        previous = "green" if active == "blue" else "blue"
        run.colors[name] = previous
        run.stage = f"switch back to {previous}"
        why = run.not_serving(previous, [self.service]).get(name)
        if why:
            run.restart.add(name)
            run.decide(f"{name}: {previous} {why}: starting it and gating it before traffic "
                       f"moves (traffic stays on {active} until then)")


@dataclass
class StartKept(Step):
    service: Service
    name = "start-kept"

    def describe(self, run: Run) -> str:
        return f"{self.service.name}: start the kept color if it is not running, and gate it"

    def run(self, run: Run) -> None:
        name = self.service.name
        if name not in run.restart:
            return
        color = run.colors[name]
        active = "green" if color == "blue" else "blue"
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
        name = self.service.name
        color = run.colors.get(name)
        if not color:
            return
        run.decide(f"{name}: switching back to {color} ("
                   + ("restarted and gated healthy)" if name in run.restart else
                      "kept as backup, answers healthy)"))
        run.switch(color, [self.service])
        run.verify([self.service], active=color)
