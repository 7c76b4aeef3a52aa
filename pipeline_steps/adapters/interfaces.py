"""The adapters' interfaces: what the steps need from systems outside ps, each a typing.Protocol with a
real implementation and an in-memory fake. A flat list of Protocols, one per adapter.

- Router: the ps-owned nginx include (adapters/nginx: NginxControl; adapters/nginx/fake.py: FakeRouter)
- Prober: health probes of HTTP, TCP and containers (adapters/prober.py: LiveProber;
  adapters/fake_prober.py: FakeProber)
- TrafficSender: the requests verify-weights sends through nginx (adapters/traffic_probe.py: send_probe)
- DockerHost: one host's engine (adapters/docker_sdk.py: SdkDockerHost; adapters/fakes/: FakeDockerHost)
- Registry: an image registry (adapters/registry.py: RegistryClient; adapters/fakes/: FakeRegistry)
- Notifier: a chat webhook (adapters/mattermost.py: MattermostNotifier; adapters/fakes/: FakeNotifier)

Values crossing DockerHost, Registry and Notifier are plain dataclasses; engine failures are the
exceptions below, never SDK types.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pipeline_steps.adapters.nginx.control import ApplyResult, InstallResult
    from pipeline_steps.adapters.traffic_probe import ProbeRun
    from pipeline_steps.config import Host
    from pipeline_steps.health import GatePolicy, HealthTarget, ProbeResult


@runtime_checkable
class Router(Protocol):
    """The nginx include ps owns, and the nginx that reads it.

    apply(): put a new include in place safely: back up the old one, write atomically, `nginx -t`,
    reload, confirm the reload took (new workers, no [emerg]); any failure puts the previous text back
    (and reloads back). NginxFailed (exit 1) when nginx refused, Unreachable (exit 3) when it cannot be
    driven, BadInput (exit 2) when the include's directory is missing.
    """

    path: Path

    def read_text(self) -> str | None:
        """The include's text (None when it does not exist yet)."""
        ...

    def apply(self, text: str, *, dry_run: bool = False) -> ApplyResult:
        """The safe change described above (nothing written when unchanged or `dry_run`)."""
        ...

    def install(self, text: str, *, force: bool = False) -> InstallResult:
        """A first include: the safe apply when nginx runs; else write it and test it when possible."""
        ...

    def test(self) -> str | None:
        """`nginx -t` of the whole config: None when it passes, else nginx's words."""
        ...

    def reload(self) -> tuple[list[int], list[int]]:
        """Reload and confirm: (workers before, new workers); NginxFailed when nginx gave up."""
        ...

    def verify(self, text: str) -> str | None:
        """None when the include says `text` and the running nginx accepts its config, else what is off."""
        ...

    def running(self) -> bool:
        """Whether an nginx master runs."""
        ...

    def close(self) -> None:
        """Release what the router holds (a Docker client)."""
        ...


@runtime_checkable
class Prober(Protocol):
    """Probes one health target once; holds its connections until close()."""

    def prepare(self) -> None:
        """Set up what the first probe needs (so its timing is the target's alone)."""
        ...

    def probe(self, target: HealthTarget, policy: GatePolicy) -> ProbeResult:
        """One target once, judged by `policy` (the logs fallback only when nothing answered)."""
        ...

    def close(self) -> None:
        """Close sessions and clients."""
        ...


class TrafficSender(Protocol):
    """Sends up to n GETs through nginx and records who answered (verify-weights --probe)."""

    def __call__(self, url: str, n: int, *, timeout: float = ..., deadline: float | None = None,
                 stop: threading.Event | None = None) -> ProbeRun:
        ...


# ---------------------------------------------------------------- Docker


class EngineError(Exception):
    """The engine refused a call; `str()` is its explanation."""


class NotFoundError(EngineError):
    """No such container or image."""


class EngineGone(EngineError):
    """The engine stopped answering mid-call (connection refused/reset, timeout)."""


@dataclass(frozen=True)
class ImageInfo:
    """An image on a host: its ID, tags, registry digests (`repo@sha256:...`) and labels."""

    id: str
    tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KeptImage:
    """An image of one repository on a host: its ID, its tags there, when it was made."""

    id: str
    tags: tuple[str, ...]
    created: int


@dataclass(frozen=True)
class ContainerInfo:
    """A container as the engine reports it; `attrs` is its inspect document (Config, HostConfig, State)."""

    id: str
    name: str
    status: str  # created | running | restarting | exited | ...
    labels: Mapping[str, str]
    attrs: Mapping[str, Any]

    @property
    def image_name(self) -> str:
        """The image reference it was created from (`?` when unknown)."""
        return str((self.attrs.get("Config") or {}).get("Image") or "?")

    @property
    def running(self) -> bool:
        return self.status in ("running", "restarting")


class AuthResolver(Protocol):
    """The Docker config's credentials (`docker login`): the entry for a registry, or None."""

    def resolve_authconfig(self, registry: str) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class Processes:
    """`docker top` of a container: the column titles (`ps -ef`: UID PID PPID ... CMD) and the rows."""

    titles: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class FileRead:
    """A file in a container read from an offset: its identity (`device:inode`, a rotation changes it),
    its size when looked at, and its bytes from the offset on (the file may have grown since)."""

    ident: str
    size: int
    data: bytes


@dataclass(frozen=True)
class VolumeInfo:
    """A named volume as the engine reports it (labels are fixed at creation)."""

    name: str
    labels: Mapping[str, str]
    created: str = ""


@dataclass(frozen=True)
class ContainerStats:
    """One `docker stats` sample of a container (the post-deploy watch): cumulative CPU time, memory.

    `cpu_percent` is the engine's own pre/cpu delta when it gave one (of `cpu_limit` CPUs); two
    one-shot samples give it through `cpu_percent_since(earlier)`. `memory_limit` is None without a
    limit (`services.<s>.memory`); `memory_usage` leaves out the page cache the kernel can drop, as
    `docker stats` does.
    """

    container: str
    read_at: float  # seconds since the epoch (the engine's `read`)
    cpu_usage: int  # nanoseconds of CPU time since the container started
    cpu_limit: float  # CPUs it may use (its `cpus` limit; 1.0 when unlimited)
    memory_usage: int  # bytes
    memory_limit: int | None  # bytes; None: no memory limit
    cpu_percent: float | None = None

    def cpu_percent_since(self, earlier: ContainerStats | None) -> float | None:
        """CPU use between `earlier` and this sample, in percent of the CPU limit."""
        if earlier is not None and self.read_at > earlier.read_at and self.cpu_usage >= earlier.cpu_usage:
            used = (self.cpu_usage - earlier.cpu_usage) / 1e9
            return round(100.0 * used / (self.read_at - earlier.read_at) / self.cpu_limit, 2)
        return self.cpu_percent

    @property
    def memory_percent(self) -> float | None:
        """Memory in use, in percent of the limit (None without a limit)."""
        if not self.memory_limit:
            return None
        return round(100.0 * self.memory_usage / self.memory_limit, 2)


class DockerHost(Protocol):
    """One host's Docker engine, connected (it answered a ping). Containers are named or by ID.

    Every Docker action of ps goes through here (SdkDockerHost; FakeDockerHost in memory). Missing
    containers and images are NotFoundError (a lookup, `image()`/`container()`, answers None instead;
    `remove()` of a missing one is no error); any other refusal is EngineError; a dead engine EngineGone.
    Built on these: docker_host.ensure_image / prune_repo, slots.replace_slot / restore_slot.
    """

    host: Host

    def close(self) -> None: ...
    def set_timeout(self, seconds: float) -> None: ...

    # images
    def image(self, ref: str) -> ImageInfo | None: ...
    def pull(self, ref: str, auth: Mapping[str, str] | None) -> ImageInfo: ...
    def remote_digest(self, ref: str, auth: Mapping[str, str] | None) -> str: ...
    def repo_images(self, repo: str) -> list[KeptImage]: ...
    def tag(self, image_id: str, repo: str, tag: str) -> None: ...
    def untag(self, ref: str) -> None: ...
    def images_in_use(self) -> set[str]: ...
    def build(self, *, path: str, dockerfile: str, tag: str, buildargs: Mapping[str, str],
              labels: Mapping[str, str]) -> Iterator[dict[str, Any]]: ...
    def push(self, repo: str, tag: str, auth: Mapping[str, str] | None) -> Iterator[dict[str, Any]]: ...
    def auth_configs(self) -> AuthResolver | None: ...

    # containers
    def container(self, name: str) -> ContainerInfo | None: ...
    def list_containers(self, labels: Mapping[str, str], *,
                        running_only: bool = False) -> list[ContainerInfo]:
        """The containers carrying every one of `labels` (any state unless running_only)."""
        ...
    def slot_containers(self, app: str) -> list[ContainerInfo]: ...
    def container_images(self) -> dict[str, str]: ...
    def create(self, name: str, image: str, *, labels: Mapping[str, str], environment: Mapping[str, str],
               ports: Mapping[str, tuple[str, int]], restart_policy: Mapping[str, str],
               log_config: Mapping[str, Any], options: Mapping[str, Any] | None = None,
               networks: Sequence[tuple[str, tuple[str, ...]]] = ()) -> ContainerInfo: ...
    def start(self, name: str) -> ContainerInfo: ...
    # networks (run settings: a slot joins user-defined networks)
    def network_exists(self, name: str) -> bool: ...
    def create_network(self, name: str, labels: Mapping[str, str]) -> None: ...
    # one-off jobs
    def wait(self, name: str, timeout: float) -> int | None: ...
    def follow_logs(self, name: str) -> Iterator[str]: ...
    def stop(self, name: str, timeout: int = 10) -> None: ...
    def rename(self, name: str, new_name: str) -> None: ...
    def remove(self, name: str) -> None: ...
    def logs(self, name: str, *, since: float | None = None, timestamps: bool = False,
             tail: int | None = None) -> str: ...
    def exec(self, name: str, cmd: list[str]) -> tuple[int, str]: ...
    def top(self, name: str) -> Processes: ...
    def stats(self, name: str) -> ContainerStats:
        """One sample of the container's CPU and memory (NotFoundError when it is gone)."""
        ...
    def published_ports(self) -> list[tuple[str, str, str, int]]: ...
    def try_bind(self, image: str, address: str, port: int, name: str,
                 labels: Mapping[str, str] | None = None) -> str | None: ...
    def port_holder(self, address: str, port: int) -> str | None: ...

    # files in a container (a router's include on a remote host, its access log): through the engine
    # alone, so they work for a named volume or a path only the container sees. get_file: None when the
    # file does not exist (NotFoundError: no such container); put_file: one file written into an
    # existing directory (NotFoundError: no such container or directory), not atomic by itself;
    # read_file: `stat` and `tail -c` by exec (coreutils or busybox in the container), None: no file;
    # list_dir: the names in a directory (the engine's archive of it, not an exec's output, which the
    # engine now and then loses under load), None when there is no such directory
    def get_file(self, name: str, path: str) -> bytes | None: ...
    def list_dir(self, name: str, path: str) -> list[str] | None: ...
    def put_file(self, name: str, path: str, data: bytes, mode: int = 0o644) -> None: ...
    def read_file(self, name: str, path: str, offset: int = 0) -> FileRead | None: ...

    # named volumes (the deploy lock, deploy/lock/engine.py): creating a volume whose name exists
    # returns the existing one untouched, so "create, then compare a label" is an atomic test-and-set
    def create_volume(self, name: str, labels: Mapping[str, str]) -> VolumeInfo: ...
    def volume(self, name: str) -> VolumeInfo | None: ...
    def volumes(self, labels: Mapping[str, str]) -> list[VolumeInfo]: ...
    def remove_volume(self, name: str) -> None: ...


# ---------------------------------------------------------------- registry


class Registry(Protocol):
    """One registry: the digest a tag points at, and pushing a tag through an engine (retried)."""

    address: str

    def digest(self, name: str, tag: str) -> str | None: ...
    def exists(self, name: str, tag: str) -> bool: ...
    def push(self, engine: DockerHost, repo: str, tag: str,
             debug: Callable[[str], None] | None = None) -> str: ...


# ---------------------------------------------------------------- notifications


@dataclass(frozen=True)
class Delivery:
    """How posting went: delivered or not, the last HTTP status, how many requests were sent."""

    delivered: bool
    status: int | None
    attempts: int
    reason: str


class Notifier(Protocol):
    """Posts a payload to a webhook; never raises for delivery failures."""

    def send(self, url: str, payload: dict[str, Any], *, timeout: float = 5.0, attempts: int = 3,
             backoff: float = 0.5) -> Delivery: ...
