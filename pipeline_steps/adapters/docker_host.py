"""Docker engines of the configured hosts, through the Docker SDK.

Endpoints: unix:// (a local socket), tcp:// (with the host's `tls:` files, or DOCKER_TLS_VERIFY /
DOCKER_CERT_PATH as docker reads them: the engine's certificate is verified against the CA and ps shows
its client certificate; plain TCP only on loopback or a trusted network, with a warning) and
ssh://[user@]host[:port] through the SDK's paramiko transport, which runs `docker system dial-stdio`
on the host. For ssh:// the key, user and port come from ~/.ssh/config (IdentityFile, User, Port) and
the host key must already be in ~/.ssh/known_hosts: unknown host keys are refused, never asked about.
Connection failures become Unreachable (exit 3) with one line naming the host (`unreachable()`).

`open_host()`/`opened()` give the DockerHost interface (adapters/interfaces.py; SDK implementation in
adapters/docker_sdk.py, fakes in adapters/fakes/): every caller outside adapters/ uses it. `connect()`
gives the raw SDK client to SdkDockerHost alone (tests/unit/test_docker_boundary.py keeps it so).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pipeline_steps import errors
from pipeline_steps.adapters.interfaces import KeptImage
from pipeline_steps.config import Host
from pipeline_steps.errors import BadInput, Unreachable

if TYPE_CHECKING:
    import docker

    from pipeline_steps.adapters.interfaces import DockerHost, ImageInfo

__all__ = ["BIND_HELD", "BindTestError", "KeptImage", "connect", "ensure_image", "image_digest",
           "is_unreachable", "open_host", "opened", "prune_repo", "published_ports", "repo_images",
           "tls_config", "try_bind", "unreachable"]


def connect(host: Host, timeout: float = 60.0) -> docker.DockerClient:
    """A raw SDK client for the host's engine that has answered a ping; Unreachable otherwise.

    BadInput (exit 2) when the host's TLS files (or DOCKER_CERT_PATH's) cannot be used."""
    import docker

    tls = tls_config(host)
    try:
        if tls is not None:
            client = _tls_client(host.docker or os.environ["DOCKER_HOST"], tls, int(timeout))
        elif host.docker:
            client = docker.DockerClient(base_url=host.docker, timeout=int(timeout), use_ssh_client=False)
        else:
            client = docker.from_env(timeout=int(timeout))
        client.ping()
        return client
    except Exception as exc:  # DockerException; requests/paramiko errors surface as plain exceptions
        raise unreachable(host, exc) from None


def tls_config(host: Host) -> Any:
    """The SDK's TLSConfig for a tcp:// host: its `tls:` files, else DOCKER_TLS_VERIFY / DOCKER_CERT_PATH
    as docker reads them; None for plain TCP and the other endpoint kinds."""
    import docker.errors
    import docker.tls
    import docker.utils

    from pipeline_steps.config.endpoints import env_tls, tcp_hostname

    if tcp_hostname(host.docker or os.environ.get("DOCKER_HOST")) is None:
        return None
    try:
        if host.tls is not None:
            t = host.tls
            tls = docker.tls.TLSConfig(client_cert=(t.cert, t.key) if t.cert and t.key else None,
                                       ca_cert=t.ca if t.verify else None, verify=t.verify)
        elif env_tls()[0]:
            tls = docker.utils.kwargs_from_env().get("tls")
        else:
            return None
    except docker.errors.TLSParameterError as exc:
        if host.tls is not None:  # checked at load: gone since
            raise BadInput(f"host {host.name}: its tls files cannot be used: {str(exc).split('. ')[0]}") \
                from None
        where = os.environ.get("DOCKER_CERT_PATH") or os.path.join(os.path.expanduser("~"), ".docker")
        missing = [f for f in ("ca.pem", "cert.pem", "key.pem") if not os.path.isfile(os.path.join(where, f))]
        raise BadInput(f"host {host.name}: DOCKER_CERT_PATH ({where}) cannot be used: "
                       f"{', '.join(missing) or 'its files'} missing there (docker's names: ca.pem, "
                       "cert.pem, key.pem)") from None
    _check_pem(host, tls)
    return tls


class _Encrypted(Exception):
    pass


def _ask(*_: Any) -> bytes:
    raise _Encrypted


def _check_pem(host: Host, tls: Any) -> None:
    """BadInput unless the CA, certificate and key load (a key with a passphrase is refused: ps never
    asks, and OpenSSL would prompt on the terminal)."""
    import ssl

    try:
        context = ssl.create_default_context(cafile=tls.ca_cert if tls.verify and tls.ca_cert else None)
        if tls.cert:
            context.load_cert_chain(tls.cert[0], tls.cert[1], password=_ask)
    except _Encrypted:
        raise BadInput(f"host {host.name}: the TLS key {tls.cert[1]} has a passphrase: ps cannot ask for it; "
                       "give a key without one (mode 0600)") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise BadInput(f"host {host.name}: its TLS files do not load ({reason}): PEM files of a CA, a "
                       "certificate and its key are needed") from None


def _tls_client(url: str, tls: Any, timeout: int) -> docker.DockerClient:
    """A client that verifies with `tls` alone: requests would let REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE
    replace the host's CA (trust_env), so the environment is kept out of the TLS session."""
    import docker
    from docker.constants import MINIMUM_DOCKER_API_VERSION

    probe = docker.DockerClient(base_url=url, tls=tls, timeout=timeout, version=MINIMUM_DOCKER_API_VERSION)
    probe.api.trust_env = False
    try:
        version = str(probe.version(api_version=False)["ApiVersion"])
    finally:
        probe.close()
    client = docker.DockerClient(base_url=url, tls=tls, timeout=timeout, version=version)
    client.api.trust_env = False
    return client


def unreachable(host: Host, exc: BaseException | str) -> Unreachable:
    """The one exit-3 line for an engine that does not answer, naming the host, for every endpoint kind."""
    if isinstance(exc, str):
        reason: str | None = exc
    else:
        ssh = host.docker is not None and host.docker.startswith("ssh://")
        reason = _ssh_reason(host.docker, exc) if ssh and host.docker else _tls_reason(host, exc)
        reason = reason or _short(exc)
    return errors.unreachable(f"Docker engine of host {host.name} ({host.endpoint})", reason or "no answer",
                              host=host.name)


def open_host(host: Host, timeout: float = 60.0) -> DockerHost:
    """The host's engine behind the DockerHost interface (the factory's fakes when installed)."""
    from pipeline_steps.adapters import factory

    return factory.get().docker(host, timeout)


@contextmanager
def opened(host: Host, timeout: float = 60.0) -> Iterator[DockerHost]:
    """`with opened(host) as engine:` the DockerHost of `host` (open_host), closed afterwards."""
    engine = open_host(host, timeout)
    try:
        yield engine
    finally:
        engine.close()


def repo_images(client: docker.DockerClient, repo: str) -> list[KeptImage]:
    """The images tagged `repo:*` on this host, newest first.

    Read from the raw list in one call: the SDK's images.list() inspects each image afterwards and fails
    when another process removes one in between.
    """
    prefix = f"{repo}:"
    found = [KeptImage(str(row["Id"]), tuple(t for t in row.get("RepoTags") or [] if t.startswith(prefix)),
                       int(row.get("Created") or 0))
             for row in client.api.images(name=repo)]
    return sorted(found, key=lambda image: image.created, reverse=True)


def ensure_image(engine: DockerHost, ref: str, auth: Mapping[str, str] | None = None) -> ImageInfo:
    """The image `ref` on this host, pulled from the registry (with `auth`) when missing.

    An engine error looking it up is Unreachable (3); a pull that fails is CheckFailed (1).
    """
    from pipeline_steps.adapters.interfaces import EngineError, EngineGone
    from pipeline_steps.errors import CheckFailed

    name = engine.host.name
    try:
        found = engine.image(ref)
    except EngineError as exc:
        raise Unreachable(f"host {name}: Docker engine error looking up {ref}: {exc}") from None
    if found is not None:
        return found
    try:
        return engine.pull(ref, auth)
    except EngineGone as exc:
        raise Unreachable(f"host {name}: Docker engine went away pulling {ref}: {exc}") from None
    except EngineError as exc:
        raise CheckFailed(f"host {name}: image {ref} is not there and could not be pulled: {exc}") from None


def image_digest(image: ImageInfo, repo: str) -> str:
    """The registry digest (repo@sha256:...) when known, else the image id."""
    for digest in image.repo_digests:
        if digest.startswith(repo + "@"):
            return str(digest.partition("@")[2])
    return str(image.id)


def prune_repo(engine: DockerHost, repo: str, keep: int) -> list[str]:
    """Untag every image of `repo` but the newest `keep` and those a container uses; the tags removed.

    Untagged, never removed by ID: a tag of the same image in another repository stays.
    """
    from pipeline_steps.adapters.interfaces import EngineError

    used = engine.images_in_use()
    removed: list[str] = []
    for image in engine.repo_images(repo)[keep:]:
        if image.id in used:
            continue
        for tag in image.tags:
            try:
                engine.untag(tag)
                removed.append(tag)
            except EngineError:
                pass
    return removed


def is_unreachable(exc: BaseException) -> bool:
    """True for errors that mean the engine went away mid-call."""
    import requests

    from pipeline_steps.adapters.interfaces import EngineGone

    return isinstance(exc, requests.ConnectionError | requests.Timeout | ConnectionError | EngineGone)


def _ssh_reason(url: str, exc: BaseException) -> str | None:
    """What went wrong on an ssh:// endpoint, with the fix, in one line (None: not an SSH problem)."""
    from urllib.parse import urlparse

    try:
        import paramiko
    except ImportError:
        return None
    parsed = urlparse(url)
    where = f"-p {parsed.port} " if parsed.port else ""
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionRefusedError):
        return "nothing answers on its SSH port (is sshd running?)"
    if isinstance(exc, paramiko.BadHostKeyException):
        return ("its SSH host key differs from the one in ~/.ssh/known_hosts (host key changed? "
                "check it, then replace the entry)")
    if isinstance(exc, paramiko.AuthenticationException):
        return ("SSH login refused: is the key named by IdentityFile in ~/.ssh/config (for this host) "
                "in the host's authorized_keys?")
    text = str(exc)
    if isinstance(exc, paramiko.SSHException) and "known_hosts" in text:
        return (f"its SSH host key is not in ~/.ssh/known_hosts; add it after checking it: "
                f"ssh-keyscan {where}{parsed.hostname} >> ~/.ssh/known_hosts")
    if isinstance(exc, paramiko.SSHException) and "No authentication methods" in text:
        return "no SSH key to log in with: set IdentityFile for this host in ~/.ssh/config"
    if "Connection aborted" in text or "RemoteDisconnected" in text:
        return ("SSH login worked but `docker system dial-stdio` there did not reach an engine (docker CLI "
                "on its PATH? DOCKER_HOST there? user in the docker group?)")
    return None


def _tls_reason(host: Host, exc: BaseException) -> str | None:
    """What went wrong in TLS with a tcp:// engine, with the fix, in one line (None: not a TLS problem).

    Read from the SDK's error text: requests and urllib3 wrap the ssl error as text in their own."""
    text = str(exc)
    tls = host.tls
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0]
        detail = detail.strip(" :'\"").rstrip(".")
        if "match" in detail:
            return (f"TLS certificate verify failed: the engine's certificate is not for that address "
                    f"({detail[:80]}); it needs the address in its subjectAltName")
        if "expired" in detail or "not yet valid" in detail:
            return (f"TLS certificate verify failed: {detail[:80]} (the engine's certificate, or a clock "
                    "off on one side)")
        ca = f"tls.ca ({tls.ca})" if tls is not None and tls.ca else "the CA given (DOCKER_CERT_PATH/ca.pem)"
        return (f"TLS certificate verify failed: the engine's certificate is not signed by {ca} "
                f"({detail[:80] or 'no detail'})")
    if "BAD_CERTIFICATE" in text or "CERTIFICATE_REQUIRED" in text or "certificate required" in text \
            or "UNKNOWN_CA" in text:
        if tls is not None and not tls.cert:
            return ("TLS handshake refused by the engine: it wants a client certificate "
                    "(give tls.cert and tls.key)")
        return ("TLS handshake refused by the engine: it does not accept the client certificate (signed "
                "by the CA the engine trusts with --tlscacert?)")
    if "HTTP request to an HTTPS server" in text:
        return "the engine speaks TLS on that port: give the host tls: {ca, cert, key}"
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text or "UNEXPECTED_EOF" in text:
        return "no TLS answer on that port (a plain tcp:// engine? then drop tls:)"
    return None


def _short(exc: Any) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Connection refused" in text or "No such file or directory" in text or "FileNotFoundError" in text:
        return "connection refused or socket missing (is dockerd running?)"
    return text[:200]


# ---------------------------------------------------------------- port checks through the engine

BIND_HELD = ("address already in use", "port is already allocated")


class BindTestError(Exception):
    """The bind test itself could not run on that engine (not an answer about the port)."""


def published_ports(client: docker.DockerClient) -> list[tuple[str, str, str, int]]:
    """(container name, image, host ip, host port) of every running container's published TCP port.

    One list call (no per-container inspect), so it is cheap over tcp:// and ssh:// too.
    """
    found: list[tuple[str, str, str, int]] = []
    for row in client.api.containers():
        name = str((row.get("Names") or ["?"])[0]).lstrip("/")
        for p in row.get("Ports") or []:
            if p.get("PublicPort") and p.get("Type", "tcp") == "tcp":
                found.append((name, str(row.get("Image") or "?"), str(p.get("IP") or "0.0.0.0"),
                              int(p["PublicPort"])))
    return found


def try_bind(client: docker.DockerClient, image: str, address: str, port: int, name: str,
             labels: dict[str, str] | None = None) -> str | None:
    """Can the engine publish address:port on its host right now? None: yes; else the engine's reason.

    A throw-away container of `image` (already on the host: nothing is pulled) gets that one port binding
    and runs the engine's own init (`init=True` bind-mounts docker-init) printing its version instead of
    the image's entrypoint, so the app never runs. Starting it makes the engine bind the port on its host
    exactly as it will for the slot (userland proxy, or its reservation when the proxy is off), whatever
    the endpoint kind: ps itself cannot bind on a remote host. The container is removed at once.
    Raises BindTestError when the test could not run (then it says nothing about the port).
    """
    import docker.errors

    def remove() -> None:
        try:
            client.api.remove_container(name, force=True)
        except docker.errors.NotFound:
            pass

    try:
        remove()  # a stale one from an interrupted run
        container = client.containers.create(
            image, name=name, entrypoint=["/sbin/docker-init", "--version"], command=[], init=True,
            ports={"65535/tcp": (address, port)}, labels=labels or {}, log_config={"Type": "none"})
    except docker.errors.APIError as exc:
        raise BindTestError(str(exc.explanation or exc)) from None
    try:
        container.start()
        return None
    except docker.errors.APIError as exc:
        reason = str(exc.explanation or exc)
        if any(marker in reason for marker in BIND_HELD):
            return reason.rpartition(": ")[2] if "bind:" not in reason else reason[reason.find("listen"):]
        raise BindTestError(reason) from None
    finally:
        try:
            remove()
        except docker.errors.APIError:
            pass
