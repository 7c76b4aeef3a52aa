"""Docker engines of the configured hosts, through the Docker SDK.

Connection failures become Unreachable (exit 3) with one line naming the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pipeline_steps.config import Host
from pipeline_steps.errors import Unreachable

if TYPE_CHECKING:
    import docker


def connect(host: Host, timeout: float = 60.0) -> docker.DockerClient:
    """A client for the host's engine that has answered a ping; Unreachable otherwise."""
    import docker
    import docker.errors

    try:
        if host.docker:
            client = docker.DockerClient(base_url=host.docker, timeout=int(timeout), use_ssh_client=False)
        else:
            client = docker.from_env(timeout=int(timeout))
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise Unreachable(f"Docker engine of host {host.name} ({host.endpoint}) is unreachable: "
                          f"{_short(exc)}") from None
    except Exception as exc:  # requests/paramiko errors surface as plain exceptions
        raise Unreachable(f"Docker engine of host {host.name} ({host.endpoint}) is unreachable: "
                          f"{_short(exc)}") from None


@contextmanager
def engine(host: Host, timeout: float = 60.0) -> Iterator[docker.DockerClient]:
    """`with engine(host) as client:`; the client is closed afterwards."""
    client = connect(host, timeout)
    try:
        yield client
    finally:
        client.close()


def is_unreachable(exc: BaseException) -> bool:
    """True for errors that mean the engine went away mid-call."""
    import requests

    return isinstance(exc, requests.ConnectionError | requests.Timeout | ConnectionError)


def _short(exc: Any) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Connection refused" in text or "No such file or directory" in text or "FileNotFoundError" in text:
        return "connection refused or socket missing (is dockerd running?)"
    return text[:200]
