"""`ps deploy-env`: run a service's image in one slot (stable/canary/blue/green) on every host.

Idempotent (every run setting ps sets already in place: no change, see `changed_settings`), safe (a
container ps did not make, or a slot that carries traffic, is replaced only with --force; a held port is
named before anything stops; a failed start puts the previous container back), and careful with secrets
(env values go to a 0600 file and the container, only names are printed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pipeline_steps.adapters import slots as slot_names
from pipeline_steps.adapters.docker_host import ensure_image as _ensure
from pipeline_steps.adapters.docker_host import image_digest, open_host
from pipeline_steps.adapters.interfaces import ContainerInfo, DockerHost, EngineError, ImageInfo
from pipeline_steps.config import SLOT_NAMES, Config, Host, Service
from pipeline_steps.errors import BadInput, CheckFailed, PsError, Unreachable
from pipeline_steps.operations.slot_spec import (  # noqa: F401  (re-exported: tests and other steps import them)
    LOG_MAX_FILE,
    LOG_MAX_SIZE,
    RESTART_POLICY,
    RunSettings,
    _bindings,
    changed_settings,
    env_file_path,
    slot_environment,
    wanted_settings,
    write_env_file,
)
from pipeline_steps.parallel import each_host

if TYPE_CHECKING:
    from pipeline_steps.context import CIContext
    from pipeline_steps.upstreams import UpstreamFile

WOULD = {"created": "would-create", "replaced": "would-replace"}


@dataclass
class SlotChange:
    """What deploy-env did (or would do) for one service's slot on one host."""

    host: str
    service: str
    slot: str
    container: str
    action: str  # created | replaced | unchanged | would-create | would-replace
    reason: str
    address: str
    port: int
    image: str
    digest: str
    env_file: str
    env_names: list[str] = field(default_factory=list)


@dataclass
class DeployEnvResult:
    """The outcome of deploying one slot."""

    slot: str
    build_id: str
    dry_run: bool
    changed: bool
    changes: list[SlotChange] = field(default_factory=list)


# ---------------------------------------------------------------- images


def ensure_image(engine: DockerHost, ref: str) -> ImageInfo:
    """The image `ref` on this host, pulled from the registry (REGISTRY_USER/_PASSWORD) when missing."""
    from pipeline_steps.adapters.registry import env_auth

    return _ensure(engine, ref, env_auth())


# ---------------------------------------------------------------- preflight


def _live_upstreams(config: Config) -> list[UpstreamFile]:
    """Every router's live include, read through its Router (a remote router's through its engine)."""
    if not config.routers:
        return []
    from pipeline_steps.operations.traffic import load_all

    return [file for _, file in load_all(config) if file is not None]


def _select(config: Config, slot: str, services: Sequence[Service | str] | None) -> list[Service]:
    if slot not in SLOT_NAMES:
        raise BadInput(f"unknown slot {slot!r} (use {', '.join(SLOT_NAMES)})")
    if services is None:
        chosen = [s for s in config.services.values() if slot in s.slots]
        if not chosen:
            raise BadInput(f"no configured service has a {slot} slot")
        return chosen
    chosen = [config.service(s) if isinstance(s, str) else s for s in services]
    for s in chosen:
        if slot not in s.slots:
            raise BadInput(f"service {s.name} has no {slot} slot (slots: {', '.join(s.slots)})")
    return chosen


@dataclass
class _Plan:
    host: Host
    engine: DockerHost
    service: Service
    image: ImageInfo
    digest: str
    existing: ContainerInfo | None
    env: dict[str, str]
    settings: RunSettings
    change: SlotChange
    swap: slot_names.Swap | None = None


def deploy_slot(config: Config, slot: str, services: Sequence[Service | str] | None, build_id: str | None,
                *, force: bool = False, dry_run: bool = False, ctx: CIContext | None = None,
                say: Any = None) -> DeployEnvResult:
    """Run each service's image `build_id` in `slot` on every host; see the module doc.

    Every check (image, foreign container, traffic, ports) runs on every host before anything stops.
    Then each slot is swapped (previous container renamed aside and stopped, new one started); if any
    start fails, every slot of this run gets its previous container back, and the error is raised.
    """
    chosen = _select(config, slot, services)
    if ctx is None:
        from pipeline_steps.context import detect

        try:
            ctx = detect()
        except BadInput:
            if build_id is None:
                raise
    if build_id is None:
        assert ctx is not None
        build_id = ctx.build_id
    deployed_by = ctx.who if ctx is not None else (os.environ.get("USER") or "unknown")
    envs = {s.name: slot_environment(config, s, slot) for s in chosen}
    upstreams = _live_upstreams(config)
    limit = config.parallel_hosts
    clients: dict[str, DockerHost] = {}

    def connect(h: Host) -> None:
        clients[h.name] = open_host(h)

    try:
        each_host(config.hosts, connect, limit)
        plans: list[_Plan] = []
        for service in chosen:
            plans += _plan_service(config, service, slot, build_id, clients, envs[service.name], upstreams,
                                   force)
        todo = [p for p in plans if p.change.action != "unchanged"]

        def ports(mine: list[_Plan]) -> None:
            for p in mine:
                _preflight_port(config, p, say)

        each_host(_by_host(config, todo), ports, limit)
        _preflight_networks(todo, create=not dry_run)
        if dry_run:
            for p in todo:
                p.change.action = WOULD[p.change.action]
        else:
            _swap_all(config, todo, slot, build_id, deployed_by, say)
    finally:
        for c in clients.values():
            c.close()
    changes = [p.change for p in plans]
    return DeployEnvResult(slot=slot, build_id=build_id, dry_run=dry_run,
                           changed=any(c.action in ("created", "replaced") for c in changes),
                           changes=changes)


def _plan_service(config: Config, service: Service, slot: str, build_id: str,
                  clients: dict[str, DockerHost], env: dict[str, str], upstreams: Sequence[UpstreamFile],
                  force: bool) -> list[_Plan]:
    """The image on each of the service's hosts (pulled there when missing, the hosts at once), the same
    image everywhere, then each host's plan."""
    ref = config.image_ref(service, build_id)
    hosts = config.hosts_of(service)

    def pull(h: Host) -> ImageInfo:
        return ensure_image(clients[h.name], ref)

    found = each_host(hosts, pull, config.parallel_hosts)
    images = {h.name: img for h, img in zip(hosts, found, strict=True)}
    ids = {img.id for img in images.values()}
    if len(ids) > 1:
        per_host = ", ".join(f"{h}: {img.id[:19]}" for h, img in images.items())
        raise CheckFailed(f"image {ref} differs between hosts ({per_host}); push once and pull "
                          "the same digest everywhere")

    def plan(h: Host) -> _Plan:
        return _plan(config, h, clients[h.name], service, slot, ref, build_id, images[h.name], env,
                     upstreams, force)

    return each_host(hosts, plan, config.parallel_hosts)


def _plan(config: Config, host: Host, engine: DockerHost, service: Service, slot: str, ref: str,
          build_id: str, image: ImageInfo, env: dict[str, str], upstreams: Sequence[UpstreamFile],
          force: bool) -> _Plan:
    from pipeline_steps.upstreams import carries_traffic

    name = slot_names.container_name(config.app, service.name, slot)
    existing = engine.container(name)
    if existing is None:  # an interrupted run may have left the previous container aside: it is that
        left = engine.container(slot_names.aside_name(name))
        if left is not None and slot_names.made_by_ps(left.labels, config.app):
            existing = left
    digest = image_digest(image, config.image_repo(service))
    settings = wanted_settings(config, service, host, slot, build_id, image, digest, env)
    change = SlotChange(host=host.name, service=service.name, slot=slot, container=name, action="created",
                        reason="no container yet", address=host.address, port=service.slots[slot],
                        image=ref, digest=digest,
                        env_file=str(env_file_path(config, service, slot)), env_names=sorted(env))
    if existing is not None:
        running = existing.running
        if not slot_names.made_by_ps(existing.labels, config.app):
            image_name = existing.image_name
            if not force:
                raise CheckFailed(f"host {host.name}: container {name} (image {image_name}, "
                                  f"{existing.status}) has the slot's name but pipeline-steps did not "
                                  "make it (no pipeline-steps labels); rename or remove it, or use --force "
                                  "to replace it")
            change.action = "replaced"
            change.reason = f"container not made by pipeline-steps (image {image_name}) replaced (--force)"
            return _Plan(host, engine, service, image, digest, existing, env, settings, change)
        differences = changed_settings(settings, dict(existing.attrs))
        if existing.name != name:
            change.action = "replaced"
            change.reason = f"previous container {existing.name} left by an interrupted run replaced"
        elif running and not differences:
            change.action, change.reason = "unchanged", "same image and settings already running"
        elif not running:
            change.action, change.reason = "replaced", f"leftover {existing.status} container removed"
        else:
            change.action, change.reason = "replaced", ", ".join(differences)
            carried = any(carries_traffic(file.get(service.upstream), service, host, slot,
                                          config.canary.min_weight) for file in upstreams)
            if carried and not force:
                raise CheckFailed(f"host {host.name}: {name} carries traffic in nginx upstream "
                                  f"{service.upstream}; move traffic away first (ps set-weights / ps "
                                  "switch) or use --force")
    return _Plan(host, engine, service, image, digest, existing, env, settings, change)


def _preflight_networks(todo: list[_Plan], create: bool) -> None:
    """Every network a slot joins exists on its host (BadInput naming it), or is made when `create: true`
    asks for it (only when `create`: a dry run changes nothing). Checked on every host before any swap."""
    wanted: dict[tuple[str, str], tuple[DockerHost, bool]] = {}
    for p in todo:
        for net in p.service.run.networks:
            key = (p.host.name, net.name)
            wanted[key] = (p.engine, wanted.get(key, (p.engine, False))[1] or net.create)
    absent = [(host, name, engine, make) for (host, name), (engine, make) in wanted.items()
              if not engine.network_exists(name)]
    refused = [f"{name} on host {host}" for host, name, _, make in absent if not make]
    if refused:
        raise BadInput(f"network {', '.join(refused)} does not exist: create it (docker network create "
                       "NAME) or set `create: true` on the service's network")
    if create:
        for _, name, engine, _ in absent:
            engine.create_network(name, {slot_names.LABEL_PREFIX: "1"})


def _holds(container: ContainerInfo | None, address: str, port: int) -> bool:
    """True when a running container publishes `port` on `address` (or a wildcard address)."""
    if container is None or not container.running:
        return False
    wildcard = ("0.0.0.0", "::")
    return any(p == port and (ip == address or ip in wildcard or address in wildcard)
               for rows in _bindings(container.attrs.get("HostConfig") or {}).values() for ip, p in rows)


def _preflight_port(config: Config, p: _Plan, say: Any) -> None:
    """Refuse (exit 1, naming the holder) when the slot's port is taken on its host; nothing stops first.

    Containers of the host's engine publishing the port, then a bind test through that engine, so it
    holds for unix://, tcp:// and ssh:// alike. The slot's own container is not a holder: it is replaced.
    """
    from pipeline_steps.adapters.docker_host import BindTestError

    port, address, name = p.change.port, p.host.address, p.change.container
    where = f"host {p.host.name}: port {address}:{port} of slot {p.change.slot} is held by"
    wildcard = ("0.0.0.0", "::")
    own = {name, getattr(p.existing, "name", name)}
    for holder, image, ip, host_port in p.engine.published_ports():
        if host_port == port and holder not in own and (ip == address or ip in wildcard
                                                         or address in wildcard):
            raise CheckFailed(f"{where} container {holder} (image {image}); stop it or choose another port "
                              "for the slot")
    if _holds(p.existing, address, port):
        return  # the slot's own container has it until the swap
    holder_text = p.engine.port_holder(address, port)
    if holder_text:
        raise CheckFailed(f"{where} {holder_text}")
    try:
        labels = {slot_names.LABEL_APP: config.app, f"{slot_names.LABEL_PREFIX}.port-check": "1"}
        reason = p.engine.try_bind(p.image.id, address, port, slot_names.port_check_name(name), labels)
    except BindTestError as exc:
        if say:
            say(f"host {p.host.name}: warning: the bind test of port {address}:{port} could not run "
                f"({exc}); the start itself will tell (the previous container comes back if it fails)")
        return
    if reason is not None:
        raise CheckFailed(f"{where} a process on that host (not a container of its engine; the engine "
                          f"says: {reason})")


# ---------------------------------------------------------------- the swap


def _by_host(config: Config, plans: list[_Plan]) -> list[list[_Plan]]:
    """The plans grouped per host (config order), each group in plan order; hosts without any left out."""
    groups = [[p for p in plans if p.host.name == h.name] for h in config.hosts]
    return [g for g in groups if g]


def _swap_all(config: Config, plans: list[_Plan], slot: str, build_id: str, deployed_by: str,
              say: Any) -> None:
    """Swap every planned slot, the hosts at once (config.parallel_hosts), each host's slots in turn.

    On any failure (once every host's swaps in progress have ended) every slot swapped or being swapped
    gets its previous container back, so all hosts keep their previous slots running, as one by one.
    """
    failed: list[_Plan] = []

    def swap_host(mine: list[_Plan]) -> None:
        for p in mine:
            try:
                _swap_in(config, p, slot, build_id, deployed_by)
            except BaseException:
                failed.append(p)
                raise

    groups = _by_host(config, plans)
    try:
        each_host(groups, swap_host, config.parallel_hosts)
    except Exception as exc:
        from pipeline_steps.adapters.docker_host import is_unreachable

        def restore(mine: list[_Plan]) -> list[str]:
            return [slot_names.restore_slot(p.engine, p.swap) for p in reversed(mine) if p.swap is not None]

        texts = [t for lines in reversed(each_host(groups, restore, config.parallel_hosts)) for t in lines]
        back = "; ".join(t for t in texts if t) or "nothing ran in the slot before"
        if isinstance(exc, PsError):
            raise type(exc)(f"{exc.message}; {back}") from None
        if is_unreachable(exc):
            # the plan that raised, on the host each_host raised for (the first failing one in order)
            gone = next((p for g in groups for p in g if any(p is f for f in failed)), plans[-1])
            raise Unreachable(f"host {gone.host.name}: Docker engine went away while swapping "
                              f"{gone.change.container}: {exc}; {back}") from None
        raise

    def finish(mine: list[_Plan]) -> list[str]:
        lines = []
        for p in mine:
            warning = slot_names.drop_previous(p.engine, p.swap) if p.swap is not None else None
            if warning:
                lines.append(warning)
            lines.append(f"host {p.host.name}: {p.change.container} {p.change.action}, {p.change.reason} "
                         f"({p.change.image}) on {p.change.address}:{p.change.port}")
        return lines

    for lines in each_host(groups, finish, config.parallel_hosts):
        for line in lines:
            if say:
                say(line)


def _swap_in(config: Config, p: _Plan, slot: str, build_id: str, deployed_by: str) -> None:
    """Previous container renamed aside and stopped, the new one created and started (CheckFailed if not)."""
    from pipeline_steps.adapters.interfaces import EngineGone

    write_env_file(Path(p.change.env_file), p.env)
    labels = {**p.settings.labels,
              slot_names.LABEL_DEPLOYED_AT: datetime.now(ZoneInfo(config.timezone)).isoformat(
                  timespec="seconds"),
              slot_names.LABEL_DEPLOYED_BY: deployed_by}
    name = p.change.container
    p.swap = slot_names.Swap(name, p.existing)
    try:
        started = slot_names.replace_slot(p.engine, p.swap, p.change.image, labels,
                                          p.settings.create_kwargs(),
                                          stop_timeout=p.service.run.stop_seconds(worker=False))
    except EngineGone:
        raise
    except EngineError as exc:
        raise CheckFailed(f"host {p.host.name}: could not start {name}: {exc}") from None
    if started.status != "running":
        tail = p.engine.logs(started.id, tail=5).strip()
        raise CheckFailed(f"host {p.host.name}: {name} is {started.status} right after start: "
                          f"{tail[-300:]}")
