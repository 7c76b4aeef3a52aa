"""Workers (`kind: worker`): services without HTTP, run as `replicas` containers <app>-<service>-<n>.

A deploy replaces them `parallel` at a time (default one), each batch ready before the next: ready is the
`ready` log line written after that container started (an earlier line never counts), else Docker's
HEALTHCHECK healthy, else running without a restart for `health.interval`. If a replica is not ready in
`health.start_period + health.retries x health.interval`, every replica this run replaced gets its
previous container back (renamed, started) and the deploy fails naming it. Same image and settings:
unchanged. The hosts are worked on at once (`parallel_hosts`), each all or nothing on its own.
Replicas beyond `replicas` are removed once the others are ready.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline_steps.adapters import slots as slot_names
from pipeline_steps.adapters.docker_host import ensure_image, image_digest, open_host
from pipeline_steps.adapters.interfaces import DockerHost, EngineError
from pipeline_steps.config import Config, Host, Service
from pipeline_steps.errors import BadInput, CheckFailed
from pipeline_steps.health import container_readiness, logs_match, run_start_ns
from pipeline_steps.parallel import each_host
from pipeline_steps.waiting import poll_until

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import ContainerInfo
    from pipeline_steps.operations.slot_spec import RunSettings

    Todo = list[tuple["ReplicaChange", RunSettings, ContainerInfo | None]]

SLOT = "worker"
MAX_REPLICAS_SEEN = 100  # replicas beyond the configured number are looked for up to this index


@dataclass
class ReplicaChange:
    """What happened to one replica on one host."""

    host: str
    service: str
    replica: int
    container: str
    action: str  # created | replaced | unchanged | removed | would create | would replace | would remove
    reason: str
    ready: str = ""  # how it proved ready


@dataclass
class WorkersResult:
    """The replicas of the deployed workers, one change each."""

    build_id: str
    dry_run: bool
    changes: list[ReplicaChange] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(c.action in ("created", "replaced", "removed") for c in self.changes)


def worker_services(config: Config, names: Sequence[str] | None = None) -> list[Service]:
    """The workers among `names` (all of them for None)."""
    chosen = [config.service(n) for n in names] if names else list(config.services.values())
    return [s for s in chosen if s.is_worker]


def deploy_workers(config: Config, services: Sequence[Service], build_id: str, *, dry_run: bool = False,
                   force: bool = False, deployed_by: str | None = None,
                   on_change: Callable[[ReplicaChange], None] | None = None,
                   poll: float = 0.25) -> WorkersResult:
    """Every replica of each worker on every host runs `build_id`; see the module doc.

    The hosts of a worker are deployed at once (config.parallel_hosts); each host is all or nothing on
    its own, as one host after the other was: a host that fails puts its own replicas back, a host that
    finished keeps the new ones, the changes come back in host order.
    """
    result = WorkersResult(build_id, dry_run)
    report = on_change or (lambda change: None)
    who = deployed_by or os.environ.get("USER") or "unknown"
    for service in services:
        if not service.is_worker:
            raise BadInput(f"service {service.name} is not a worker (kind: {service.kind})")
    for service in services:
        def on_host(host: Host, service: Service = service) -> list[ReplicaChange]:
            return _deploy_on_host(config, service, host, build_id, dry_run, force, who, report, poll)

        for changes in each_host(config.hosts_of(service), on_host, config.parallel_hosts):
            result.changes += changes
    return result


def _deploy_on_host(config: Config, service: Service, host: Host, build_id: str, dry_run: bool, force: bool,
                    who: str, report: Callable[[ReplicaChange], None], poll: float) -> list[ReplicaChange]:
    """One worker's replicas on one host (all of them, or each replaced one back as before: CheckFailed)."""
    from pipeline_steps.operations.slot_spec import changed_settings, slot_environment, wanted_settings

    engine = open_host(host)
    try:
        ref = config.image_ref(service, build_id)
        image = ensure_image(engine, ref)
        digest = image_digest(image, config.image_repo(service))
        todo: Todo = []
        for n in range(1, service.replicas + 1):
            name = slot_names.container_name(config.app, service.name, str(n))
            env = {**slot_environment(config, service, SLOT), "PS_REPLICA": str(n)}
            settings = wanted_settings(config, service, host, SLOT, build_id, image, digest, env)
            existing = engine.container(name)
            change = ReplicaChange(host.name, service.name, n, name, "created", "no container yet")
            if existing is not None:
                if not slot_names.made_by_ps(existing.labels, config.app) and not force:
                    raise CheckFailed(f"host {host.name}: container {name} has the replica's name "
                                      "but pipeline-steps did not make it; rename or remove it, or "
                                      "use --force")
                reasons = changed_settings(settings, dict(existing.attrs))
                if existing.running and not reasons:
                    change.action, change.reason = "unchanged", "same image and settings running"
                else:
                    change.action = "replaced"
                    change.reason = ", ".join(reasons) if existing.running else \
                        f"leftover {existing.status} container"
            todo.append((change, settings, existing))
        extra = _extra_replicas(engine, config, service)
        if dry_run:
            for change, _, _ in todo:
                change.action = {"created": "would create", "replaced": "would replace"}.get(
                    change.action, change.action)
            return [c for c, _, _ in todo] + [ReplicaChange(host.name, service.name, n, name, "would remove",
                                                            f"replicas is {service.replicas}")
                                              for n, name in extra]
        _replace_in_batches(engine, config, service, host, ref, todo, who, report, poll)
        changes = [c for c, _, _ in todo]
        for n, name in extra:
            engine.stop(name, timeout=service.run.stop_seconds(worker=True))
            engine.remove(name)
            change = ReplicaChange(host.name, service.name, n, name, "removed",
                                   f"replicas is {service.replicas}")
            changes.append(change)
            report(change)
        return changes
    finally:
        engine.close()


def _extra_replicas(engine: DockerHost, config: Config, service: Service) -> list[tuple[int, str]]:
    found = []
    for n in range(service.replicas + 1, MAX_REPLICAS_SEEN + 1):
        name = slot_names.container_name(config.app, service.name, str(n))
        c = engine.container(name)
        if c is not None and slot_names.made_by_ps(c.labels, config.app):
            found.append((n, name))
    return found


def _replace_in_batches(engine: DockerHost, config: Config, service: Service, host: Host, ref: str,
                        todo: Todo, who: str,
                        report: Callable[[ReplicaChange], None], poll: float) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    swaps: list[slot_names.Swap] = []
    pending = [(c, s, e) for c, s, e in todo if c.action != "unchanged"]
    for c, _, _ in todo:
        if c.action == "unchanged":
            report(c)
    try:
        for start in range(0, len(pending), service.parallel):
            batch = pending[start:start + service.parallel]
            for change, settings, existing in batch:
                labels = {**settings.labels, slot_names.LABEL_DEPLOYED_BY: who,
                          slot_names.LABEL_DEPLOYED_AT: datetime.now(ZoneInfo(config.timezone)).isoformat(
                              timespec="seconds")}
                swap = slot_names.Swap(change.container, existing)
                swaps.append(swap)
                slot_names.replace_slot(engine, swap, ref, labels, settings.create_kwargs(),
                                        stop_timeout=service.run.stop_seconds(worker=True))
            for change, _, _ in batch:
                change.ready = wait_ready(engine, service, change.container, poll=poll)
                report(change)
    except (CheckFailed, EngineError) as exc:
        back = []
        for swap in reversed(swaps):
            try:
                back.append(slot_names.restore_slot(engine, swap))
            except EngineError as again:
                back.append(f"{swap.name}: could not be put back ({again})")
        what = exc.message if isinstance(exc, CheckFailed) else f"Docker: {exc}"
        raise CheckFailed(f"host {host.name}: {what}; the replicas replaced in this run got their previous "
                          f"container back ({'; '.join(back) or 'none had one'})") from None
    for swap in swaps:
        slot_names.drop_previous(engine, swap)


def wait_ready(engine: DockerHost, service: Service, name: str, *, poll: float = 0.25) -> str:
    """How replica `name` proved ready; CheckFailed when it did not within the service's health budget."""
    spec = service.health
    budget = spec.start_period + spec.retries * spec.interval
    steady_since: list[float] = []
    why = ["not checked yet"]

    def check() -> str | None:
        info = engine.container(name)
        state = (info.attrs.get("State") or {}) if info is not None else None
        verdict = container_readiness(state)  # the health gate's rule; a replica adds its ready line
        if info is None or state is None or not verdict.running:
            tail = engine.logs(name, tail=5).strip()[-300:] if info is not None else ""
            raise CheckFailed(f"{name} is {verdict.status} instead of ready" + (f": {tail}" if tail else ""))
        health = verdict.health
        if service.ready:
            since = run_start_ns(state)
            text = engine.logs(info.id, since=max(1, (since or 0) // 1_000_000_000), timestamps=True)
            if since is not None and logs_match(text, since, service.ready):
                return f"logged {service.ready!r} after it started"
            why[0] = f"no line matching {service.ready!r} since it started"
        elif health and verdict.ready:
            return "Docker health: healthy"
        elif verdict.failed:
            raise CheckFailed(f"{name} is unhealthy (Docker HEALTHCHECK)")
        elif health:
            why[0] = f"Docker health: {health}"
        else:
            steady_since[:] = steady_since or [time.monotonic()]
            if time.monotonic() - steady_since[0] >= spec.interval:
                return f"running for {spec.interval:g}s (no ready line or HEALTHCHECK to wait for)"
            why[0] = "just started"
        return None

    found = poll_until(check, timeout=budget, interval=poll)
    if found is None:
        raise CheckFailed(f"{name} is not ready after {budget:g}s: {why[0]}")
    return found
