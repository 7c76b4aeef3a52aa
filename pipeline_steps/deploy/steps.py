"""The step classes deploy plans are made of: each does one thing through `DeployOps`.

A step whose work depends on the live state (which slot serves, which color is active, which build
the canary runs) reads it when it runs and prints what it found as a decision (`-> ...`); the steps
after it act on what it left in `Run` (`run.first`, `run.builds`, `run.target`, ...). A step whose
group is empty at run time does nothing, so the plan's list is the same whatever the state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline_steps.config import Service
from pipeline_steps.deploy.history import HistoryLog
from pipeline_steps.deploy.plan import Run, Step, StepFailed
from pipeline_steps.errors import PsError

Group = Callable[[Run], Sequence[Service]]


def names(services: Sequence[Service]) -> str:
    return ", ".join(s.name for s in services)


def other_color(color: str | None) -> str:
    """blue-green: the color that is not `color` (no color yet: blue)."""
    return "green" if color == "blue" else "blue"


def down_slots(run: Run, services: Sequence[Service], *,
               canary_only_where_stable_is_down: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """Which slots do not serve (canary, stable), each with why: the decision ChooseOrder and
    StableServes take from the live state (StableServes asks about the canary only where stable is
    down: that is all it decides on)."""
    stable_down = run.not_serving("stable", services)
    asked = [s for s in services if s.name in stable_down] if canary_only_where_stable_is_down \
        else list(services)
    canary_down = run.not_serving("canary", asked) if asked else {}
    return canary_down, stable_down


def by_build(services: Sequence[Service], builds: dict[str, str]) -> list[tuple[str, list[Service]]]:
    """Services grouped by the build they get (one deploy_slot call per build)."""
    groups: dict[str, list[Service]] = {}
    for service in services:
        groups.setdefault(builds[service.name], []).append(service)
    return list(groups.items())


# ---------------------------------------------------------------- decisions on the live state


@dataclass
class ChooseOrder(Step):
    """Through the canary: which services' canary gets the build first (a canary that serves while
    stable does not gets it last), printed as one decision per service."""

    services: list[Service]
    build: str
    intro: str = ""  # a first decision, formatted with {build} and {names}
    name = "choose-order"

    def describe(self, run: Run) -> str:
        return (f"deploy {self.build} into stable of {names(self.services)} through the "
                "canary slot: ask which slots serve (a canary that serves while stable does not gets the "
                "build last)")

    def run(self, run: Run) -> None:
        if self.intro:
            run.decide(self.intro.format(build=_builds(run, self.services), names=names(self.services)))
        canary_down, stable_down = down_slots(run, self.services)
        run.first = [s for s in self.services if s.name in canary_down or s.name not in stable_down]
        run.later = [s for s in self.services if s not in run.first]
        for s in self.services:
            build = run.builds[s.name]
            if s.name in canary_down:
                run.decide(f"{s.name}: the canary slot {canary_down[s.name]}, so stable is not replaced in "
                           f"place: {build} goes into the canary first, is gated and carries the traffic "
                           "while stable is replaced")
            elif s in run.first:
                run.decide(f"{s.name}: {build} goes into the canary first (gated), the traffic moves to it "
                           "while stable is replaced, then comes back to stable")
            else:
                run.decide(f"{s.name}: stable {stable_down[s.name]} and the canary serves: the traffic "
                           f"moves to the canary, stable gets {build} and is gated, then the canary gets it")


@dataclass
class StableServes(Step):
    """Before the canary is replaced: refuse when it is the only slot serving."""

    services: list[Service]
    name = "stable-serves"

    def describe(self, run: Run) -> str:
        return ("check that stable serves (refuse when the canary is the only slot serving: deploy stable "
                "first)")

    def run(self, run: Run) -> None:
        canary_down, stable_down = down_slots(run, self.services, canary_only_where_stable_is_down=True)
        if not stable_down:
            return
        alone = [n for n in stable_down if n not in canary_down]
        if alone:
            raise StepFailed(f"stable of {', '.join(alone)} {stable_down[alone[0]]} and the canary is "
                             "the only slot serving: replacing it would leave no server; run ps "
                             "deploy --type stable first")
        run.decide(f"stable of {', '.join(stable_down)} {next(iter(stable_down.values()))}, and no "
                   "canary serves either: nothing serves now, deploying the canary anyway")


@dataclass
class CanaryTrafficAway(Step):
    """A canary that still carries more than the minimum weight goes to 0 % before it is replaced."""

    group: Group
    name = "canary-traffic-away"

    def describe(self, run: Run) -> str:
        return "any canary traffic moved to stable first"

    def run(self, run: Run) -> None:
        services = list(self.group(run))
        if not services:
            return
        live = run.ops.canary_percent([s.name for s in services])
        floor = 100.0 * run.config.canary.min_weight / run.config.canary.scale + 0.05
        busy = [n for n, pct in live.items() if pct > floor]
        if busy:
            run.decide(f"the canary of {', '.join(busy)} still carries traffic: moving it to stable before "
                       "replacing it")
            run.set_weights(0, [s for s in services if s.name in busy])


@dataclass
class CanaryRuns(Step):
    """--traffic-only: the canary must already run the build (deployed and gated by earlier stages)."""

    services: list[Service]
    name = "canary-runs"

    def describe(self, run: Run) -> str:
        return (f"traffic only: check that the canary of {names(self.services)} runs "
                f"{_builds(run, self.services)} (deployed and gated by the earlier stages; else exit 1)")

    def run(self, run: Run) -> None:
        build_id = run.build_id()
        for service in self.services:
            running = run.live_canary_build(service)
            if running != build_id:
                raise StepFailed(f"{service.name}: the canary runs {running}, not {build_id}; "
                                 "--traffic-only needs the canary deployed and gated first")
            run.outcome.build_ids[f"{service.name}/canary"] = build_id
            run.report.build_ids[f"{service.name}/canary"] = build_id
        run.decide(f"traffic only: the canary of {names(self.services)} runs {build_id}, "
                   "deployed and gated by the earlier stages")


@dataclass
class CanaryBuilds(Step):
    """promote-canary: the build each canary runs is what stable gets."""

    services: list[Service]
    name = "canary-builds"

    def describe(self, run: Run) -> str:
        return f"read the BUILD_ID the canary of {names(self.services)} runs"

    def run(self, run: Run) -> None:
        run.builds.update({s.name: run.live_canary_build(s) for s in self.services})


@dataclass
class PreviousBuild(Step):
    """rollback --to previous (or a BUILD_ID): the build stable gets back."""

    service: Service
    to: str
    name = "previous-build"

    def describe(self, run: Run) -> str:
        what = "the stable build before the current one (history, else the newest other kept image)" \
            if self.to == "previous" else self.to
        return f"{self.service.name}: redeploy {self.to} into stable: {what}"

    def run(self, run: Run) -> None:
        run.builds[self.service.name] = self.previous(run) if self.to == "previous" else self.to

    def previous(self, run: Run) -> str:
        service = self.service
        current = {s.build_id for s in run.ops.slots() if s.service == service.name and s.slot == "stable"}
        history = HistoryLog(run.config.state_dir, timezone=run.config.timezone)
        for entry in reversed(history.read(app=run.config.app).entries):
            build = entry.build_ids.get(f"{service.name}/stable")
            if entry.result == "success" and build and build not in current:
                run.say(f"{service.name}: previous stable build {build} (history, {entry.time})")
                return build
        for build in run.ops.kept_builds(service):
            if build not in current:
                run.say(f"{service.name}: no earlier stable in the history; newest other image {build}")
                return build
        raise StepFailed(f"{service.name}: no earlier image of {run.config.image_repo(service)} is kept on "
                         f"host {run.config.hosts[0].name}")


@dataclass
class ChooseColor(Step):
    """blue-green: the inactive color gets the build (services must agree on the active one)."""

    services: list[Service]
    name = "choose-color"

    def describe(self, run: Run) -> str:
        return f"choose the inactive color of {names(self.services)} (they must agree on the active one)"

    def run(self, run: Run) -> None:
        actives = run.ops.active_colors([s.name for s in self.services])
        colors = {a for a in actives.values() if a}
        if len(colors) > 1:
            raise StepFailed(f"services disagree on the active color ({actives}); switch them to one first")
        run.active = colors.pop() if colors else None
        run.target = other_color(run.active)
        run.decide(f"{run.active or 'no color'} is active: deploying {run.build_id()} into {run.target}")


# ---------------------------------------------------------------- changes


@dataclass
class Deploy(Step):
    """deploy-env: the group's build into a slot (`slot` "target": blue-green's chosen color)."""

    slot: str
    group: Group
    label: str
    force: bool = False
    stage: str | None = None
    decide: str = ""  # a decision per build group, formatted with {build} and {names}
    name = "deploy"

    def describe(self, run: Run) -> str:
        return self.label

    def run(self, run: Run) -> None:
        services = list(self.group(run))
        if not services:
            return
        slot = run.target if self.slot == "target" else self.slot
        if self.stage:
            run.stage = self.stage.format(slot=slot)
        for build, group in by_build(services, run.builds or {s.name: run.build_id() for s in services}):
            if self.decide:
                run.decide(self.decide.format(build=build, names=names(group)))
            run.deploy(slot, group, build, force=self.force)


@dataclass
class Gate(Step):
    """health-gate the group's slot; `failure` is added to the message (what stays where)."""

    slot: str
    group: Group
    label: str
    rollback: bool = False
    failure: str = ""
    stage: str | None = None
    name = "gate"

    def describe(self, run: Run) -> str:
        return self.label

    def run(self, run: Run) -> None:
        services = list(self.group(run))
        if not services:
            return
        slot = run.target if self.slot == "target" else self.slot
        if self.slot == "kept":
            slot = run.colors[services[0].name]
        if self.stage:
            run.stage = self.stage.format(slot=slot)
        try:
            run.gate(slot, services, rollback_on_failure=self.rollback)
        except StepFailed as exc:
            if not self.failure:
                raise
            raise StepFailed(f"{exc.message}; {self.failure.format(names=names(services))}") from None


@dataclass
class Weights(Step):
    """set-weights: the canary's share for the services (with `step`, canary-auto's step decision)."""

    pct: float
    services: list[Service]
    label: str
    stage: str | None = None
    step: tuple[int, int, float] | None = None  # (number, of, pause) of a canary-auto step
    decide: str = ""
    name = "set-weights"

    def describe(self, run: Run) -> str:
        return self.label

    def run(self, run: Run) -> None:
        if self.decide:
            run.decide(self.decide)
        if self.stage:
            run.stage = self.stage
        if self.step is None:
            run.set_weights(self.pct, self.services)
            return
        number, total, pause = self.step
        run.decide(f"step {number}/{total}: canary {self.pct:g} % for {pause:g}s")
        try:
            run.set_weights(self.pct, self.services)
        except PsError as exc:
            raise StepFailed(f"setting canary {self.pct:g} % failed: {exc.message}", rollback=True) from None


@dataclass
class Switch(Step):
    """switch: the services' active color (`color` "target": blue-green's chosen color)."""

    color: str
    services: list[Service]
    label: str
    name = "switch"

    def describe(self, run: Run) -> str:
        return self.label

    def run(self, run: Run) -> None:
        color = self.color
        if color == "target":
            color = run.target
            run.stage = f"switch to {color}"
            if run.active:
                run.kept_color = {s.name: run.active for s in self.services}
        run.switch(color, self.services)


@dataclass
class Verify(Step):
    """verify-weights (and, with measure and canary.probe, the live split)."""

    services: list[Service]
    label: str
    canary: float | None = None
    active: str | None = None  # "target": the color chosen at run time
    rollback: bool = False
    measure: bool = True
    name = "verify"

    def describe(self, run: Run) -> str:
        return self.label

    def run(self, run: Run) -> None:
        active = run.target if self.active == "target" else self.active
        run.verify(self.services, canary=self.canary, active=active, rollback_on_failure=self.rollback,
                   measure=self.measure)


@dataclass
class Prune(Step):
    services: list[Service]
    name = "prune"

    def describe(self, run: Run) -> str:
        return "prune old images"

    def run(self, run: Run) -> None:
        run.ops.prune(self.services)


def _builds(run: Run, services: Sequence[Service]) -> str:
    found = sorted({run.builds[s.name] for s in services if s.name in run.builds})
    return ", ".join(found) or run.request.build_id or (run.ctx.build_id if run.ctx else "the build")


__all__ = ["ChooseColor", "ChooseOrder", "CanaryBuilds", "CanaryRuns", "CanaryTrafficAway", "Deploy", "Gate",
           "PreviousBuild", "Prune", "StableServes", "Switch", "Verify", "Weights", "down_slots",
           "other_color"]
