"""The steps of the real stacks (issue 11): start-up order (`requires`), workers' replicas and hooks.

Like every step (deploy/steps.py) each calls one DeployOps operation; a plan includes them only when
ps.yaml asks for them (`requires`, `kind: worker`, `hooks`), so `--dry-run` lists exactly what runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline_steps.config import Service
from pipeline_steps.config.run_spec import Hook
from pipeline_steps.deploy.plan import Run, Step, StepFailed
from pipeline_steps.deploy.steps import names
from pipeline_steps.errors import PsError

# ---------------------------------------------------------------- start-up order


@dataclass
class Requires(Step):
    """Before anything of the deploy changes: what its services `require` is ready on every host."""

    services: list[Service]
    name = "requires"

    def describe(self, run: Run) -> str:
        wanted = sorted({r.name for s in self.services for r in s.requires})
        return f"wait until what {names(self.services)} require is ready on every host: {', '.join(wanted)}"

    def run(self, run: Run) -> None:
        run.stage = "start-up order"
        try:
            lines = run.ops.wait_required(self.services)
        except PsError as exc:
            raise StepFailed(exc.message) from None
        run.say(f"ready first: {'; '.join(lines)}")


def requires(run: Run, services: Sequence[Service]) -> list[Step]:
    """[Requires(...)] when some of `services` require something, else []."""
    needing = [s for s in services if s.requires]
    return [Requires(needing)] if needing else []


# ---------------------------------------------------------------- workers


@dataclass
class Workers(Step):
    """The workers' replicas onto the build (`build` None: the one build the promoted canaries run),
    `parallel` at a time, each ready before the next; a failure puts the replaced ones back."""

    services: list[Service]
    build: str | None = None
    name = "workers"

    def describe(self, run: Run) -> str:
        what = self.build or "the promoted build"
        return (f"workers {names(self.services)}: {what} into each replica (replaced one batch at a time, "
                "each ready before the next; failure: the replaced ones get their previous container back)")

    def run(self, run: Run) -> None:
        build = self.build
        if build is None:
            builds = set(run.builds.values())
            if len(builds) != 1:
                found = ", ".join(sorted(builds)) or "none"
                raise StepFailed(f"workers {names(self.services)}: the promoted canaries run different "
                                 f"builds ({found}); deploy the workers with ps deploy --type stable "
                                 "--service ...")
            build = builds.pop()
        run.stage = "workers"
        run.decide(f"workers {names(self.services)}: {build} into their replicas")
        try:
            lines = run.ops.deploy_workers(self.services, build)
        except PsError as exc:
            raise StepFailed(f"workers: {exc.message}") from None
        for service in self.services:
            run.outcome.build_ids[f"{service.name}/worker"] = build
            run.report.build_ids[f"{service.name}/worker"] = build
        changed = sum(1 for line in lines if not line.endswith(" unchanged"))
        run.say(f"workers: {changed} of {len(lines)} replicas replaced, all ready")


def workers(run: Run, build: str | None = None) -> list[Step]:
    """[Workers(...)] when the request has workers, else []."""
    chosen = run.workers()
    return [Workers(chosen, build)] if chosen else []


# ---------------------------------------------------------------- hooks


@dataclass
class Hooks(Step):
    """ps.yaml's `hooks.<phase>` jobs of the group's services, each in a one-off container of the build
    the service gets, in order; the first that fails stops the deploy (before traffic moves, for
    pre_deploy and pre_traffic) with its output tail."""

    phase: str
    services: list[Service]
    rollback: bool = False
    name = "hooks"

    def chosen(self, run: Run) -> list[Hook]:
        """This phase's hooks of the deployed services, and those of job services (never deployed)."""
        wanted = {s.name for s in self.services}
        return [h for h in run.config.hooks.at(self.phase)
                if h.service in wanted or run.config.services[h.service].kind == "job"]

    def describe(self, run: Run) -> str:
        jobs = "; ".join(f"{h.service}: {' '.join(h.command)}" for h in self.chosen(run))
        when = {"pre_deploy": "before the new build runs", "pre_traffic": "after the gate, before any "
                "weight moves", "post_deploy": "after the deploy succeeded"}[self.phase]
        return f"{self.phase} hooks ({when}): {jobs}"

    def run(self, run: Run) -> None:
        for hook in self.chosen(run):
            build = run.builds.get(hook.service) or run.build_id()
            run.decide(f"{self.phase} hook: {' '.join(hook.command)} in a one-off {hook.service} {build} "
                       "container")
            verdict = run.ops.run_hook(hook, build)
            run.report.add("step", f"{self.phase} hook: {verdict.summary}")
            if not verdict.ok:
                tail = " | ".join(verdict.tail[-5:])
                raise StepFailed(f"{self.phase} hook failed: {verdict.summary}" + (f"; last lines: {tail}"
                                                                                    if tail else ""),
                                 rollback=self.rollback)
            run.say(verdict.summary)


def hooks(run: Run, phase: str, services: list[Service], rollback: bool = False) -> list[Step]:
    """[Hooks(...)] when ps.yaml has `phase` hooks for these services, else [] (the plan shows only
    what runs)."""
    step = Hooks(phase, services, rollback)
    return [step] if step.chosen(run) else []
