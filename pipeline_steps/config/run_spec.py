"""A service's run settings (networks, volumes, command, limits, ...) as runtime objects.

Every field's default means "as the image and the engine have it", so a service without run settings
runs exactly as before. `as_label()` is the canonical text deploy-env stores on each slot so that a
change of any setting, including one removed from ps.yaml, is a change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class NetworkSpec:
    """A user-defined network a slot joins, with its aliases there."""

    name: str
    aliases: tuple[str, ...] = ()
    create: bool = False  # create the network when the host lacks it (else a missing one is an error)


@dataclass(frozen=True)
class VolumeSpec:
    """A named volume or a bind mount (source is an absolute path)."""

    source: str
    target: str
    read_only: bool = False

    @property
    def is_bind(self) -> bool:
        return self.source.startswith("/")

    def bind(self) -> str:
        """Docker's `source:target:mode` form."""
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True)
class HealthcheckSpec:
    """A Docker HEALTHCHECK override; `test == ("NONE",)` disables the image's."""

    test: tuple[str, ...]
    interval: float | None = None
    timeout: float | None = None
    retries: int | None = None
    start_period: float | None = None


@dataclass(frozen=True)
class Ulimit:
    name: str
    soft: int
    hard: int


SLOT_STOP_TIMEOUT = 0  # a slot's previous container: killed at once (it carries no traffic, or --force)
WORKER_STOP_TIMEOUT = 10  # a worker replica: Docker's default grace


@dataclass(frozen=True)
class RunSpec:
    """How every slot (or replica) of a service runs, beyond image, env and ports."""

    networks: tuple[NetworkSpec, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    user: str | None = None
    workdir: str | None = None
    memory: int | None = None  # bytes
    cpus: float | None = None
    pids: int | None = None
    extra_hosts: tuple[tuple[str, str], ...] = ()
    ulimits: tuple[Ulimit, ...] = ()
    stop_signal: str | None = None
    stop_timeout: float | None = None
    log_driver: str | None = None
    log_options: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    healthcheck: HealthcheckSpec | None = None
    restart: str | None = None

    def stop_seconds(self, *, worker: bool) -> int:
        """Grace (whole seconds) a container of this service gets when ps stops it: `stop_timeout` when
        set; else a slot's previous container none (it takes no traffic: killed, as when it was removed)
        and a worker replica Docker's usual 10 s (it may be finishing a job)."""
        if self.stop_timeout is not None:
            return int(round(self.stop_timeout))
        return WORKER_STOP_TIMEOUT if worker else SLOT_STOP_TIMEOUT

    def as_label(self) -> str:
        """Canonical JSON of the settings that differ from the defaults ("" when none)."""
        data = {f.name: asdict(self)[f.name] for f in fields(self)
                if getattr(self, f.name) != f.default}
        return json.dumps(data, sort_keys=True, separators=(",", ":")) if data else ""

    @staticmethod
    def names_in_label(label: str) -> dict[str, object]:
        """The settings stored by `as_label` ({} for "" or unreadable text)."""
        try:
            data = json.loads(label) if label else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Require:
    """What must be ready before a service deploys: a service of ps.yaml or a container on its hosts
    (running, and healthy when it has a HEALTHCHECK), optionally answering TCP on `tcp` or 2xx at `url`."""

    name: str
    service: bool = False  # a service of ps.yaml (else a container name)
    tcp: int | None = None  # a port of the host's address that must accept connections
    url: str | None = None  # an HTTP URL that must answer 2xx


HOOK_PHASES = ("pre_deploy", "pre_traffic", "post_deploy")
DEFAULT_JOB_TIMEOUT = 600.0


@dataclass(frozen=True)
class Hook:
    """A job a deploy runs at `phase`: `command` in a one-off container of `service`'s new image."""

    phase: str
    service: str
    command: tuple[str, ...]
    host: str | None = None  # default: the first host
    timeout: float = DEFAULT_JOB_TIMEOUT


@dataclass(frozen=True)
class Hooks:
    """pre_deploy (before the new slot runs), pre_traffic (after it is gated, before any weight moves:
    migrations), post_deploy (after the deploy succeeded)."""

    pre_deploy: tuple[Hook, ...] = ()
    pre_traffic: tuple[Hook, ...] = ()
    post_deploy: tuple[Hook, ...] = ()

    def at(self, phase: str) -> tuple[Hook, ...]:
        return tuple(getattr(self, phase))
