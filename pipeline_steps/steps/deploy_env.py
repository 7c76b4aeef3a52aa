"""`ps deploy-env`: run a service's image in one slot (stable/canary/blue/green) on every host.

Idempotent (same image and env already running: no change), safe (a slot that carries traffic is
replaced only with --force), and careful with secrets (env values go to a 0600 file and the container,
only names are printed).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline_steps.adapters import slots as slot_names
from pipeline_steps.adapters.docker_host import connect
from pipeline_steps.command import load, pass_output, report
from pipeline_steps.config import SLOT_NAMES, Config, Host, Service
from pipeline_steps.errors import BadInput, CheckFailed, Unreachable
from pipeline_steps.output import Output
from pipeline_steps.secrets import register_secret

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

    from pipeline_steps.context import CIContext
    from pipeline_steps.upstreams import UpstreamFile

LOG_MAX_SIZE = "10m"
LOG_MAX_FILE = "3"
WOULD = {"created": "would-create", "replaced": "would-replace"}
SECRET_HINTS = ("PASS", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "PRIVATE")


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


# ---------------------------------------------------------------- environment


def slot_environment(config: Config, service: Service, slot: str,
                     environ: dict[str, str] | None = None) -> dict[str, str]:
    """The container environment of a slot: service env, env_from values, TZ and PS_* names.

    A missing env_from variable is BadInput (exit 2); every env_from value is registered as a secret.
    """
    environ = dict(os.environ) if environ is None else environ
    missing = [name for name in service.env_from if name not in environ]
    if missing:
        raise BadInput(f"service {service.name}: env_from variable(s) not set in the pipeline "
                       f"environment: {', '.join(missing)}")
    env: dict[str, str] = {"TZ": config.timezone}
    env.update(service.env)
    for name in service.env_from:
        env[name] = environ[name]
        register_secret(environ[name])
    for name, value in service.env.items():
        if any(h in name.upper() for h in SECRET_HINTS):
            register_secret(value)
    env.update({"PS_SLOT": slot, "PS_SERVICE": service.name, "PS_APP": config.app})
    return env


def env_file_path(config: Config, service: Service, slot: str) -> Path:
    return Path(config.state_dir) / "env" / f"{service.name}-{slot}.env"


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """Write KEY=VALUE lines atomically with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for key in sorted(env):
                value = env[key].replace("\n", "\\n")
                fh.write(f"{key}={value}\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------- images


def _registry_auth() -> dict[str, str] | None:
    user = os.environ.get("REGISTRY_USER")
    password = os.environ.get("REGISTRY_PASSWORD")
    if not user or not password:
        return None
    register_secret(password)
    return {"username": user, "password": password}


def ensure_image(client: docker.DockerClient, host: Host, ref: str) -> Any:
    """The image `ref` on this host, pulled from the registry when missing."""
    import docker.errors

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise Unreachable(f"host {host.name}: Docker engine error looking up {ref}: {exc.explanation}") \
            from None
    repo, _, tag = ref.rpartition(":")
    try:
        return client.images.pull(repo, tag=tag, auth_config=_registry_auth())
    except docker.errors.APIError as exc:
        raise CheckFailed(f"host {host.name}: image {ref} is not there and could not be pulled: "
                          f"{exc.explanation or exc}") from None


def image_digest(image: Any, repo: str) -> str:
    """The registry digest (repo@sha256:...) when known, else the image id."""
    for digest in image.attrs.get("RepoDigests") or []:
        if digest.startswith(repo + "@"):
            return str(digest.partition("@")[2])
    return str(image.id)


# ---------------------------------------------------------------- preflight


def _port_users(client: docker.DockerClient, address: str, port: int) -> list[str]:
    """Names of running containers publishing host port `port` on `address` (or a wildcard)."""
    users: list[str] = []
    for container in client.containers.list(ignore_removed=True):  # others come and go meanwhile
        for bindings in (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).values():
            for b in bindings or []:
                if b.get("HostPort") == str(port) and b.get("HostIp") in (address, "0.0.0.0", "", "::"):
                    users.append(container.name)
    return users


def _existing(client: docker.DockerClient, name: str) -> Container | None:
    import docker.errors

    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def _live_upstreams(config: Config) -> UpstreamFile | None:
    if config.router is None or not Path(config.router.include).is_file():
        return None
    from pipeline_steps.upstreams import UpstreamFile

    return UpstreamFile.load(config.router.include)


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
    client: Any
    service: Service
    image: Any
    digest: str
    existing: Any
    env: dict[str, str]
    change: SlotChange


def deploy_slot(config: Config, slot: str, services: Sequence[Service | str] | None, build_id: str | None,
                *, force: bool = False, dry_run: bool = False, ctx: CIContext | None = None,
                say: Any = None) -> DeployEnvResult:
    """Run each service's image `build_id` in `slot` on every host; see the module doc."""
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
    clients = {h.name: connect(h) for h in config.hosts}
    try:
        plans: list[_Plan] = []
        for service in chosen:
            ref = config.image_ref(service, build_id)
            images = {h.name: ensure_image(clients[h.name], h, ref) for h in config.hosts}
            ids = {img.id for img in images.values()}
            if len(ids) > 1:
                per_host = ", ".join(f"{h}: {img.id[:19]}" for h, img in images.items())
                raise CheckFailed(f"image {ref} differs between hosts ({per_host}); push once and pull "
                                  "the same digest everywhere")
            env = envs[service.name]
            wanted_hash = slot_names.env_hash(env)
            for host in config.hosts:
                plans.append(_plan(config, host, clients[host.name], service, slot, ref, build_id,
                                   images[host.name], env, wanted_hash, upstreams, force))
        for p in plans:
            if p.change.action != "unchanged":
                _preflight_port(p)
        if not dry_run:
            for p in plans:
                if p.change.action == "unchanged":
                    continue
                _run_slot(config, p, slot, build_id, deployed_by)
                if say:
                    say(f"host {p.host.name}: {p.change.container} {p.change.action}, {p.change.reason} "
                        f"({p.change.image}) on {p.change.address}:{p.change.port}")
        else:
            for p in plans:
                if p.change.action != "unchanged":
                    p.change.action = WOULD[p.change.action]
    finally:
        for c in clients.values():
            c.close()
    changes = [p.change for p in plans]
    return DeployEnvResult(slot=slot, build_id=build_id, dry_run=dry_run,
                           changed=any(c.action in ("created", "replaced") for c in changes),
                           changes=changes)


def _plan(config: Config, host: Host, client: Any, service: Service, slot: str, ref: str, build_id: str,
          image: Any, env: dict[str, str], wanted_hash: str, upstreams: UpstreamFile | None,
          force: bool) -> _Plan:
    from pipeline_steps.upstreams import carries_traffic

    name = slot_names.container_name(config.app, service.name, slot)
    existing = _existing(client, name)
    digest = image_digest(image, config.image_repo(service))
    change = SlotChange(host=host.name, service=service.name, slot=slot, container=name, action="created",
                        reason="no container yet", address=host.address, port=service.slots[slot],
                        image=ref, digest=digest,
                        env_file=str(env_file_path(config, service, slot)), env_names=sorted(env))
    if existing is not None:
        labels = existing.labels or {}
        running = existing.status in ("running", "restarting")
        same_image = (existing.image is not None and existing.image.id == image.id
                      and labels.get(slot_names.LABEL_BUILD_ID) == build_id)
        same = same_image and labels.get(slot_names.LABEL_ENV_HASH) == wanted_hash
        if running and same:
            change.action, change.reason = "unchanged", "same image and env already running"
        elif not running:
            change.action, change.reason = "replaced", f"leftover {existing.status} container removed"
        else:
            change.action = "replaced"
            change.reason = "new image" if not same_image else "new environment"
            upstream = upstreams.get(service.upstream) if upstreams else None
            if carries_traffic(upstream, service, host, slot, config.canary.min_weight) and not force:
                raise CheckFailed(f"host {host.name}: {name} carries traffic in nginx upstream "
                                  f"{service.upstream}; move traffic away first (ps set-weights / ps "
                                  "switch) or use --force")
    return _Plan(host=host, client=client, service=service, image=image, digest=digest, existing=existing,
                 env=env, change=change)


def _preflight_port(p: _Plan) -> None:
    port, address = p.change.port, p.host.address
    own_running = p.existing is not None and p.existing.status in ("running", "restarting")
    users = [n for n in _port_users(p.client, address, port) if n != p.change.container]
    if users:
        raise CheckFailed(f"host {p.host.name}: port {address}:{port} of slot {p.change.slot} is held by "
                          f"container {users[0]}")
    if slot_names.is_local(p.host) and not own_running:
        holder = slot_names.port_holder(address, port)
        if holder:
            raise CheckFailed(f"host {p.host.name}: port {address}:{port} of slot {p.change.slot} is held "
                              f"by {holder}")


def _run_slot(config: Config, p: _Plan, slot: str, build_id: str, deployed_by: str) -> None:
    import docker.errors
    from docker.types import LogConfig

    write_env_file(Path(p.change.env_file), p.env)
    labels = {
        slot_names.LABEL_APP: config.app,
        slot_names.LABEL_SERVICE: p.service.name,
        slot_names.LABEL_SLOT: slot,
        slot_names.LABEL_BUILD_ID: build_id,
        slot_names.LABEL_DIGEST: p.digest,
        slot_names.LABEL_DEPLOYED_AT: datetime.now(UTC).isoformat(timespec="seconds"),
        slot_names.LABEL_DEPLOYED_BY: deployed_by,
        slot_names.LABEL_ENV_HASH: slot_names.env_hash(p.env),
    }
    try:
        if p.existing is not None:
            p.existing.remove(force=True)
        container = p.client.containers.run(
            p.change.image, name=p.change.container, detach=True, labels=labels, environment=p.env,
            ports={f"{p.service.port}/tcp": (p.host.address, p.change.port)},
            restart_policy={"Name": "unless-stopped"},
            log_config=LogConfig(type=LogConfig.types.JSON,
                                 config={"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE}))
        container.reload()
    except docker.errors.APIError as exc:
        raise CheckFailed(f"host {p.host.name}: could not start {p.change.container}: "
                          f"{exc.explanation or exc}") from None
    if container.status not in ("running", "created"):
        tail = container.logs(tail=5).decode(errors="replace").strip()
        raise CheckFailed(f"host {p.host.name}: {p.change.container} is {container.status} right after "
                          f"start: {tail[-300:]}")


# ---------------------------------------------------------------- command


@click.command("deploy-env")
@click.option("--slot", required=True, type=click.Choice(SLOT_NAMES), help="The slot to deploy.")
@click.option("--service", "-s", "service", metavar="NAME", help="Only this service (default: all).")
@click.option("--all", "all_services", is_flag=True, help="Every configured service with that slot.")
@click.option("--build-id", metavar="ID", help="BUILD_ID to run (default: from the CI context).")
@click.option("--force", is_flag=True, help="Replace the slot even while it carries traffic.")
@pass_output
def command(out: Output, slot: str, service: str | None, all_services: bool, build_id: str | None,
            force: bool) -> None:
    """Run the service image in SLOT on every configured host."""
    if service and all_services:
        raise BadInput("give --service NAME or --all, not both")
    config = load(out)
    from pipeline_steps.deploy import pipeline  # issue 15: lease check + history (ci helper)

    with pipeline.step_guard(config, "deploy-env", dry_run=out.dry_run):
        result = deploy_slot(config, slot, [service] if service else None, build_id, force=force,
                             dry_run=out.dry_run, say=out.say)
        if not out.dry_run:
            pipeline.record_step(config, "deploy-env", message=f"{slot}: build {result.build_id}",
                                 build_ids={f"{n}/{slot}": result.build_id
                                            for n in sorted({c.service for c in result.changes})})
    for c in result.changes:
        if c.action == "unchanged" or c.action.startswith("would-"):
            verb = "unchanged:" if c.action == "unchanged" else f"{c.action.replace('-', ' ')}:"
            out.say(f"host {c.host}: {c.container} {verb} {c.reason} ({c.image})")
    names = sorted({n for c in result.changes for n in c.env_names})
    out.say(f"env (names only): {', '.join(names)}")
    summary = "changed" if result.changed else ("dry run, nothing changed" if result.dry_run
                                                 else "no change, already running")
    out.say(f"deploy-env {slot} build {result.build_id}: {summary}")
    report(out, "deploy-env", asdict(result))
