"""`FakeOps`: an in-memory world for the deploy plans (the fast test tier).

Slots per service (a build, a state, a start time), a health script per build over virtual time,
the canary's share and the active color per service, the images kept, the notifications sent, and a
virtual clock (holds and watches take no real time). Every change is logged in `calls`, and the
promise of issue 9 is checked on every change: a slot that carries traffic (more than the minimum
weight) is running, and a running slot that carries traffic is never replaced; what breaks it goes
to `violations`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline_steps.config import Config, Service
from pipeline_steps.config.run_spec import Hook
from pipeline_steps.deploy.ops import Check, DeployOps, GateVerdict, JobVerdict, Notice, SlotInfo, SlotMissing
from pipeline_steps.errors import BadInput, CheckFailed, Unreachable

if TYPE_CHECKING:
    from pipeline_steps.analysis.watch import SlotFigures
    from pipeline_steps.deploy.lock.engine import EngineLock

Health = Callable[[float], str | None]  # seconds since the slot started -> None (healthy) or why not


def healthy(_: float) -> str | None:
    return None


def broken(_: float) -> str | None:
    return "HTTP 503"


def turns_unhealthy(after: float) -> Health:
    """Healthy for `after` seconds after the start, then answering 503."""
    return lambda age: "HTTP 503" if age >= after else None


class Killed(BaseException):
    """The process died between two steps (kill -9): raised by a test's `between` hook."""


@dataclass
class FakeSlot:
    build: str
    state: str = "running"  # running | exited
    started: float = 0.0


@dataclass
class FakeProbe:
    """A probe that ends `seconds` of virtual time after it started."""

    ops: FakeOps
    done_at: float
    work: Callable[[], list[dict[str, Any]]]
    read: bool = False

    def is_done(self) -> bool:
        return self.ops.clock >= self.done_at

    def result(self) -> list[dict[str, Any]]:
        self.read = True
        return self.work()


@dataclass
class FakeOps:
    """The world one or several deploys run against; the fields are what tests arrange and read."""

    config: Config
    slots_: dict[tuple[str, str], FakeSlot] = field(default_factory=dict)
    health: dict[str, Health] = field(default_factory=dict)  # build -> script (default: healthy)
    weights: dict[str, float] = field(default_factory=dict)  # service -> the canary's share
    active: dict[str, str] = field(default_factory=dict)  # service -> the active color
    images: dict[str, list[str]] = field(default_factory=dict)  # service -> builds kept, newest first
    registry: set[str] = field(default_factory=set)  # builds a host could pull
    faults: dict[str, str] = field(default_factory=dict)  # "verify" | "probe" | "set_weights" -> problem
    probe_seconds: float = 2.0
    traffic: float = 0.0  # requests per virtual second through nginx, per service (the access log)
    behaviour: dict[str, tuple[float, float]] = field(default_factory=dict)  # build -> (error share, s)
    clock: float = 1000.0
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    lock_engine: EngineLock | None = None  # the deploy lock's engine part (none: the kernel lock only)
    violations: list[str] = field(default_factory=list)
    hook_exits: dict[str, int | None] = field(default_factory=dict)  # command (joined) -> exit code
    workers: dict[str, str] = field(default_factory=dict)  # worker service -> the build its replicas run
    hooks_run: list[tuple[str, str, str]] = field(default_factory=list)  # (phase, command, build)
    # the watch: build -> (CPU %, memory % of the limit), and build -> error lines per minute it logs
    usage: dict[str, tuple[float, float]] = field(default_factory=dict)
    error_rate: dict[str, float] = field(default_factory=dict)

    # ---------------------------------------------------------------- arranging

    def run_slot(self, service: str, slot: str, build: str, state: str = "running") -> None:
        self.slots_[(service, slot)] = FakeSlot(build, state, self.clock)
        self._keep(service, build)

    def slot(self, service: str, slot: str) -> FakeSlot | None:
        return self.slots_.get((service, slot))

    def serving(self, service: str, slot: str) -> bool:
        found = self.slot(service, slot)
        return found is not None and found.state == "running" and self._why(found) is None

    def _why(self, found: FakeSlot) -> str | None:
        return self.health.get(found.build, healthy)(self.clock - found.started)

    def _keep(self, service: str, build: str) -> None:
        kept = self.images.setdefault(service, [])
        if build in kept:
            kept.remove(build)
        kept.insert(0, build)

    def _floor(self) -> float:
        return 100.0 * self.config.canary.min_weight / self.config.canary.scale + 0.05

    def carrying(self, service: str) -> list[str]:
        """The slots of `service` that carry traffic now (more than the minimum weight)."""
        spec = self.config.service(service)
        if spec.pair("canary"):
            if service not in self.weights:
                return []
            pct = self.weights[service]
            return [s for s, share in (("stable", 100 - pct), ("canary", pct)) if share > self._floor()]
        return [self.active[service]] if service in self.active else []

    def _check(self, what: str) -> None:
        for service in self.config.services:
            for slot in self.carrying(service):
                found = self.slot(service, slot)
                if found is None or found.state != "running":
                    self.violations.append(f"after {what}: {service}/{slot} carries traffic but does not run")

    # ---------------------------------------------------------------- DeployOps

    def deploy_slot(self, slot: str, services: Sequence[Service], build_id: str, force: bool) -> bool:
        self.calls.append(("deploy", slot, tuple(s.name for s in services), build_id))
        changed = False
        for service in services:
            found = self.slot(service.name, slot)
            if found is not None and found.state == "running" and found.build == build_id:
                continue
            if slot in self.carrying(service.name):
                if not force:
                    raise CheckFailed(f"{service.name}/{slot} carries traffic; not replaced without --force")
                self.violations.append(f"{service.name}/{slot} replaced while it carried traffic")
            if build_id not in self.images.get(service.name, []) and build_id not in self.registry:
                raise CheckFailed(f"image {service.name}:{build_id} not found")
            self.slots_[(service.name, slot)] = FakeSlot(build_id, "running", self.clock)
            self._keep(service.name, build_id)
            changed = True
        self._check(f"deploy {slot}")
        return changed

    def gate(self, slot: str, service: Service) -> GateVerdict:
        self.calls.append(("gate", slot, service.name))
        found = self.slot(service.name, slot)
        self.clock += 0.5
        if found is None or found.state != "running":
            return GateVerdict(False, service.health.retries, "connection refused")
        why = self._why(found)
        return GateVerdict(why is None, 1 if why is None else service.health.retries, why or "ok", 0.5)

    def check_once(self, slot: str, service: Service, logs_fallback: bool = True) -> Check:
        found = self.slot(service.name, slot)
        if found is None or found.state != "running":
            return Check(False, "connection refused")
        why = self._why(found)
        return Check(why is None, why or "")

    def set_weights(self, pct: float, names: Sequence[str]) -> None:
        self.calls.append(("weights", pct))
        if "set_weights" in self.faults:
            raise CheckFailed(self.faults["set_weights"])
        for name in names:
            self.weights[name] = float(pct)
        self._check(f"set-weights {pct:g}")

    def switch(self, color: str, names: Sequence[str]) -> None:
        self.calls.append(("switch", color))
        for name in names:
            self.active[name] = color
        self._check(f"switch {color}")

    def verify(self, names: Sequence[str], canary: float | None, active: str | None) -> list[str]:
        self.calls.append(("verify",))
        if "verify" in self.faults:
            return [self.faults["verify"]]
        problems = []
        for name in names:
            if canary is not None and self.weights.get(name) != canary:
                problems.append(f"{name}: canary {self.weights.get(name)} % live, {canary:g} % expected")
            if active is not None and self.active.get(name) != active:
                problems.append(f"{name}: {self.active.get(name)} active, {active} expected")
        return problems

    def measure(self, service: Service, canary: float | None, active: str | None) -> list[dict[str, Any]]:
        problems = [self.faults["probe"]] if "probe" in self.faults else []
        share = (canary or 0.0) / 100 if canary is not None else 1.0
        slot = "canary" if canary is not None else str(active)
        return [{"service": service.name, "problems": problems,
                 "measured": {"slot": slot, "share": share, "requests": self.config.canary.probe,
                              "expected_share": share}}]

    def canary_percent(self, names: Sequence[str]) -> dict[str, float]:
        return {n: self.weights.get(n, 0.0) for n in names}

    def active_colors(self, names: Sequence[str]) -> dict[str, str | None]:
        return {n: self.active.get(n) for n in names}

    def live_active(self, service: Service) -> str | None:
        return self.active.get(service.name)

    def slots(self) -> list[SlotInfo]:
        found = []
        for name, service in self.config.services.items():
            for slot in service.slots:
                s = self.slot(name, slot)
                found.append(SlotInfo(name, slot, "local", s.state if s else "missing",
                                      f"{self.config.app}-{name}-{slot}", s.build if s else None))
        return found

    def start_slot(self, slot: str, service: Service) -> list[str]:
        self.calls.append(("start", slot))
        found = self.slot(service.name, slot)
        if found is None:
            raise SlotMissing("local", f"{self.config.app}-{service.name}-{slot}")
        if found.state == "running":
            return []
        found.state, found.started = "running", self.clock
        return [f"host local: started {self.config.app}-{service.name}-{slot} (was exited)"]

    def stop_slot(self, slot: str, services: Sequence[Service]) -> None:
        self.calls.append(("stop", slot))
        for service in services:
            found = self.slot(service.name, slot)
            if found is not None:
                found.state = "exited"
        self._check(f"stop {slot}")

    def prune(self, services: Sequence[Service]) -> None:
        self.calls.append(("prune",))
        keep = self.config.deploy.keep_images
        for service in services:
            used = {s.build for (name, _), s in self.slots_.items() if name == service.name}
            kept = self.images.get(service.name, [])
            self.images[service.name] = kept[:keep] + [b for b in kept[keep:] if b in used]

    def kept_builds(self, service: Service) -> list[str]:
        return list(self.images.get(service.name, []))

    def check_image(self, build_id: str, services: Sequence[Service]) -> None:
        for service in services:
            if build_id not in self.images.get(service.name, []) and build_id not in self.registry:
                raise BadInput(f"--to {build_id}: image {service.name}:{build_id} is not on host local and "
                               "cannot be pulled; see ps history for the builds deployed")

    def wait_required(self, services: Sequence[Service]) -> list[str]:
        self.calls.append(("requires", tuple(s.name for s in services)))
        if "requires" in self.faults:
            raise CheckFailed(self.faults["requires"])
        return [f"{s.name}: {r.name} ready on host local" for s in services for r in s.requires]

    def deploy_workers(self, services: Sequence[Service], build_id: str) -> list[str]:
        self.calls.append(("workers", tuple(s.name for s in services), build_id))
        if "workers" in self.faults:  # a replica not ready: every replaced one is put back
            raise CheckFailed(f"host local: {self.faults['workers']}; the replicas replaced in this run got "
                              "their previous container back")
        lines = []
        for service in services:
            action = "unchanged" if self.workers.get(service.name) == build_id else "replaced"
            self.workers[service.name] = build_id
            lines += [f"shop-{service.name}-{n} {action}" for n in range(1, service.replicas + 1)]
        return lines

    def run_hook(self, hook: Hook, build_id: str) -> JobVerdict:
        command = " ".join(hook.command)
        self.calls.append(("run_hook", hook.phase, command, build_id))
        self.hooks_run.append((hook.phase, command, build_id))
        if hook.phase == "pre_traffic":  # migrations run before the new build gets any traffic
            for (service, slot), found in self.slots_.items():
                if found.build == build_id and self.weights.get(service, 0.0) > self._floor() \
                        and slot == "canary":
                    self.violations.append(f"pre_traffic hook ran while {service}/canary had traffic")
        code = self.hook_exits.get(command, 0)
        how = "timed out and was killed" if code is None else f"exited {code}"
        return JobVerdict(code == 0, f"job {command} ({hook.service} {build_id}) {how} after 0.1s",
                          ("migrating...", f"exit {code}"))

    def notify(self, status: str, **kw: Any) -> Notice:
        self.sent.append((status, kw))
        return Notice(True)

    def now(self) -> float:
        return self.clock

    def pause(self, seconds: float, probe: Any) -> None:
        self.clock += max(seconds, 0.0)

    def start_probe(self, work: Callable[[], list[dict[str, Any]]]) -> FakeProbe:
        return FakeProbe(self, self.clock + self.probe_seconds, work)

    def engine_lock(self) -> EngineLock | None:
        """The engine lock a test gave (`lock_engine`, e.g. over a FakeDockerHost); none by default."""
        return self.lock_engine


    def access_logs(self, services: Sequence[Service]) -> list[FakeAccessLog]:
        self.calls.append(("access-log",))
        return [FakeAccessLog(self, list(services))]

    def watch_figures(self, slot: str, service: Service, since: float) -> list[SlotFigures]:
        """`usage` and `error_rate` of the slot's build; lines only from the later of its start and since."""
        from pipeline_steps.analysis.watch import SlotFigures

        self.calls.append(("watch", slot, service.name))
        if "watch" in self.faults:
            raise Unreachable(self.faults["watch"])
        found = self.slot(service.name, slot)
        if found is None or found.state != "running":
            return []
        cpu, memory = self.usage.get(found.build, (5.0, 10.0))
        minutes = max(0.0, self.clock - max(found.started, since)) / 60.0
        lines = int(self.error_rate.get(found.build, 0.0) * minutes) if self.config.watch.error_pattern \
            else None
        return [SlotFigures(slot=slot, host="local", container=f"{self.config.app}-{service.name}-{slot}",
                            cpu_percent=cpu, memory_percent=memory, memory_bytes=int(memory * (1 << 20)),
                            error_lines=lines, minutes=round(minutes, 4))]


class FakeAccessLog:
    """The router's ps_json log in the fake world: `ops.traffic` requests per virtual second for each
    service since it was opened, split by the live weights, each answered by its slot's build as
    `ops.behaviour[build]` says (error share, latency in seconds; default no error, 20 ms, jittered)."""

    def __init__(self, ops: FakeOps, services: list[Service]) -> None:
        import random

        self.ops = ops
        self.services = services
        self.mark = ops.clock
        self.carry = 0.0
        self.rng = random.Random(14)

    def read(self) -> list[Any]:
        from pipeline_steps.analysis import LogRecord
        from pipeline_steps.upstreams import slot_address

        ops = self.ops
        due = ops.traffic * (ops.clock - self.mark) + self.carry
        self.mark = ops.clock
        count = int(due)
        self.carry = due - count
        out = []
        for service in self.services:
            scale = ops.config.canary.scale
            floor = 100.0 * ops.config.canary.min_weight / scale
            share = min(100.0 - floor, max(floor, ops.weights.get(service.name, 0.0))) / 100.0
            for _ in range(count):
                slot = "canary" if self.rng.random() < share else "stable"
                found = ops.slot(service.name, slot)
                if found is None or found.state != "running":
                    status, latency = 502, 0.001
                else:
                    errors, seconds = ops.behaviour.get(found.build, (0.0, 0.020))
                    status = 500 if self.rng.random() < errors else 200
                    latency = seconds * self.rng.uniform(0.8, 1.2)
                address = slot_address(ops.config.hosts[0], service.slots[slot])
                out.append(LogRecord(time=ops.clock, status=status, upstream=service.upstream,
                                     address=address, addresses=(address,), request_time=latency,
                                     upstream_time=latency))
        return out

    def close(self) -> None:
        pass


def _conforms(fake: FakeOps) -> DeployOps:
    """mypy checks here that FakeOps has every operation of DeployOps."""
    return fake
