"""Debian's OpenSSH server on a free loopback port: an ssh:// Docker host for tests and the demo.

Everything lives in one temp dir: the host key, the client key, authorized_keys, the pid file, the
log, and a client HOME whose `.ssh/config` and `.ssh/known_hosts` let the Docker SDK (paramiko)
connect without any question. The real ~/.ssh is never read or written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.ports import free_port, wait_port

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it (its init script makes it)


@dataclass
class SshServer:
    """A running sshd: root logs in with `client_key` only; sessions get DOCKER_HOST=`docker_host`."""

    address: str
    port: int
    user: str
    root: Path
    home: Path  # the client HOME: .ssh/config (IdentityFile) and .ssh/known_hosts (this host key)
    client_key: Path
    docker_host: str
    process: subprocess.Popen[bytes] | None

    @property
    def url(self) -> str:
        """The ps.yaml `hosts[].docker` value for this server."""
        return f"ssh://{self.user}@{self.address}:{self.port}"

    @property
    def client_env(self) -> dict[str, str]:
        """What a client process needs in its environment to connect (a HOME with .ssh/)."""
        return {"HOME": str(self.home)}

    def log(self) -> str:
        try:
            return (self.root / "sshd.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, remove: bool = True) -> None:
        """Stop sshd (and its session children); with `remove`, delete the temp dir."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, 15)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=5)
            self.process = None
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def _keygen(path: Path, comment: str) -> str:
    """An ed25519 key pair without passphrase at `path`; returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return (path.with_name(path.name + ".pub")).read_text().strip()


def _client_home(home: Path, address: str, port: int, user: str, key: Path, host_key_line: str) -> None:
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    key_type, key_data = host_key_line.split()[:2]
    (ssh_dir / "known_hosts").write_text(f"[{address}]:{port} {key_type} {key_data}\n")
    (ssh_dir / "config").write_text(
        f"Host {address}\n"
        f"  User {user}\n"
        f"  Port {port}\n"
        f"  IdentityFile {key}\n"
        "  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking yes\n"
        f"  UserKnownHostsFile {ssh_dir / 'known_hosts'}\n")


def start_sshd(docker_host: str, *, address: str | None = None, user: str = "root",
               timeout: float = 15.0) -> SshServer:
    """Start sshd on `address`:<free port>; its sessions run `docker` against `docker_host`."""
    from testbed.ports import address as run_address

    address = address or run_address()
    if not Path(SSHD).is_file() or shutil.which("ssh-keygen") is None:
        raise RuntimeError("openssh-server is not installed (apt-get install openssh-server)")
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ps-bed-sshd-"))
    try:
        host_key = root / "ssh_host_ed25519_key"
        host_pub = _keygen(host_key, "ps-bed-host")
        home = root / "home"
        keys = root / "keys"
        keys.mkdir(mode=0o700)
        client_key = keys / "deploy_key"  # not in ~/.ssh: found only through IdentityFile
        client_pub = _keygen(client_key, "ps-bed-client")
        (root / "authorized_keys").write_text(client_pub + "\n")
        port = free_port(address)
        _client_home(home, address, port, user, client_key, host_pub)
        config = root / "sshd_config"
        config.write_text(
            f"Port {port}\n"
            f"ListenAddress {address}\n"
            f"HostKey {host_key}\n"
            f"PidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
            f"AllowUsers {user}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "X11Forwarding no\n"
            "AllowTcpForwarding no\n"
            "PrintMotd no\n"
            "LogLevel VERBOSE\n"
            f"SetEnv DOCKER_HOST={docker_host}\n")
        check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejects its config: {check.stderr.strip()}")
        log = open(root / "sshd.log", "wb")  # noqa: SIM115 - lives as long as sshd
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    server = SshServer(address=address, port=port, user=user, root=root, home=home, client_key=client_key,
                       docker_host=docker_host, process=proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = server.log()[-2000:]
            server.stop()
            raise RuntimeError(f"sshd exited: {tail}")
        if wait_port(port, address, timeout=0.2):
            return server
    server.stop()
    raise RuntimeError("sshd did not listen in time")
