"""Debian's docker-registry on a free loopback port with htpasswd auth (a wrong password is a real 401)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testbed.ports import address, free_port
from testbed.wait import until


@dataclass
class Registry:
    """A running registry: address `<run address>:port`, one user with a password."""

    address: str
    user: str
    password: str
    root: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _binary() -> str:
    for name in ("docker-registry", "registry"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")


def start_registry(user: str = "ci", password: str | None = None) -> Registry:
    """Start a registry with htpasswd auth; the password goes to htpasswd on stdin, never in argv."""
    import requests

    binary = _binary()
    password = password or secrets.token_urlsafe(12)
    root = Path(tempfile.mkdtemp(prefix="ps-bed-registry-"))
    htpasswd = subprocess.run(["htpasswd", "-niB", user], input=password + "\n", capture_output=True,
                              text=True, check=True).stdout.strip()
    (root / "htpasswd").write_text(htpasswd + "\n")
    port = free_port()
    (root / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: {address()}:{port}, secret: {secrets.token_hex(8)}}}\n"
        f"auth: {{htpasswd: {{realm: ps-bed, path: {root / 'htpasswd'}}}}}\n"
    )
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    registry = Registry(f"{address()}:{port}", user, password, root, proc)
    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((root / "registry.log").read_text(errors="replace")[-2000:])
        try:
            return requests.get(f"http://{registry.address}/v2/", timeout=1).status_code == 401
        except requests.RequestException:
            return False

    if until(up, 20, 0.1):
        return registry
    registry.stop()
    raise RuntimeError("docker-registry did not answer in time")
