"""What a host's Docker endpoint exposes: plain TCP off loopback, TLS from the environment (light).

Docker's own rules: a tcp:// engine uses TLS when DOCKER_TLS_VERIFY is set to anything but "" (then the
engine's certificate is verified) or DOCKER_CERT_PATH is set, with ca.pem, cert.pem and key.pem from
DOCKER_CERT_PATH (default ~/.docker). A host's `tls:` in ps.yaml takes the place of those variables.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from pipeline_steps.config.objects import Host


def env_tls() -> tuple[bool, bool]:
    """(TLS on, engine certificate verified) for tcp:// engines, from the environment as the SDK reads it."""
    verify = bool(os.environ.get("DOCKER_TLS_VERIFY"))
    return verify or bool(os.environ.get("DOCKER_CERT_PATH")), verify


def tcp_hostname(url: str | None) -> str | None:
    """The host part of a tcp:// URL (None for other schemes or no URL)."""
    if not url or not url.startswith("tcp://"):
        return None
    try:
        return urlparse(url).hostname or ""
    except ValueError:
        return ""


def is_loopback(hostname: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (a name other than localhost is not trusted to be loopback)."""
    if hostname.lower() in ("localhost", "localhost.localdomain") or hostname.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def host_warning(host: Host) -> str | None:
    """The warning line for a host reached without TLS off loopback, or with TLS that verifies nothing."""
    url = host.docker or os.environ.get("DOCKER_HOST")
    name = tcp_hostname(url)
    if name is None:
        return None
    if host.tls is not None:
        if host.tls.verify:
            return None
        return (f"host {host.name} ({url}): tls.verify is false, so the engine's certificate is not "
                "checked: anyone in the path can pose as it; give tls.ca and keep verify on")
    tls_on, verified = env_tls()
    if tls_on and not verified:
        return (f"host {host.name} ({url}): DOCKER_CERT_PATH is set without DOCKER_TLS_VERIFY, so the "
                "engine's certificate is not checked; set DOCKER_TLS_VERIFY=1")
    if tls_on or is_loopback(name):
        return None
    return (f"host {host.name} ({url}) is plain TCP without TLS: anyone who reaches that port controls "
            "the engine (root on that machine); keep plain tcp:// for loopback and trusted networks, "
            "or give the host tls: {ca, cert, key}")
