"""Deployment types composed from the single steps.

Every type: take the deploy lock, notify `started`, run, then notify the outcome once, append to the
history and (with --report) write the JSON + HTML report. The types only call the steps
(deploy_slot, gate/check_once, set_weights, switch, verify_weights, traffic_status) and explain each
decision they take; they never re-implement what a step does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline_steps.config import Config, Service
from pipeline_steps.context import CIContext
from pipeline_steps.deploy.history import HistoryLog
from pipeline_steps.deploy.lock import DeployLock
from pipeline_steps.deploy.report import RunReport
from pipeline_steps.errors import BadInput, PsError
from pipeline_steps.output import Output

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
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.result == "success"


class StepFailed(Exception):
    """A step inside a type said no; `rollback` tells whether traffic must go back to stable."""

    def __init__(self, message: str, rollback: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.rollback = rollback


class Rollout:
    """Runs one deployment type against the config's hosts and router."""

    def __init__(self, config: Config, request: DeployRequest, ctx: CIContext | None, out: Output) -> None:
        if request.type not in DEPLOY_TYPES:
            raise BadInput(f"unknown deploy type {request.type!r} (one of: {', '.join(DEPLOY_TYPES)})")
        if config.router is None:
            raise BadInput(f"{config.source}: ps deploy needs a router section (nginx include, test, reload)")
        self.config = config
        self.request = request
        self.ctx = ctx
        self.out = out
        self.report = RunReport(app=config.app, deploy_type=request.type, timezone=config.timezone,
                                pipeline_url=ctx.pipeline_url if ctx else None, who=ctx.who if ctx else None)
        self.outcome = DeployOutcome(type=request.type, result="failure", message="")
        self._failed_at: float | None = None
        self._stage = ""  # where the run is now ("canary 40 %"): a rolled-back message names it
        self._kept_color: dict[str, str] = {}  # blue-green: the color traffic goes back to

    # ---------------------------------------------------------------- small helpers

    def say(self, line: str) -> None:
        self.out.say(line)

    def decide(self, line: str) -> None:
        """A decision, explained: printed, kept in the outcome and on the report timeline."""
        self.outcome.decisions.append(line)
        self.report.step(line)
        self.out.say(f"-> {line}")

    def services(self, kind: str) -> list[Service]:
        from pipeline_steps.steps.traffic import pair_services

        return pair_services(self.config, kind, list(self.request.services) or None)

    def names(self, services: Sequence[Service]) -> list[str]:
        return [s.name for s in services]

    def build_id(self) -> str:
        if self.request.build_id:
            return self.request.build_id
        if self.ctx is None:
            raise BadInput("no BUILD_ID: not in CI and not in a git checkout; give --build-id")
        return self.ctx.build_id

    # ---------------------------------------------------------------- composed steps

    def deploy(self, slot: str, services: Sequence[Service], build_id: str, force: bool = False) -> None:
        from pipeline_steps.steps.deploy_env import deploy_slot

        result = deploy_slot(self.config, slot, list(services), build_id, force=force, ctx=self.ctx,
                             say=self.say)
        for service in services:
            self.outcome.build_ids[f"{service.name}/{slot}"] = build_id
            self.report.build_ids[f"{service.name}/{slot}"] = build_id
        if not result.changed:
            self.say(f"{slot}: {', '.join(self.names(services))} already run {build_id}, nothing replaced")

    def gate(self, slot: str, services: Sequence[Service], rollback_on_failure: bool = False) -> None:
        """health-gate every host's `slot` of each service with its ps.yaml policy."""
        from pipeline_steps.steps.health_gate import GatePolicy, TryRecord, gate, service_targets, try_line

        for service in services:
            policy = GatePolicy.from_spec(service.health)

            def on_try(record: TryRecord, _service: Service = service, _policy: Any = policy) -> None:
                self.say(f"  {_service.name}/{slot} {try_line(record, _policy.retries)}")

            result = gate(service_targets(self.config, service.name, slot), policy, on_try=on_try)
            self.report.health(service.name, result.healthy,
                               f"{slot} gate: {result.reason} after {result.tries} tries")
            if not result.healthy:
                raise StepFailed(f"{service.name}/{slot} is not healthy after {result.tries} tries: "
                                 f"{result.reason}", rollback=rollback_on_failure)
            self.say(f"{service.name}/{slot} healthy ({result.tries} tries, {result.elapsed:.2f}s)")

    def set_weights(self, pct: float, services: Sequence[Service]) -> None:
        from pipeline_steps.steps.set_weights import set_weights
        from pipeline_steps.steps.traffic import say_change

        change = set_weights(self.config, pct, self.names(services))
        say_change(self.out, change)
        for service in services:
            self.outcome.weights[service.name] = pct
        self.report.weights({s.name: pct for s in services}, f"canary {pct:g} %")

    def verify(self, services: Sequence[Service], *, canary: float | None = None, active: str | None = None,
               rollback_on_failure: bool = False, measure: bool = True) -> None:
        """verify-weights against the live upstream file, and (measure, canary.probe > 0) the live split."""
        from pipeline_steps.steps.verify_weights import verify_weights

        result = verify_weights(self.config, expect_canary=canary, expect_active=active,
                                services=self.names(services))
        problems = [p for s in result.services for p in s.get("problems", [])]
        measured = False
        if not problems and measure and self.probing(services):
            problems = self.take_measures(self.measure(services, canary=canary, active=active))
            measured = True
        if problems:
            raise StepFailed(f"weights not as expected: {'; '.join(problems)}", rollback=rollback_on_failure)
        self.say(f"verified: {self._what(canary, active)} live in nginx"
                 + (" and measured" if measured else ""))

    @staticmethod
    def _what(canary: float | None, active: str | None) -> str:
        return f"canary {canary:g} %" if canary is not None else f"{active} active"

    def probing(self, services: Sequence[Service]) -> bool:
        """Whether verify measures the live split (canary.probe > 0 and a URL to probe)."""
        return bool(self.config.canary.probe) and any(self.probe_url(s) for s in services)

    def measure(self, services: Sequence[Service], *, canary: float | None = None,
                active: str | None = None) -> list[dict[str, Any]]:
        """The live split measured through nginx, one verdict per service (safe to run in a thread)."""
        from pipeline_steps.steps.verify_weights import verify_weights

        verdicts: list[dict[str, Any]] = []
        for service in services:
            url = self.probe_url(service)
            if url:
                verdicts += verify_weights(self.config, expect_canary=canary, expect_active=active,
                                           services=[service.name], probe=self.config.canary.probe,
                                           url=url).services
        return verdicts

    def take_measures(self, verdicts: list[dict[str, Any]]) -> list[str]:
        """Print and record the measured splits; the problems found."""
        for svc in verdicts:
            m = svc.get("measured") or {}
            if m:
                self.say(f"{svc['service']}: {m['slot']} answered {100 * m['share']:.1f} % of "
                         f"{m['requests']} requests (target {100 * m['expected_share']:.1f} %)")
                self.report.add("step", f"{svc['service']}: measured {m['slot']} "
                                f"{100 * m['share']:.1f} % over {m['requests']} requests")
        return [p for svc in verdicts for p in svc.get("problems", [])]

    def probe_url(self, service: Service) -> str | None:
        """Where to measure the live split of a service: its own url (preflight asks for it)."""
        return service.url or None

    def hold(self, services: Sequence[Service], pause: float, checks: int | None, *, slot: str = "canary",
             canary: float | None = None, active: str | None = None, during: str = "the hold") -> None:
        """Keep the traffic for `pause` seconds, checking `slot`'s health every check interval.

        With canary.probe > 0 the live split is measured in a thread meanwhile: the checks keep their
        cadence, the hold lasts until both the pause and the probe are over, and the first unhealthy
        check ends the step at once (StepFailed, rollback) whatever the probe is doing.
        """
        from pipeline_steps.steps.health_gate import GatePolicy, check_once, service_targets

        interval = self.config.canary.check_interval
        if checks and pause > 0:
            interval = pause / checks
        targets = {s.name: service_targets(self.config, s.name, slot) for s in services}
        policies = {s.name: GatePolicy.from_spec(s.health, retries=1, successes=1, start_period=0.0)
                    for s in services}
        probe = _Background(lambda: self.measure(services, canary=canary, active=active)) \
            if self.probing(services) else None
        started = time.monotonic()
        end = started + pause
        count = 0
        while True:
            for service in services:
                record = check_once(targets[service.name], policies[service.name])
                count += 1
                self.report.health(service.name, record.ok, f"{slot} check: {record.reason or 'ok'}")
                if not record.ok:
                    self._failed_at = time.monotonic()
                    what = "the probe" if probe and not probe.done.is_set() else during
                    raise StepFailed(f"{service.name}/{slot} turned unhealthy during {what}: "
                                     f"{record.reason}", rollback=True)
            if time.monotonic() >= end and (probe is None or probe.read):
                self.say(f"held {time.monotonic() - started:.1f}s, {slot} healthy in {count} checks"
                         + (" while the live split was measured" if probe else ""))
                return
            next_check = time.monotonic() + interval
            while True:  # until the next check; a probe that ends meanwhile is read at once
                if probe is not None and probe.done.is_set() and not probe.read:
                    self._probe_verdict(probe, canary, active)
                now = time.monotonic()
                if now >= next_check or (now >= end and (probe is None or probe.read)):
                    break  # the next check (the last one when the hold is over)
                wait = min(next_check, end) - now if end > now else next_check - now
                if probe is not None and not probe.read:
                    probe.done.wait(wait)
                else:
                    time.sleep(wait)

    def _probe_verdict(self, probe: _Background, canary: float | None, active: str | None) -> None:
        try:
            problems = self.take_measures(probe.result())
        except PsError as exc:
            raise StepFailed(f"measuring the live split failed: {exc.message}", rollback=True) from None
        if problems:
            self._failed_at = time.monotonic()
            raise StepFailed(f"weights not as expected: {'; '.join(problems)}", rollback=True)
        self.say(f"verified: {self._what(canary, active)} live in nginx and measured")

    def rollback_to_stable(self, services: Sequence[Service], reason: str, after_check: bool = True) -> None:
        """All traffic back on stable in one reload (no Docker call in the way), then verified."""
        started = (self._failed_at if after_check else None) or time.monotonic()
        self.report.rollback(f"rollback: {reason}")
        self.decide(f"{reason}: rolling back {', '.join(self.names(services))} to stable 100 % (canary "
                    f"keeps the minimum weight {self.config.canary.min_weight})")
        self.set_weights(0, services)
        self.outcome.rollback_seconds = round(time.monotonic() - started, 3)
        self.verify(services, canary=0)
        since = "after the failed check" if after_check else "after the rollback began"
        self.say(f"traffic back on stable {self.outcome.rollback_seconds:.3f}s {since}")

    def live_canary_build(self, service: Service) -> str:
        """The BUILD_ID the canary slot runs now (the same on every host, or an error)."""
        from pipeline_steps.steps.status import slot_status

        status = slot_status(self.config)
        builds = {s.build_id for s in status.slots
                  if s.service == service.name and s.slot == "canary" and s.state == "running"}
        builds.discard(None)
        if not builds:
            raise StepFailed(f"{service.name}: no canary is running to promote")
        if len(builds) > 1:
            raise StepFailed(f"{service.name}: canary runs different BUILD_IDs on the hosts: "
                             f"{', '.join(sorted(b for b in builds if b))}")
        return str(builds.pop())

    def live_canary_percent(self, services: Sequence[Service]) -> dict[str, float]:
        from pipeline_steps.steps.traffic import traffic_status

        status = traffic_status(self.config)
        wanted = set(self.names(services))
        return {s.service: float(s.split.get("canary", 0.0)) for s in status.services if s.service in wanted}

    # ---------------------------------------------------------------- the types

    def not_serving(self, slot: str, services: Sequence[Service]) -> dict[str, str]:
        """The services whose `slot` does not answer healthy on every host, with why (a true sentence).

        One health check over HTTP each; the engine is asked only about a slot that failed it.
        """
        from dataclasses import replace

        from pipeline_steps.steps.health_gate import GatePolicy, check_once, service_targets

        why: dict[str, str] = {}
        for service in services:
            # serving means answering: a stopped container's matching logs do not carry requests
            policy = replace(GatePolicy.from_spec(service.health, retries=1, successes=1, start_period=0.0),
                             logs_fallback=None)
            record = check_once(service_targets(self.config, service.name, slot), policy)
            if not record.ok:
                why[service.name] = f"answers no healthy {service.health.path} ({record.reason})"
        if why:
            from pipeline_steps.steps.status import slot_status

            states = [s for s in slot_status(self.config).slots if s.slot == slot and s.service in why]
            for name in why:
                down = [s for s in states if s.service == name and s.state != "running"]
                if down and all(s.state == "missing" for s in down):
                    many = len(self.config.hosts) > 1
                    why[name] = "has no container" + (f" on host {down[0].host}" if many else "")
                elif down:
                    gone = next(s for s in down if s.state != "missing")
                    why[name] = f"is {gone.state} ({gone.container} on host {gone.host})"
        return why

    def through_canary(self, services: Sequence[Service], builds: dict[str, str]) -> None:
        """Each service's build into stable while the other slot serves: never an upstream without a
        healthy server. The canary gets the build first and is gated (unless it serves while stable
        does not: then stable goes first), the traffic moves to it, stable is replaced and gated, the
        traffic comes back, verified. Both slots end on the build."""
        names = ", ".join(self.names(services))
        canary_down = self.not_serving("canary", services)
        stable_down = self.not_serving("stable", services)
        first = [s for s in services if s.name in canary_down or s.name not in stable_down]
        later = [s for s in services if s not in first]
        for s in services:
            build = builds[s.name]
            if s.name in canary_down:
                self.decide(f"{s.name}: the canary slot {canary_down[s.name]}, so stable is not replaced in "
                            f"place: {build} goes into the canary first, is gated and carries the traffic "
                            "while stable is replaced")
            elif s in first:
                self.decide(f"{s.name}: {build} goes into the canary first (gated), the traffic moves to it "
                            "while stable is replaced, then comes back to stable")
            else:
                self.decide(f"{s.name}: stable {stable_down[s.name]} and the canary serves: the traffic "
                            f"moves to the canary, stable gets {build} and is gated, then the canary gets it")
        if first:
            self._move_canary_traffic_away(first)
            self._stage = "canary gate"
            for build, group in _by_build(first, builds):
                self.deploy("canary", group, build)
            self.gate("canary", first)
        self._stage = "traffic to the canary"
        self.set_weights(100, services)
        for build, group in _by_build(services, builds):
            self.deploy("stable", group, build, force=True)
        self._stage = "stable gate"
        try:
            self.gate("stable", services)
        except StepFailed as exc:
            raise StepFailed(f"{exc.message}; the traffic stays on the canary of {names} (gated healthy); "
                             "fix stable and run ps deploy --type stable again") from None
        self._stage = "traffic back to stable"
        self.set_weights(0, services)
        self.verify(services, canary=0)
        if later:
            self._stage = "canary gate"
            for build, group in _by_build(later, builds):
                self.deploy("canary", group, build)
            self.gate("canary", later)

    def _move_canary_traffic_away(self, services: Sequence[Service]) -> None:
        live = self.live_canary_percent(services)
        busy = [n for n, pct in live.items() if pct > 100.0 * self.config.canary.min_weight /
                self.config.canary.scale + 0.05]
        if busy:
            self.decide(f"the canary of {', '.join(busy)} still carries traffic: moving it to stable before "
                        "replacing it")
            self.set_weights(0, [s for s in services if s.name in busy])

    def run_stable(self) -> None:
        services = self.services("canary")
        build_id = self.build_id()
        self.decide(f"deploying {build_id} into the stable slot of {', '.join(self.names(services))} "
                    "through the canary slot (the stable slot carries traffic)")
        self.through_canary(services, {s.name: build_id for s in services})
        self.prune(services)
        self.outcome.message = f"stable runs {build_id} with 100 % of the traffic"

    def _canary_start(self, services: Sequence[Service]) -> str:
        build_id = self.build_id()
        if self.request.traffic_only:  # issue 15: deploy and gate ran as earlier pipeline stages
            for service in services:
                running = self.live_canary_build(service)
                if running != build_id:
                    raise StepFailed(f"{service.name}: the canary runs {running}, not {build_id}; "
                                     "--traffic-only needs the canary deployed and gated first")
                self.outcome.build_ids[f"{service.name}/canary"] = build_id
                self.report.build_ids[f"{service.name}/canary"] = build_id
            self.decide(f"traffic only: the canary of {', '.join(self.names(services))} runs {build_id}, "
                        "deployed and gated by the earlier stages")
            return build_id
        stable_down = self.not_serving("stable", services)
        if stable_down:  # replacing the canary must not leave the upstream without a live server
            canary_down = self.not_serving("canary", [s for s in services if s.name in stable_down])
            alone = [n for n in stable_down if n not in canary_down]
            if alone:
                raise StepFailed(f"stable of {', '.join(alone)} {stable_down[alone[0]]} and the canary is "
                                 "the only slot serving: replacing it would leave no server; run ps "
                                 "deploy --type stable first")
            self.decide(f"stable of {', '.join(stable_down)} {next(iter(stable_down.values()))}, and no "
                        "canary serves either: nothing serves now, deploying the canary anyway")
        self._move_canary_traffic_away(services)
        self.decide(f"deploying {build_id} into the canary slot of {', '.join(self.names(services))}")
        self._stage = "canary gate"
        self.deploy("canary", services, build_id)
        # a canary that fails its gate never got traffic, but the rollback still proves stable has it all
        self.gate("canary", services, rollback_on_failure=True)
        return build_id

    def run_canary_manual(self) -> None:
        weight = self.request.weight
        if weight is None:
            raise BadInput("canary-manual needs --weight PCT")
        services = self.services("canary")
        build_id = self._canary_start(services)
        self._stage = f"canary {weight:g} %"
        self.set_weights(weight, services)
        self.verify(services, canary=weight, rollback_on_failure=True, measure=False)
        if self.probing(services):  # the canary's health is checked while the probe runs
            self.hold(services, 0.0, None, canary=weight, during="the probe")
        self.outcome.message = f"canary {build_id} carries {weight:g} %"

    def run_canary_auto(self) -> None:
        services = self.services("canary")
        build_id = self._canary_start(services)
        policy = self.config.canary
        steps = policy.steps
        if self.request.weight is not None:
            steps = tuple(s for s in steps if s.weight <= self.request.weight)
            if not steps:
                raise BadInput(f"--weight {self.request.weight:g} is below the first canary step")
        for number, step in enumerate(steps, 1):
            pause = policy.pause if step.pause is None else step.pause
            self.decide(f"step {number}/{len(steps)}: canary {step.weight} % for {pause:g}s")
            self._stage = f"canary {step.weight:g} %"
            try:
                self.set_weights(step.weight, services)
            except PsError as exc:
                raise StepFailed(f"setting canary {step.weight} % failed: {exc.message}", rollback=True) \
                    from None
            self.verify(services, canary=step.weight, rollback_on_failure=True, measure=False)
            self.hold(services, pause, step.checks, canary=step.weight)
        last = steps[-1].weight
        self.outcome.message = (f"canary {build_id} holds {last} % after {len(steps)} healthy steps; "
                                "promote with `ps deploy --type promote-canary`")

    def run_promote_canary(self) -> None:
        services = self.services("canary")
        builds = {s.name: self.live_canary_build(s) for s in services}
        self._stage = "canary gate"
        self.gate("canary", services)
        self.decide("moving traffic to the canary (it runs the build being promoted) while the stable slot "
                    "is replaced")
        self._stage = "traffic to the canary"
        self.set_weights(100, services)
        for service in services:
            self.decide(f"{service.name}: deploying the canary's {builds[service.name]} into stable")
            self.deploy("stable", [service], builds[service.name], force=True)
        self._stage = "stable gate"
        try:
            self.gate("stable", services)
        except StepFailed as exc:
            raise StepFailed(f"{exc.message}; the traffic stays on the canary (gated healthy); fix stable "
                             "and promote again") from None
        self.set_weights(0, services)
        self.verify(services, canary=0)
        self.prune(services)
        self.outcome.message = "promoted: stable and canary run " + ", ".join(
            f"{n} {b}" for n, b in builds.items())

    def rollback_traffic(self) -> None:
        """rollback's first move, before any Docker call: read only the live include file and put the
        traffic back (stable 100 %, or the kept color) in one reload per kind. A kept color that does
        not answer healthy is started and gated first (or the rollback refuses, exit 1)."""
        from pipeline_steps.steps.traffic import load_live
        from pipeline_steps.upstreams import active_color

        live = load_live(self.config)
        upstreams = live.upstreams() if live is not None else {}
        canary = self.services_or_empty("canary")
        if canary:
            self._stage = "rollback to stable"
            self.rollback_to_stable(canary, "rollback requested", after_check=False)
        for service in self.services_or_empty("blue-green"):
            upstream = upstreams.get(service.upstream)
            active = active_color(upstream, service, self.config.hosts) if upstream else None
            if active is None:
                self.say(f"{service.name}: no active color in nginx, nothing to switch back")
                continue
            previous = "green" if active == "blue" else "blue"
            self._stage = f"switch back to {previous}"
            why = self.not_serving(previous, [service]).get(service.name)
            if why:
                self.decide(f"{service.name}: {previous} {why}: starting it and gating it before traffic "
                            f"moves (traffic stays on {active} until then)")
                self.start_slot(previous, service, active)
                self.gate(previous, [service])
            self.decide(f"{service.name}: switching back to {previous} ("
                        + ("restarted and gated healthy)" if why else "kept as backup, answers healthy)"))
            self.switch(previous, [service])
            self.verify([service], active=previous)

    def start_slot(self, slot: str, service: Service, active: str) -> None:
        """docker start the slot's container on every host (StepFailed when one has none)."""
        from pipeline_steps.adapters import slots
        from pipeline_steps.adapters.docker_host import engine
        from pipeline_steps.steps.deploy_env import _existing

        name = slots.container_name(self.config.app, service.name, slot)
        for host in self.config.hosts:
            with engine(host) as client:
                container = _existing(client, name)
                if container is None:
                    raise StepFailed(f"{service.name}: {slot} has no container {name} on host {host.name}: "
                                     f"nothing to switch back to, traffic stays on {active}; deploy a "
                                     "build with ps deploy --type blue-green")
                if container.status != "running":
                    container.start()
                    self.say(f"host {host.name}: started {name} (was {container.status})")

    def run_rollback(self) -> None:
        """After rollback_traffic: with --to, redeploy stable with an earlier build."""
        target = self.request.to
        if target:
            for service in self.services_or_empty("canary"):
                build = self.previous_build(service) if target == "previous" else target
                self.redeploy_stable(service, build)
        self.outcome.message = "traffic on stable" + (f", stable redeployed with {target}" if target else "")

    def services_or_empty(self, kind: str) -> list[Service]:
        try:
            return self.services(kind)
        except BadInput:
            if self.request.services:
                named = [self.config.service(n) for n in self.request.services]
                return [s for s in named if s.pair(kind)]
            return []

    def redeploy_stable(self, service: Service, build_id: str) -> None:
        """An earlier image into stable without dropping requests: through the canary slot."""
        self.decide(f"{service.name}: redeploying {build_id} into stable through the canary slot "
                    "(canary first, traffic to it, then stable, traffic back)")
        self.through_canary([service], {service.name: build_id})

    def previous_build(self, service: Service) -> str:
        """The stable build before the one running now: from the history of successful deploys, else
        the newest other image of the service kept on the first host."""
        from pipeline_steps.adapters.docker_host import engine, repo_images
        from pipeline_steps.steps.status import slot_status

        current = {s.build_id for s in slot_status(self.config).slots
                   if s.service == service.name and s.slot == "stable"}
        history = HistoryLog(self.config.state_dir, timezone=self.config.timezone)
        for entry in reversed(history.read(app=self.config.app).entries):
            build = entry.build_ids.get(f"{service.name}/stable")
            if entry.result == "success" and build and build not in current:
                self.say(f"{service.name}: previous stable build {build} (history, {entry.time})")
                return build
        repo = self.config.image_repo(service)
        with engine(self.config.hosts[0]) as client:
            images = repo_images(client, repo)
        for image in images:
            for tag in image.tags:
                build = tag.rpartition(":")[2]
                if build not in current:
                    self.say(f"{service.name}: no earlier stable in the history; newest other image {build}")
                    return build
        raise StepFailed(f"{service.name}: no earlier image of {repo} is kept on host "
                         f"{self.config.hosts[0].name}")

    def switch(self, color: str, services: Sequence[Service]) -> None:
        from pipeline_steps.steps.switch import switch
        from pipeline_steps.steps.traffic import say_change

        change = switch(self.config, color, self.names(services))
        say_change(self.out, change)
        for service in services:
            self.outcome.active[service.name] = color
        self.report.weights({s.name: 100.0 if color == "green" else 0.0 for s in services},
                            f"{color} active")

    def run_blue_green(self) -> None:
        from pipeline_steps.steps.traffic import traffic_status

        services = self.services("blue-green")
        build_id = self.build_id()
        status = {s.service: s for s in traffic_status(self.config).services}
        actives = {s.name: (status[s.name].active if s.name in status else None) for s in services}
        colors = {a for a in actives.values() if a}
        if len(colors) > 1:
            raise StepFailed(f"services disagree on the active color ({actives}); switch them to one first")
        active = colors.pop() if colors else None
        target = "green" if active == "blue" else "blue"
        self.decide(f"{active or 'no color'} is active: deploying {build_id} into {target}")
        self._stage = f"{target} gate"
        self.deploy(target, services, build_id)
        self.gate(target, services)
        if active:
            self._kept_color = {s.name: active for s in services}
        self._stage = f"switch to {target}"
        self.switch(target, services)
        self.verify(services, active=target, rollback_on_failure=True, measure=False)
        keep = self.request.keep if self.request.keep is not None else self.config.deploy.blue_green_keep
        watch = self.config.blue_green.watch
        if watch > 0:
            span = max(watch, keep) if active and keep is not None else watch
            back = f"traffic back to {active} at once" if active else "no kept color to go back to"
            every = self.config.canary.check_interval
            self.decide(f"watching {target} for {span:g}s, health every {every:g}s (failure: {back}, exit 1)")
            self._stage = f"{target} watch"
            self.hold(services, span, None, slot=target, active=target, during="the watch")
        elif self.probing(services):
            self.hold(services, 0.0, None, slot=target, active=target, during="the probe")
        if active and keep is not None:
            if watch <= 0:
                self.decide(f"stopping the old color {active} after {keep:g}s")
                time.sleep(keep)
            else:
                self.decide(f"stopping the old color {active}: {target} stayed healthy for {span:g}s")
            self.stop_slot(active, services)
        elif active:
            self.say(f"{active} stays running as backup for an instant rollback")
        self.outcome.message = f"{target} runs {build_id} and carries the traffic"

    def stop_slot(self, slot: str, services: Sequence[Service]) -> None:
        from pipeline_steps.adapters import slots
        from pipeline_steps.adapters.docker_host import engine

        for host in self.config.hosts:
            with engine(host) as client:
                for service in services:
                    name = slots.container_name(self.config.app, service.name, slot)
                    for c in client.containers.list(filters={"name": f"^{name}$"}, ignore_removed=True):
                        c.stop(timeout=10)
                        self.say(f"host {host.name}: stopped {name}")

    def prune(self, services: Sequence[Service]) -> None:
        """Keep the newest deploy.keep_images images per service on every host (for --to previous)."""
        import docker.errors

        from pipeline_steps.adapters.docker_host import engine, repo_images

        keep = self.config.deploy.keep_images
        for host in self.config.hosts:
            with engine(host) as client:
                # the raw list: inspecting each container races with containers removed meanwhile
                used = {c.get("ImageID") for c in client.api.containers(all=True)}
                for service in services:
                    repo = self.config.image_repo(service)
                    for image in repo_images(client, repo)[keep:]:
                        if image.id in used:
                            continue
                        # untag, never remove by ID: a tag of the same image in another repository stays
                        for tag in image.tags:
                            try:
                                client.images.remove(tag)
                                self.say(f"host {host.name}: removed old image {tag}")
                            except docker.errors.APIError:
                                pass

    # ---------------------------------------------------------------- the frame

    def notify(self, status: str, **kw: Any) -> None:
        if not self.request.notify:
            return
        from pipeline_steps.steps.mattermost_notify import notify

        kw.setdefault("log_url", self.ctx.job_url if self.ctx else None)
        result = notify(self.config, self.ctx, status=status, deploy_type=self.request.type,
                        services=list(self.request.services) or list(self.config.services), **kw)
        self.report.notify(f"{status}: {'delivered' if result.delivered else result.reason}",
                           ok=result.delivered)
        if not result.delivered and "no webhook URL" not in result.reason:
            self.say(f"warning: notification not delivered: {result.reason}")

    def plan(self) -> list[str]:
        """What the type would do, step by step, changing nothing (for --dry-run)."""
        self.preflight()
        t = self.request.type
        policy = self.config.canary
        every = f"checking health every {policy.check_interval:g}s"
        probe = (f"; the live split measured over {policy.probe} requests meanwhile" if policy.probe else "")
        if t == "rollback":
            all_names = ", ".join(self.names(self.services_or_empty("canary")
                                             + self.services_or_empty("blue-green")))
            steps = [f"lock, notify started (sent while traffic moves); all traffic of {all_names} to "
                     "stable (blue/green: back to the kept color; a kept color that does not answer healthy "
                     "is started and gated first, else exit 1) in one reload, verified"]
            if self.request.to:
                steps.append(f"redeploy {self.request.to} into stable through the canary slot: canary "
                             "first, gate, traffic to it, stable, gate, traffic back, verify")
            return steps
        kind = "blue-green" if t == "blue-green" else "canary"
        names = ", ".join(self.names(self.services(kind)))
        build = self.request.build_id or (self.ctx.build_id if self.ctx else "the canary's build")
        if t == "stable":
            return [f"deploy {build} into stable of {names} through the canary slot: {build} into canary "
                    "first and gate it (a canary that serves while stable does not gets it last)",
                    "traffic to the canary (100 %)", f"{build} into stable, gate stable (failure: traffic "
                    "stays on the gated canary, exit 1)",
                    "stable 100 % (canary keeps the minimum weight), verify", "prune old images"]
        if t == "blue-green":
            keep = self.request.keep if self.request.keep is not None else self.config.deploy.blue_green_keep
            watch = self.config.blue_green.watch
            span = max(watch, keep) if keep is not None and watch > 0 else watch
            steps = [f"deploy {build} into the inactive color of {names}", "gate it", "switch to it, verify"]
            if watch > 0:
                steps.append(f"watch it {span:g}s {every}{probe} (failure: switch back to the old color at "
                             "once, verify, exit 1)")
            steps.append("keep the old color as backup" if keep is None
                         else f"stop the old color after {span if watch > 0 else keep:g}s")
            return steps
        if t == "promote-canary":
            return [f"gate the canary of {names}", "traffic to the canary",
                    "deploy the canary's BUILD_ID into stable, gate (failure: traffic stays on the canary)",
                    "stable 100 %, verify"]
        start = [f"deploy {build} into canary of {names} (moving any canary traffic to stable first)",
                 "gate canary (failure: rollback to stable)"]
        if t == "canary-manual":
            return [*start, f"canary {self.request.weight:g} %, verify"
                    + (f"{probe}, {every} (failure: rollback to stable)" if policy.probe else "")]
        return [*start, *[f"canary {step.weight} %, verify, hold "
                          f"{policy.pause if step.pause is None else step.pause:g}s {every}{probe} "
                          "(failure: rollback to stable, notify, exit 1)"
                          for step in policy.steps]]

    def preflight(self) -> None:
        """Bad input is refused before the lock, a notification or any change."""
        kind = {"blue-green": "blue-green", "rollback": None}.get(self.request.type, "canary")
        if kind is not None:
            chosen = self.services(kind)
        else:
            chosen = self.services_or_empty("canary") + self.services_or_empty("blue-green")
            if not chosen:
                raise BadInput("no service to roll back (none has a stable/canary or blue/green pair)")
        unmeasured = [s.name for s in chosen if not s.url]
        if self.config.canary.probe and unmeasured:
            raise BadInput(f"{self.config.source}: canary.probe is {self.config.canary.probe} but "
                           f"services.{unmeasured[0]}.url is not set (the probe measures the service's own "
                           "URL through nginx); set it or canary.probe: 0")
        if self.request.type in ("stable", "canary-manual", "canary-auto", "blue-green"):
            self.build_id()
        if self.request.type == "rollback" and self.request.to:
            canary = self.services_or_empty("canary")
            if not canary:
                raise BadInput("--to needs stable/canary services")
            if self.request.to != "previous":
                self.check_image(self.request.to, canary)

    def check_image(self, build_id: str, services: Sequence[Service]) -> None:
        """BadInput unless every host has each service's image `build_id` or its registry has it.

        A host whose engine does not answer is skipped with a warning: the rollback's traffic move needs
        no engine, and the redeploy after it reports the host itself.
        """
        import docker.errors

        from pipeline_steps.adapters.docker_host import engine
        from pipeline_steps.errors import Unreachable
        from pipeline_steps.steps.deploy_env import _registry_auth

        for host in self.config.hosts:
            try:
                with engine(host, timeout=20) as client:
                    for service in services:
                        ref = self.config.image_ref(service, build_id)
                        try:
                            client.images.get(ref)
                            continue
                        except docker.errors.ImageNotFound:
                            pass
                        except docker.errors.APIError as exc:
                            raise BadInput(f"--to {build_id}: {ref} is not a usable image reference: "
                                           f"{_short(exc)}") from None
                        try:
                            client.images.get_registry_data(ref, auth_config=_registry_auth())
                        except docker.errors.APIError as exc:
                            raise BadInput(f"--to {build_id}: image {ref} is not on host {host.name} and "
                                           f"cannot be pulled ({_short(exc)}); see ps history for the "
                                           "builds deployed") from None
            except Unreachable as exc:
                self.out.warn(f"could not check image {build_id} on host {host.name}: {exc.message}")

    def run(self) -> DeployOutcome:
        """Lock, run the type, and notify, record and report its outcome."""
        self.preflight()
        lock = DeployLock(self.config.state_dir, self.config.app, timezone=self.config.timezone,
                          deploy_type=self.request.type,
                          pipeline_url=self.ctx.pipeline_url if self.ctx else None)
        lock.acquire(wait=self.request.lock_wait)
        started = time.monotonic()
        sending: threading.Thread | None = None
        try:
            handler = getattr(self, "run_" + self.request.type.replace("-", "_"))
            try:
                if self.request.type == "rollback":
                    # `started` goes out while the traffic moves: a slow chat endpoint delays nothing,
                    # and the outcome is sent only once it is delivered (the order holds)
                    sending = threading.Thread(target=self._notify_quietly, args=("started",), daemon=True)
                    sending.start()
                    self.rollback_traffic()
                else:
                    self.notify("started")
                handler()
                self.outcome.result = "success"
            except (StepFailed, PsError) as exc:
                self._finish_failure(exc)
            self.outcome.duration = round(time.monotonic() - started, 3)
            if sending is not None:
                sending.join()
            weight = self._notified_weight()
            if self.outcome.result == "success":
                self.notify("success", weight=_int(weight), message=self.outcome.message,
                            duration=self.outcome.duration)
            elif self.outcome.result == "rolled-back":
                self.notify("rolled-back", message=self.outcome.message, failed_at=self._stage or None,
                            rollback_info=self.outcome.message, duration=self.outcome.duration)
            else:
                self.notify("failure", weight=_int(weight), message=self.outcome.message,
                            failed_at=self._stage or None, duration=self.outcome.duration)
        finally:
            if sending is not None:
                sending.join()
            self._record()
            lock.release()
        return self.outcome

    def _notify_quietly(self, status: str) -> None:
        try:
            self.notify(status)
        except Exception as exc:  # chat never fails a deploy; a thread cannot raise to the run
            self.say(f"warning: notification not delivered: {type(exc).__name__}")

    def _notified_weight(self) -> float | None:
        """The split a notification shows: the canary's share, or the new color's 100 %."""
        if "canary" in self.request.type:
            return next(iter(self.outcome.weights.values()), None)
        if self.request.type == "blue-green" and self.outcome.result == "success":
            return 100.0
        return None

    def _finish_failure(self, exc: Exception) -> None:
        message = exc.message if isinstance(exc, StepFailed | PsError) else str(exc)
        wants_rollback = isinstance(exc, StepFailed) and exc.rollback
        back: str | None = None
        try:
            if wants_rollback and self.request.type in ("canary-auto", "canary-manual"):
                self.rollback_to_stable(self.services("canary"), message)
                back = "rolled back to stable 100 %"
            elif wants_rollback and self.request.type == "blue-green" and self._kept_color:
                back = self.switch_back(message)
        except (StepFailed, PsError) as again:
            self.outcome.message = f"{message}; ROLLBACK FAILED: {again.message}"
            self.outcome.result = "failure"
            self.outcome.exit_code = 1
            return
        if back:
            self.outcome.result = "rolled-back"
            self.outcome.message = f"{message}; {back}"
            self.outcome.exit_code = 1
            return
        self.outcome.result = "failure"
        self.outcome.message = message
        if wants_rollback and self.request.type == "blue-green":
            self.outcome.message += "; no kept color to switch back to"
        self.outcome.exit_code = exc.exit_code if isinstance(exc, PsError) else 1

    def switch_back(self, reason: str) -> str:
        """blue-green: traffic back to the kept color in one reload, verified; what was done."""
        services = [self.config.service(n) for n in self._kept_color]
        color = next(iter(self._kept_color.values()))
        started = self._failed_at or time.monotonic()
        broken = self.not_serving(color, services)
        if broken:  # switching to a color that does not answer would make it worse
            raise StepFailed("; ".join(f"{n}: the kept color {color} {why} too" for n, why in broken.items())
                             + ", so the traffic stays where it is")
        self.report.rollback(f"rollback: {reason}")
        self.decide(f"{reason}: switching {', '.join(self.names(services))} back to {color} (kept running)")
        self.switch(color, services)
        self.outcome.rollback_seconds = round(time.monotonic() - started, 3)
        self.verify(services, active=color)
        self.say(f"traffic back on {color} {self.outcome.rollback_seconds:.3f}s after the failed check")
        return f"switched back to {color}"

    def _record(self) -> None:
        self.report.finish(self.outcome.result, self.outcome.message)
        history = HistoryLog(self.config.state_dir, timezone=self.config.timezone)
        history.record(app=self.config.app, type=self.request.type, result=self.outcome.result,
                       build_ids=self.outcome.build_ids, weights=dict(self.outcome.weights),
                       who=self.ctx.who if self.ctx else None,
                       pipeline_url=self.ctx.pipeline_url if self.ctx else None,
                       message=self.outcome.message, duration=self.outcome.duration)
        if self.request.report:
            json_path, html_path = self.report.write(self.request.report)
            self.outcome.report = [str(json_path), str(html_path)]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self.outcome)


class _Background:
    """Runs `work` in a daemon thread; `done` is set when it ended, `result()` returns or re-raises."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.done = threading.Event()
        self.read = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._work = work
        threading.Thread(target=self._run, daemon=True, name="ps-probe").start()

    def _run(self) -> None:
        try:
            self._value = self._work()
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc
        finally:
            self.done.set()

    def result(self) -> Any:
        self.done.wait()
        self.read = True
        if self._error is not None:
            raise self._error
        return self._value


def _by_build(services: Sequence[Service], builds: dict[str, str]) -> list[tuple[str, list[Service]]]:
    """Services grouped by the build they get (one deploy_slot call per build)."""
    groups: dict[str, list[Service]] = {}
    for service in services:
        groups.setdefault(builds[service.name], []).append(service)
    return list(groups.items())


def _short(exc: Any) -> str:
    text = str(getattr(exc, "explanation", None) or exc)
    return " ".join(text.split())[:200]


def _int(value: float | None) -> int | None:
    return None if value is None else int(round(value))
