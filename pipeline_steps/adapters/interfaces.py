"""The interfaces steps talk to: each has a real implementation and an in-memory fake (adapters/fakes/).

DockerHost (one host's engine), Registry (an image registry) and Notifier (a chat webhook). Values
crossing them are plain dataclasses; engine failures are the exceptions below, never SDK types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pipeline_steps.config import Host


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


class DockerHost(Protocol):
    """One host's Docker engine, connected (it answered a ping). Containers are named or by ID."""

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
    def auth_configs(self) -> Any: ...

    # containers
    def container(self, name: str) -> ContainerInfo | None: ...
    def slot_containers(self, app: str) -> list[ContainerInfo]: ...
    def container_images(self) -> dict[str, str]: ...
    def create(self, name: str, image: str, *, labels: Mapping[str, str], environment: Mapping[str, str],
               ports: Mapping[str, tuple[str, int]], restart_policy: Mapping[str, str],
               log_config: Mapping[str, Any]) -> ContainerInfo: ...
    def start(self, name: str) -> ContainerInfo: ...
    def stop(self, name: str, timeout: int = 10) -> None: ...
    def rename(self, name: str, new_name: str) -> None: ...
    def remove(self, name: str) -> None: ...
    def logs(self, name: str, *, since: float | None = None, timestamps: bool = False,
             tail: int | None = None) -> str: ...
    def exec(self, name: str, cmd: list[str]) -> tuple[int, str]: ...
    def published_ports(self) -> list[tuple[str, str, str, int]]: ...
    def try_bind(self, image: str, address: str, port: int, name: str,
                 labels: Mapping[str, str] | None = None) -> str | None: ...
    def port_holder(self, address: str, port: int) -> str | None: ...


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
