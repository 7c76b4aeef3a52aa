"""FakeRegistry, FakeNotifier and FakeAdapters (what `factory.installed()` takes)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from pipeline_steps.adapters.fakes.engine import FakeDockerHost
from pipeline_steps.adapters.interfaces import Delivery, DockerHost
from pipeline_steps.adapters.registry import (
    Credentials,
    RegistryAuthError,
    RegistryTransient,
    push_once,
    retrying,
)
from pipeline_steps.config import Host

# ---------------------------------------------------------------- registry


class FakeRegistry:
    """Manifests in a dict; `transient` failures (then answers), `refuse` auth. Push goes through the
    engine's push stream as with the real one (push_once), so a FakeDockerHost linked to it records it."""

    def __init__(self, address: str = "127.0.0.1:5000", creds: Credentials | None = None, *,
                 attempts: int = 1, backoff: float = 0.0,
                 on_retry: Callable[[str], None] | None = None) -> None:
        self.address = address
        self.creds = creds
        self.attempts = attempts
        self.backoff = backoff
        self.on_retry = on_retry
        self.manifests: dict[tuple[str, str], tuple[str, str]] = {}  # (name, tag) -> (digest, image id)
        self.transient = 0
        self.calls = 0
        self.users: dict[str, str] | None = None  # set: only these user/password pairs are let in

    def store(self, name: str, tag: str, image_id: str) -> str:
        digest = "sha256:" + hashlib.sha256(image_id.encode()).hexdigest()
        self.manifests[(name, tag)] = (digest, image_id)
        return digest

    def _answer(self, name: str, tag: str) -> str | None:
        self.calls += 1
        if self.transient > 0:
            self.transient -= 1
            raise RegistryTransient("connection refused")
        if self.users is not None and (self.creds is None
                                       or self.users.get(self.creds.username) != self.creds.password):
            if self.creds is None:
                raise RegistryAuthError(f"registry {self.address} wants credentials: set REGISTRY_USER and "
                                        "REGISTRY_PASSWORD, or docker login")
            raise RegistryAuthError(f"registry {self.address} refused the credentials of user "
                                    f"{self.creds.username}")
        entry = self.manifests.get((name, tag))
        return entry[0] if entry else None

    def digest(self, name: str, tag: str) -> str | None:
        return retrying(f"registry {self.address}", self.attempts, self.backoff,
                        lambda: self._answer(name, tag), self.on_retry)

    def exists(self, name: str, tag: str) -> bool:
        return self.digest(name, tag) is not None

    def push(self, engine: DockerHost, repo: str, tag: str,
             debug: Callable[[str], None] | None = None) -> str:
        return retrying(f"push {repo}:{tag}", self.attempts, self.backoff,
                        lambda: push_once(engine, repo, tag, self.creds, debug), self.on_retry)


# ---------------------------------------------------------------- notifier


class FakeNotifier:
    """Records every payload; answers with `outcomes` in turn (delivered when they run out)."""

    def __init__(self, outcomes: list[Delivery] | None = None) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.urls: list[str] = []
        self.outcomes = list(outcomes or [])

    def send(self, url: str, payload: dict[str, Any], *, timeout: float = 5.0, attempts: int = 3,
             backoff: float = 0.5) -> Delivery:
        self.urls.append(url)
        self.payloads.append(payload)
        return self.outcomes.pop(0) if self.outcomes else Delivery(True, 200, 1, "delivered")


# ---------------------------------------------------------------- the factory's fake


class FakeAdapters:
    """What `factory.installed()` takes: fake engines by host name, one fake registry, one notifier."""

    def __init__(self, hosts: Mapping[str, FakeDockerHost] | None = None,
                 registry: FakeRegistry | None = None, notifier: FakeNotifier | None = None) -> None:
        self.hosts = dict(hosts or {})
        self.fake_registry = registry or FakeRegistry()
        self.fake_notifier = notifier or FakeNotifier()

    def docker(self, host: Host, timeout: float) -> DockerHost:
        from pipeline_steps.adapters.docker_host import unreachable

        engine = self.hosts.get(host.name)
        if engine is None:
            engine = self.hosts[host.name] = FakeDockerHost(host, self.fake_registry)
        if not engine.reachable:
            raise unreachable(host, "connection refused or socket missing (is dockerd running?)")
        return engine

    def registry(self, address: str, creds: Credentials | None, *, timeout: float = 10.0, attempts: int = 1,
                 backoff: float = 2.0, on_retry: Callable[[str], None] | None = None) -> FakeRegistry:
        reg = self.fake_registry
        reg.address, reg.creds, reg.attempts, reg.backoff, reg.on_retry = (
            address, creds, attempts, 0.0, on_retry)
        return reg

    def notifier(self) -> FakeNotifier:
        return self.fake_notifier
