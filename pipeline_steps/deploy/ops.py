"""The operations a deploy plan calls, behind one facade: `DeployOps`.

`RealOps` calls the operations (pipeline_steps/operations/: deploy-env, health-gate, set-weights, switch,
verify-weights, status, traffic, mattermost-notify) and the engine; `pipeline_steps.deploy.fake.FakeOps` is an
in-memory world with the same methods, so every deployment type runs in the fast test tier. The plans
(deploy/types.py) never import an operation module: everything they change or read goes through here.

About 400 lines: one facade, each DeployOps method with its RealOps body beside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pipeline_steps.config import Config, Host, Service
from pipeline_steps.config.run_spec import Hook
from pipeline_steps.context import CIContext

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import Prober
    from pipeline_steps.analysis.watch import SlotFigures
    from pipeline_steps.deploy.lock.engine import EngineLock


@dataclass(frozen=True)
class GateVerdict:
    """The end of one slot's health gate."""

    healthy: bool
    tries: int
    reason: str
    elapsed: float = 0.0


@dataclass(frozen=True)
class Check:
    """One health check of a slot on every host."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class SlotInfo:
    """One slot's container on one host (state: running | exited | created | missing | ...)."""

    service: str
    slot: str
    host: str
    state: str
    container: str
    build_id: str | None


@dataclass(frozen=True)
class Notice:
    """Whether a notification went out."""

    delivered: bool
    reason: str = ""


@dataclass(frozen=True)
class JobVerdict:
    """How a hook's job ended: ok, one line saying so, and its last output lines."""

    ok: bool
    summary: str
    tail: tuple[str, ...] = ()


class SlotMissing(Exception):
    """start_slot: a host has no container for the slot."""

    def __init__(self, host: str, container: str) -> None:
        super().__init__(f"{container} on host {host}")
        self.host = host
        self.container = container


class Probe(Protocol):
    """A live-split measure running beside a hold's health checks."""

    read: bool

    def is_done(self) -> bool: ...
    def result(self) -> list[dict[str, Any]]: ...


class DeployOps(Protocol):
    """Everything a deploy plan does to or asks of the world."""

    def deploy_slot(self, slot: str, services: Sequence[Service], build_id: str, force: bool) -> bool: ...
    def gate(self, slot: str, service: Service) -> GateVerdict: ...
    def check_once(self, slot: str, service: Service, logs_fallback: bool = True) -> Check: ...
    def set_weights(self, pct: float, names: Sequence[str]) -> None: ...
    def switch(self, color: str, names: Sequence[str]) -> None: ...
    def verify(self, names: Sequence[str], canary: float | None, active: str | None) -> list[str]: ...
    def measure(self, service: Service, canary: float | None, active: str | None) -> list[dict[str, Any]]: ...
    def canary_percent(self, names: Sequence[str]) -> dict[str, float]: ...
    def active_colors(self, names: Sequence[str]) -> dict[str, str | None]: ...
    def live_active(self, service: Service) -> str | None: ...
    def slots(self) -> list[SlotInfo]: ...
    def start_slot(self, slot: str, service: Service) -> list[str]: ...
    def stop_slot(self, slot: str, services: Sequence[Service]) -> None: ...
    def prune(self, services: Sequence[Service]) -> None: ...
    def kept_builds(self, service: Service) -> list[str]: ...
    def check_image(self, build_id: str, services: Sequence[Service]) -> None: ...
    def notify(self, status: str, **kw: Any) -> Notice: ...
    def run_hook(self, hook: Hook, build_id: str) -> JobVerdict: ...
    def deploy_workers(self, services: Sequence[Service], build_id: str) -> list[str]: ...
    def wait_required(self, services: Sequence[Service]) -> list[str]: ...
    def now(self) -> float: ...
    def pause(self, seconds: float, probe: Probe | None) -> None: ...
    def start_probe(self, work: Callable[[], list[dict[str, Any]]]) -> Probe: ...
    def engine_lock(self) -> EngineLock | None: ...
    def access_logs(self, services: Sequence[Service]) -> list[Any]: ...
    def watch_figures(self, slot: str, service: Service, since: float) -> list[SlotFigures]:
        """The post-deploy watch: `slot`'s containers' CPU, memory and error lines since `since` (the
        ops' clock, `now()`), one per host."""
        ...


class RealOps:
    """The operations on the real hosts and router of `config` (what `ps deploy` uses)."""

    def __init__(self, config: Config, ctx: CIContext | None, say: Callable[[str], None],
                 warn: Callable[[str], None], deploy_type: str, services: Sequence[str] = (), *,
                 prober: Callable[[], Prober] | None = None) -> None:
        """`prober` makes the health gate's Prober (default: the live one). The engines and the router
        come from their factories (adapters.factory, adapters.nginx.router_for): tests install fakes."""
        self.config = config
        self.prober = prober
        self.ctx = ctx
        self.say = say
        self.warn = warn
        self.deploy_type = deploy_type
        self.names = tuple(services)

    def deploy_slot(self, slot: str, services: Sequence[Service], build_id: str, force: bool) -> bool:
        from pipeline_steps.operations.deploy_env import deploy_slot

        result = deploy_slot(self.config, slot, list(services), build_id, force=force, ctx=self.ctx,
                             say=self.say)
        return bool(result.changed)

    def gate(self, slot: str, service: Service) -> GateVerdict:
        from pipeline_steps.operations.health_gate import (
            GatePolicy,
            TryRecord,
            gate_hosts,
            service_targets,
            try_line,
        )

        policy = GatePolicy.from_spec(service.health)
        targets = service_targets(self.config, service.name, slot)
        several = len(targets) > 1  # one gate per host, all at once: each line names its host

        def on_try(host: str, record: TryRecord) -> None:
            where = f"host {host}: " if several else ""
            self.say(f"  {where}{service.name}/{slot} {try_line(record, policy.retries)}")

        result = gate_hosts(targets, policy, on_try=on_try, prober=self.prober,
                            limit=self.config.parallel_hosts)
        return GateVerdict(result.healthy, result.tries, result.reason, result.elapsed)

    def check_once(self, slot: str, service: Service, logs_fallback: bool = True) -> Check:
        from dataclasses import replace

        from pipeline_steps.operations.health_gate import GatePolicy, check_once, service_targets

        policy = GatePolicy.from_spec(service.health, retries=1, successes=1, start_period=0.0)
        if not logs_fallback:  # serving means answering: a stopped container's matching logs carry nothing
            policy = replace(policy, logs_fallback=None)
        record = check_once(service_targets(self.config, service.name, slot), policy,
                            prober=self.prober() if self.prober else None)
        return Check(record.ok, record.reason or "")

    def set_weights(self, pct: float, names: Sequence[str]) -> None:
        from pipeline_steps.operations.set_weights import set_weights
        from pipeline_steps.operations.traffic import change_lines

        change = set_weights(self.config, pct, list(names))
        for line in change_lines(change):
            self.say(line)
        for line in change.warnings:  # a router that differed from router 1, rewritten (issue 12)
            self.warn(line)

    def switch(self, color: str, names: Sequence[str]) -> None:
        from pipeline_steps.operations.switch import switch
        from pipeline_steps.operations.traffic import change_lines

        change = switch(self.config, color, list(names))
        for line in change_lines(change):
            self.say(line)
        for line in change.warnings:
            self.warn(line)

    def verify(self, names: Sequence[str], canary: float | None, active: str | None) -> list[str]:
        from pipeline_steps.operations.verify_weights import verify_weights

        result = verify_weights(self.config, expect_canary=canary, expect_active=active, services=list(names))
        return result.problems()  # every router's (issue 12)

    def measure(self, service: Service, canary: float | None, active: str | None) -> list[dict[str, Any]]:
        from pipeline_steps.operations.verify_weights import verify_weights

        result = verify_weights(self.config, expect_canary=canary, expect_active=active,
                                services=[service.name], probe=self.config.canary.probe, url=service.url)
        if not result.routers and result.front is None:
            return list(result.services)
        # issue 12: a verdict per router (measured through its url) and one through the front
        found = [{**v, "service": f"{v['service']} @{sec['router']}",
                  "problems": [f"{sec['router']}: {p}" for p in v["problems"]]}
                 for sec in result.routers for v in sec["services"]] or list(result.services)
        if result.front is not None:
            found.append({"service": f"{service.name} @front", "measured": result.front["measured"],
                          "problems": result.front["problems"]})
        return found

    def canary_percent(self, names: Sequence[str]) -> dict[str, float]:
        from pipeline_steps.operations.traffic import traffic_status

        wanted = set(names)
        status = traffic_status(self.config)
        for line in status.differences:  # many routers: router 1's is used (issue 12)
            self.warn(line)
        return {s.service: float(s.split.get("canary", 0.0)) for s in status.services if s.service in wanted}

    def active_colors(self, names: Sequence[str]) -> dict[str, str | None]:
        from pipeline_steps.operations.traffic import traffic_status

        live = traffic_status(self.config)
        for line in live.differences:
            self.warn(line)
        status = {s.service: s for s in live.services}
        return {n: (status[n].active if n in status else None) for n in names}

    def live_active(self, service: Service) -> str | None:
        """The active color from the live include file only (no engine call: rollback's first move)."""
        from pipeline_steps.operations.traffic import load_live
        from pipeline_steps.upstreams import active_color

        live = load_live(self.config, self.warn)  # many routers: router 1's, a warning per one differing
        upstream = (live.upstreams() if live is not None else {}).get(service.upstream)
        return active_color(upstream, service, self.config.hosts_of(service)) if upstream else None

    def slots(self) -> list[SlotInfo]:
        from pipeline_steps.operations.status import slot_status

        return [SlotInfo(s.service, s.slot, s.host, s.state, s.container, s.build_id)
                for s in slot_status(self.config).slots]

    def start_slot(self, slot: str, service: Service) -> list[str]:
        from pipeline_steps.adapters import slots
        from pipeline_steps.adapters.docker_host import opened
        from pipeline_steps.parallel import each_host

        name = slots.container_name(self.config.app, service.name, slot)

        def start(host: Host) -> str | None:
            with opened(host) as engine:
                container = engine.container(name)
                if container is None:
                    raise SlotMissing(host.name, name)
                if container.status == "running":
                    return None
                engine.start(container.id)
                return f"host {host.name}: started {name} (was {container.status})"

        found = each_host(self.config.hosts_of(service), start, self.config.parallel_hosts)
        return [line for line in found if line]

    def stop_slot(self, slot: str, services: Sequence[Service]) -> None:
        from pipeline_steps.adapters import slots
        from pipeline_steps.adapters.docker_host import opened
        from pipeline_steps.parallel import each_host

        def stop(host: Host) -> list[str]:
            stopped = []
            with opened(host) as engine:
                for service in (s for s in services if host in self.config.hosts_of(s)):
                    name = slots.container_name(self.config.app, service.name, slot)
                    container = engine.container(name)
                    if container is not None and container.running:
                        engine.stop(container.id, timeout=10)
                        stopped.append(f"host {host.name}: stopped {name}")
            return stopped

        for lines in each_host(self.config.hosts, stop, self.config.parallel_hosts):  # lines in host order
            for line in lines:
                self.say(line)

    def prune(self, services: Sequence[Service]) -> None:
        """Keep the newest deploy.keep_images images per service on every host (for --to previous)."""
        from pipeline_steps.adapters.docker_host import opened, prune_repo
        from pipeline_steps.parallel import each_host

        keep = self.config.deploy.keep_images

        def prune_host(host: Host) -> list[str]:
            with opened(host) as engine:
                return [f"host {host.name}: removed old image {tag}"
                        for service in services if host in self.config.hosts_of(service)
                        for tag in prune_repo(engine, self.config.image_repo(service), keep)]

        for lines in each_host(self.config.hosts, prune_host, self.config.parallel_hosts):
            for line in lines:
                self.say(line)

    def kept_builds(self, service: Service) -> list[str]:
        """The BUILD_IDs of the service's images kept on the first host, newest first."""
        from pipeline_steps.adapters.docker_host import opened

        with opened(self.config.hosts_of(service)[0]) as engine:
            images = engine.repo_images(self.config.image_repo(service))
        return [tag.rpartition(":")[2] for image in images for tag in image.tags]

    def check_image(self, build_id: str, services: Sequence[Service]) -> None:
        """BadInput unless every host has each service's image `build_id` or its registry has it.

        A host whose engine does not answer is skipped with a warning: the rollback's traffic move needs
        no engine, and the redeploy after it reports the host itself.
        """
        from pipeline_steps.adapters.docker_host import opened
        from pipeline_steps.adapters.interfaces import EngineError, EngineGone
        from pipeline_steps.adapters.registry import env_auth
        from pipeline_steps.errors import BadInput, Unreachable

        for host in self.config.hosts:
            try:
                with opened(host, timeout=20) as engine:
                    for service in (s for s in services if host in self.config.hosts_of(s)):
                        ref = self.config.image_ref(service, build_id)
                        try:
                            if engine.image(ref) is not None:
                                continue
                        except EngineGone:
                            raise
                        except EngineError as exc:
                            raise BadInput(f"--to {build_id}: {ref} is not a usable image reference: "
                                           f"{_short(exc)}") from None
                        try:
                            engine.remote_digest(ref, env_auth())
                        except EngineGone:
                            raise
                        except EngineError as exc:
                            raise BadInput(f"--to {build_id}: image {ref} is not on host {host.name} and "
                                           f"cannot be pulled ({_short(exc)}); see ps history for the "
                                           "builds deployed") from None
            except Unreachable as exc:
                self.warn(f"could not check image {build_id} on host {host.name}: {exc.message}")
            except EngineGone as exc:
                self.warn(f"could not check image {build_id} on host {host.name}: the Docker engine went "
                          f"away ({_short(exc)})")

    def wait_required(self, services: Sequence[Service]) -> list[str]:
        from pipeline_steps.operations.requires import wait_required

        return wait_required(self.config, services, on_wait=lambda line: self.say(f"  {line}"))

    def deploy_workers(self, services: Sequence[Service], build_id: str) -> list[str]:
        from pipeline_steps.operations.deploy_workers import deploy_workers

        def said(c: Any) -> None:
            self.say(f"  {c.host}: {c.container} {c.action} ({c.reason})" + (f", ready: {c.ready}" if c.ready
                                                                              else ""))

        result = deploy_workers(self.config, services, build_id, on_change=said,
                                deployed_by=self.ctx.who if self.ctx else None)
        return [f"{c.container} {c.action}" for c in result.changes]

    def run_hook(self, hook: Hook, build_id: str) -> JobVerdict:
        from pipeline_steps.operations.run_job import job_host, run_job

        result = run_job(self.config, self.config.service(hook.service), build_id, hook.command,
                         host=job_host(self.config, hook.host, self.config.service(hook.service)),
                         timeout=hook.timeout,
                         on_output=lambda line: self.say(f"  | {line}"))
        return JobVerdict(result.ok, result.summary, tuple(result.tail))

    def notify(self, status: str, **kw: Any) -> Notice:
        from pipeline_steps.operations.mattermost_notify import notify

        kw.setdefault("log_url", self.ctx.job_url if self.ctx else None)
        result = notify(self.config, self.ctx, status=status, deploy_type=self.deploy_type,
                        services=list(self.names) or list(self.config.services), **kw)
        return Notice(bool(result.delivered), result.reason or "")

    def now(self) -> float:
        return time.monotonic()

    def pause(self, seconds: float, probe: Probe | None) -> None:
        if seconds <= 0:
            return
        if isinstance(probe, _Background) and not probe.read:
            probe.done.wait(seconds)
        else:
            time.sleep(seconds)

    def start_probe(self, work: Callable[[], list[dict[str, Any]]]) -> Probe:
        return _Background(work)

    def engine_lock(self) -> EngineLock | None:
        """The deploy lock on the first host's engine (deploy/lock/engine.py)."""
        from pipeline_steps.deploy.lock.engine import EngineLock

        return EngineLock.for_config(self.config)

    def access_logs(self, services: Sequence[Service]) -> list[Any]:
        """canary.analysis: every router's ps_json access log, read from its current end (through the
        engine for a router in a container on a remote host or with its log in a volume)."""
        from pipeline_steps.adapters.nginx.files import access_log_tail

        return [access_log_tail(r, self.config.router_host(r)) for r in self.config.routers]

    def watch_figures(self, slot: str, service: Service, since: float) -> list[SlotFigures]:
        """watch: docker stats and the error lines of `slot` (since: this clock's time, monotonic)."""
        from pipeline_steps.operations.watch import WatchSampler

        sampler = getattr(self, "_watch_sampler", None)
        if sampler is None:
            sampler = self._watch_sampler = WatchSampler(self.config)
        return sampler.figures(service, slot, time.time() - (time.monotonic() - since))


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

    def is_done(self) -> bool:
        return self.done.is_set()

    def result(self) -> Any:
        self.done.wait()
        self.read = True
        if self._error is not None:
            raise self._error
        return self._value


def _short(exc: Any) -> str:
    text = str(getattr(exc, "explanation", None) or exc)
    return " ".join(text.split())[:200]
