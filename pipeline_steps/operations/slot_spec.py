"""What a slot container is made of: its environment (and 0600 env file) and every run setting ps gives
it, compared for deploy-env's idempotency (split from deploy_env.py to keep it readable)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_steps.adapters import run_options
from pipeline_steps.adapters import slots as slot_names
from pipeline_steps.config import Config, Host, Service
from pipeline_steps.config.run_spec import RunSpec
from pipeline_steps.errors import BadInput
from pipeline_steps.files import atomic_write
from pipeline_steps.secrets import is_secret_name, register_secret

LOG_MAX_SIZE = "10m"
LOG_MAX_FILE = "3"
RESTART_POLICY = "unless-stopped"


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
        if is_secret_name(name):
            register_secret(value)
    env.update({"PS_SLOT": slot, "PS_SERVICE": service.name, "PS_APP": config.app})
    return env


def env_file_path(config: Config, service: Service, slot: str) -> Path:
    return Path(config.state_dir) / "env" / f"{service.name}-{slot}.env"


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """Write KEY=VALUE lines atomically with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = "".join(f"{key}={env[key].replace(chr(10), chr(92) + 'n')}\n" for key in sorted(env))
    atomic_write(path, lines, mode=0o600)


# ---------------------------------------------------------------- run settings


@dataclass(frozen=True)
class RunSettings:
    """Every run setting ps gives a slot container; `changed_settings` compares them for idempotency.

    To add a setting (networks, volumes, limits...): a field here, its argument in `create_kwargs`,
    and its comparison in `changed_settings`.
    """

    image_id: str
    ports: dict[str, tuple[str, int]]  # "80/tcp" -> (host address, host port)
    env: dict[str, str]
    labels: dict[str, str]  # the labels ps compares (deployed-at/-by are added at run time)
    restart_policy: str
    log_config: dict[str, Any]  # {"Type": ..., "Config": {...}} as the engine reports it
    run: RunSpec = field(default_factory=RunSpec)  # networks, volumes, command, limits (ps.yaml)

    def create_kwargs(self) -> dict[str, Any]:
        return {"environment": self.env, "ports": dict(self.ports),
                "restart_policy": {"Name": self.restart_policy}, "log_config": self.log_config,
                "options": run_options.create_options(self.run), "networks": run_options.networks(self.run)}


def wanted_settings(config: Config, service: Service, host: Host, slot: str, build_id: str, image: Any,
                    digest: str, env: dict[str, str]) -> RunSettings:
    """The run settings of `slot` as ps.yaml wants them now."""
    run = service.run
    log = ({"Type": run.log_driver, "Config": dict(run.log_options)} if run.log_driver else
           {"Type": "json-file", "Config": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE}})
    return RunSettings(
        image_id=str(image.id),
        ports={f"{service.port}/tcp": (host.address, service.slots[slot])} if slot in service.slots else {},
        env=env,
        labels={**dict(run.labels), slot_names.LABEL_RUN: run.as_label(),
                slot_names.LABEL_APP: config.app, slot_names.LABEL_SERVICE: service.name,
                slot_names.LABEL_SLOT: slot, slot_names.LABEL_BUILD_ID: build_id,
                slot_names.LABEL_DIGEST: digest, slot_names.LABEL_ENV_HASH: slot_names.env_hash(env)},
        restart_policy=run.restart or RESTART_POLICY, log_config=log, run=run)


def _bindings(host_config: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {}
    for key, rows in (host_config.get("PortBindings") or {}).items():
        found[key] = sorted((str(r.get("HostIp") or "0.0.0.0"), int(r.get("HostPort") or 0))
                            for r in rows or [])
    return found


def changed_settings(wanted: RunSettings, attrs: dict[str, Any]) -> list[str]:
    """What differs between a container (its inspect attrs) and `wanted`, as reasons; [] when the same."""
    conf = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    labels = conf.get("Labels") or {}
    reasons: list[str] = []
    image_keys = (slot_names.LABEL_BUILD_ID, slot_names.LABEL_DIGEST)
    if attrs.get("Image") != wanted.image_id or any(labels.get(k) != wanted.labels[k] for k in image_keys):
        reasons.append("new image")
    current_env: dict[str, str] = {}
    for item in conf.get("Env") or []:
        key, _, value = str(item).partition("=")
        current_env[key] = value
    if (labels.get(slot_names.LABEL_ENV_HASH) != wanted.labels[slot_names.LABEL_ENV_HASH]
            or any(current_env.get(k) != v for k, v in wanted.env.items())):
        reasons.append("new environment")
    now, want = _bindings(host), {k: [v] for k, v in wanted.ports.items()}
    if now != want:
        def show(b: dict[str, list[tuple[str, int]]]) -> str:
            return ", ".join(f"{ip}:{port}" for rows in b.values() for ip, port in rows) or "none"
        reasons.append(f"new port ({show(now)} -> {show(want)})")
    run_now = RunSpec.names_in_label(labels.get(slot_names.LABEL_RUN) or "")
    run_want = RunSpec.names_in_label(wanted.labels[slot_names.LABEL_RUN])
    keys = sorted(k for k in {*run_now, *run_want} if run_now.get(k) != run_want.get(k))
    joined = set((attrs.get("NetworkSettings") or {}).get("Networks") or {})
    lost = [n.name for n in wanted.run.networks if n.name not in joined]
    if lost and "networks" not in keys:
        keys.append("networks")
    if keys:
        reasons.append(f"new run settings ({', '.join(keys)})")
    other = [k for k in wanted.labels
             if k not in (*image_keys, slot_names.LABEL_ENV_HASH, slot_names.LABEL_RUN)]
    if any(labels.get(k) != wanted.labels[k] for k in other):
        reasons.append("new labels")
    policy = str((host.get("RestartPolicy") or {}).get("Name") or "no")
    if policy != wanted.restart_policy:
        reasons.append(f"new restart policy ({policy} -> {wanted.restart_policy})")
    log = host.get("LogConfig") or {}
    if {"Type": log.get("Type"), "Config": log.get("Config") or {}} != wanted.log_config:
        reasons.append("new log config")
    return reasons
