"""Deployment types composed from the single steps.

Every type: take the deploy lock, notify `started`, run, then notify the outcome once, append to the
history and (with --report) write the JSON + HTML report. The types only call the steps
(deploy_slot, gate/check_once, set_weights, switch, verify_weights, traffic_status) and explain each
decision they take; they never re-implement what a step does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
               rollback_on_failure: bool = False) -> None:
        """verify-weights against the live upstream file, with the live split when canary.probe > 0."""
        from pipeline_steps.steps.verify_weights import verify_weights

        probe = self.config.canary.probe
        results = [verify_weights(self.config, expect_canary=canary, expect_active=active,
                                  services=self.names(services))]
        for service in services:
            url = self.probe_url(service)
            if probe and url:
                results.append(verify_weights(self.config, expect_canary=canary, expect_active=active,
                                              services=[service.name], probe=probe, url=url))
        problems = [p for r in results for s in r.services for p in s.get("problems", [])]
        for r in results[1:]:
            for svc in r.services:
                m = svc.get("measured") or {}
                if m:
                    self.say(f"{svc['service']}: {m['slot']} answered {100 * m['share']:.1f} % of "
                             f"{m['requests']} requests (target {100 * m['expected_share']:.1f} %)")
                    self.report.add("step", f"{svc['service']}: measured {m['slot']} "
                                    f"{100 * m['share']:.1f} % over {m['requests']} requests")
        if problems:
            raise StepFailed(f"weights not as expected: {'; '.join(problems)}", rollback=rollback_on_failure)
        what = f"canary {canary:g} %" if canary is not None else f"{active} active"
        self.say(f"verified: {what} live in nginx" + (" and measured" if len(results) > 1 else ""))

    def probe_url(self, service: Service) -> str | None:
        """Where to measure the live split of a service: its url, or router.url for a single service."""
        if service.url:
            return service.url
        if self.config.router and self.config.router.url and len(self.config.services) == 1:
            return self.config.router.url
        return None

    def hold(self, services: Sequence[Service], pause: float, checks: int | None) -> None:
        """Keep the weight for `pause` seconds, re-checking canary health every check interval."""
        from pipeline_steps.steps.health_gate import GatePolicy, check_once, service_targets

        interval = self.config.canary.check_interval
        if checks:
            interval = pause / checks if pause > 0 else 0.0
        targets = {s.name: service_targets(self.config, s.name, "canary") for s in services}
        policies = {s.name: GatePolicy.from_spec(s.health, retries=1, successes=1, start_period=0.0)
                    for s in services}
        end = time.monotonic() + pause
        count = 0
        while True:
            for service in services:
                record = check_once(targets[service.name], policies[service.name])
                count += 1
                self.report.health(service.name, record.ok, f"canary check: {record.reason or 'ok'}")
                if not record.ok:
                    self._failed_at = time.monotonic()
                    raise StepFailed(f"{service.name}/canary turned unhealthy during the hold: "
                                     f"{record.reason}", rollback=True)
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(interval, remaining))
        self.say(f"held {pause:g}s, canary healthy in {count} checks")

    def rollback_to_stable(self, services: Sequence[Service], reason: str) -> None:
        """All traffic back on stable in one reload (no Docker call in the way), then verified."""
        started = self._failed_at or time.monotonic()
        self.report.rollback(f"rollback: {reason}")
        self.decide(f"{reason}: rolling back {', '.join(self.names(services))} to stable 100 % (canary "
                    f"keeps the minimum weight {self.config.canary.min_weight})")
        self.set_weights(0, services)
        self.outcome.rollback_seconds = round(time.monotonic() - started, 3)
        self.verify(services, canary=0)
        self.say(f"traffic back on stable {self.outcome.rollback_seconds:.3f}s after the failed check")

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

    def run_stable(self) -> None:
        services = self.services("canary")
        build_id = self.build_id()
        self.decide(f"deploying {build_id} into the stable slot of {', '.join(self.names(services))}; the "
                    "stable slot carries traffic, so it is replaced in place (nginx retries on the canary "
                    "server during the swap)")
        self.deploy("stable", services, build_id, force=True)
        self.gate("stable", services)
        self.set_weights(0, services)
        self.verify(services, canary=0)
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
        live = self.live_canary_percent(services)
        busy = [n for n, pct in live.items() if pct > 100.0 * self.config.canary.min_weight /
                self.config.canary.scale + 0.05]
        if busy:
            self.decide(f"the canary of {', '.join(busy)} still carries traffic: moving it to stable before "
                        "replacing it")
            self.set_weights(0, [s for s in services if s.name in busy])
        self.decide(f"deploying {build_id} into the canary slot of {', '.join(self.names(services))}")
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
        self.set_weights(weight, services)
        self.verify(services, canary=weight, rollback_on_failure=True)
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
            try:
                self.set_weights(step.weight, services)
            except PsError as exc:
                raise StepFailed(f"setting canary {step.weight} % failed: {exc.message}", rollback=True) \
                    from None
            self.verify(services, canary=step.weight, rollback_on_failure=True)
            self.hold(services, pause, step.checks)
        last = steps[-1].weight
        self.outcome.message = (f"canary {build_id} holds {last} % after {len(steps)} healthy steps; "
                                "promote with `ps deploy --type promote-canary`")

    def run_promote_canary(self) -> None:
        services = self.services("canary")
        builds = {s.name: self.live_canary_build(s) for s in services}
        self.gate("canary", services)
        self.decide("moving traffic to the canary (it runs the build being promoted) while the stable slot "
                    "is replaced")
        self.set_weights(100, services)
        for service in services:
            self.decide(f"{service.name}: deploying the canary's {builds[service.name]} into stable")
            self.deploy("stable", [service], builds[service.name], force=True)
        self.gate("stable", services)
        self.set_weights(0, services)
        self.verify(services, canary=0)
        self.prune(services)
        self.outcome.message = "promoted: stable and canary run " + ", ".join(
            f"{n} {b}" for n, b in builds.items())

    def rollback_traffic(self) -> None:
        """rollback's first move, before any notification or Docker call: read only the live include
        file and put the traffic back (stable 100 %, or the kept color) in one reload per kind."""
        from pipeline_steps.steps.traffic import load_live
        from pipeline_steps.upstreams import active_color

        live = load_live(self.config)
        upstreams = live.upstreams() if live is not None else {}
        canary = self.services_or_empty("canary")
        if canary:
            self.rollback_to_stable(canary, "rollback requested")
        for service in self.services_or_empty("blue-green"):
            upstream = upstreams.get(service.upstream)
            active = active_color(upstream, service, self.config.hosts) if upstream else None
            if active is None:
                self.say(f"{service.name}: no active color in nginx, nothing to switch back")
                continue
            previous = "green" if active == "blue" else "blue"
            self.decide(f"{service.name}: switching back to {previous} (kept as backup for this)")
            self.switch(previous, [service])

    def run_rollback(self) -> None:
        """After rollback_traffic: with --to, redeploy stable with an earlier build."""
        target = self.request.to
        if target:
            canary = self.services_or_empty("canary")
            if not canary:
                raise BadInput("--to needs stable/canary services")
            for service in canary:
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
        self.deploy("canary", [service], build_id)
        self.gate("canary", [service])
        self.set_weights(100, [service])
        self.deploy("stable", [service], build_id, force=True)
        self.gate("stable", [service])
        self.set_weights(0, [service])
        self.verify([service], canary=0)

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
        self.deploy(target, services, build_id)
        self.gate(target, services)
        self.switch(target, services)
        self.verify(services, active=target)
        keep = self.request.keep if self.request.keep is not None else self.config.deploy.blue_green_keep
        if active and keep is not None:
            self.decide(f"stopping the old color {active} after {keep:g}s")
            time.sleep(keep)
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
        if t == "rollback":
            every = self.names(self.services_or_empty("canary") + self.services_or_empty("blue-green"))
            steps = [f"lock, notify started; all traffic of {', '.join(every)} to stable (blue/green: back "
                     "to the kept color) in one reload, verified"]
            if self.request.to:
                steps.append(f"redeploy {self.request.to} into stable through the canary slot")
            return steps
        kind = "blue-green" if t == "blue-green" else "canary"
        names = ", ".join(self.names(self.services(kind)))
        build = self.request.build_id or (self.ctx.build_id if self.ctx else "the canary's build")
        if t == "stable":
            return [f"deploy {build} into stable of {names} (replaced in place)", "gate stable",
                    "stable 100 % (canary keeps the minimum weight), verify", "prune old images"]
        if t == "blue-green":
            return [f"deploy {build} into the inactive color of {names}", "gate it", "switch to it, verify",
                    "keep the old color as backup" if self.request.keep is None
                    else f"stop the old color after {self.request.keep:g}s"]
        if t == "promote-canary":
            return [f"gate the canary of {names}", "traffic to the canary",
                    "deploy the canary's BUILD_ID into stable, gate", "stable 100 %, verify"]
        start = [f"deploy {build} into canary of {names} (moving any canary traffic to stable first)",
                 "gate canary (failure: rollback to stable)"]
        if t == "canary-manual":
            return [*start, f"canary {self.request.weight:g} %, verify"]
        return [*start, *[f"canary {step.weight} %, verify, hold "
                          f"{policy.pause if step.pause is None else step.pause:g}s checking health every "
                          f"{policy.check_interval:g}s (failure: rollback to stable, notify, exit 1)"
                          for step in policy.steps]]

    def preflight(self) -> None:
        """Bad input is refused before the lock, a notification or any change."""
        kind = {"blue-green": "blue-green", "rollback": None}.get(self.request.type, "canary")
        if kind is not None:
            self.services(kind)
        elif not (self.services_or_empty("canary") or self.services_or_empty("blue-green")):
            raise BadInput("no service to roll back (none has a stable/canary or blue/green pair)")
        if self.request.type in ("stable", "canary-manual", "canary-auto", "blue-green"):
            self.build_id()

    def run(self) -> DeployOutcome:
        """Lock, run the type, and notify, record and report its outcome."""
        self.preflight()
        lock = DeployLock(self.config.state_dir, self.config.app, timezone=self.config.timezone,
                          deploy_type=self.request.type,
                          pipeline_url=self.ctx.pipeline_url if self.ctx else None)
        lock.acquire(wait=self.request.lock_wait)
        started = time.monotonic()
        try:
            handler = getattr(self, "run_" + self.request.type.replace("-", "_"))
            try:
                if self.request.type == "rollback":
                    self.rollback_traffic()  # first: a slow chat endpoint or engine must not delay it
                self.notify("started")
                handler()
                self.outcome.result = "success"
            except (StepFailed, PsError) as exc:
                self._finish_failure(exc)
            self.outcome.duration = round(time.monotonic() - started, 3)
            weight = self._notified_weight()
            if self.outcome.result == "success":
                self.notify("success", weight=_int(weight), message=self.outcome.message,
                            duration=self.outcome.duration)
            elif self.outcome.result == "rolled-back":
                self.notify("rolled-back", weight=0, message=self.outcome.message,
                            rollback_info=self.outcome.message, duration=self.outcome.duration)
            else:
                self.notify("failure", weight=_int(weight), message=self.outcome.message,
                            duration=self.outcome.duration)
        finally:
            self._record()
            lock.release()
        return self.outcome

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
        if wants_rollback and self.request.type in ("canary-auto", "canary-manual"):
            services = self.services("canary")
            try:
                self.rollback_to_stable(services, message)
                self.outcome.result = "rolled-back"
                self.outcome.message = f"{message}; rolled back to stable 100 %"
                self.outcome.exit_code = 1
                return
            except (StepFailed, PsError) as again:
                self.outcome.message = f"{message}; ROLLBACK FAILED: {again.message}"
                self.outcome.result = "failure"
                self.outcome.exit_code = 1
                return
        self.outcome.result = "failure"
        self.outcome.message = message
        self.outcome.exit_code = exc.exit_code if isinstance(exc, PsError) else 1

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


def _int(value: float | None) -> int | None:
    return None if value is None else int(round(value))
