"""The one place steps get their adapters from: real ones, or the fakes a test installed.

    with factory.installed(FakeAdapters(...)):   # tests
        deploy_slot(config, ...)                 # every step inside gets the fakes
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline_steps.adapters.interfaces import DockerHost, Notifier, Registry
    from pipeline_steps.adapters.registry import Credentials
    from pipeline_steps.config import Host


class Adapters(Protocol):
    """Makes the adapters for one run."""

    def docker(self, host: Host, timeout: float) -> DockerHost: ...
    def registry(self, address: str, creds: Credentials | None, *, timeout: float = 10.0, attempts: int = 1,
                 backoff: float = 2.0, on_retry: Callable[[str], None] | None = None) -> Registry: ...
    def notifier(self) -> Notifier: ...


class RealAdapters:
    """The Docker SDK, the registry's HTTP API, Mattermost."""

    def docker(self, host: Host, timeout: float) -> DockerHost:
        from pipeline_steps.adapters.docker_sdk import SdkDockerHost

        return SdkDockerHost.open(host, timeout)

    def registry(self, address: str, creds: Credentials | None, *, timeout: float = 10.0, attempts: int = 1,
                 backoff: float = 2.0, on_retry: Callable[[str], None] | None = None) -> Registry:
        from pipeline_steps.adapters.registry import RegistryClient

        return RegistryClient(address, creds, timeout=timeout, attempts=attempts, backoff=backoff,
                              on_retry=on_retry)

    def notifier(self) -> Notifier:
        from pipeline_steps.adapters.mattermost import MattermostNotifier

        return MattermostNotifier()


_installed: list[Adapters] = []


def get() -> Adapters:
    """The adapters in use: the innermost installed ones, else the real ones."""
    return _installed[-1] if _installed else RealAdapters()


@contextmanager
def installed(adapters: Adapters) -> Iterator[Adapters]:
    """Use `adapters` (fakes) for everything run inside the block."""
    _installed.append(adapters)
    try:
        yield adapters
    finally:
        _installed.remove(adapters)
