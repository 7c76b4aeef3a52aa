"""A front balancer standing for the ALB: Debian's haproxy, round-robin over the routers' addresses.

`start_front([(host, port), ...])` writes a config under a temporary directory, checks it (`haproxy -c`),
runs haproxy in the foreground as a child process listening on the run's address (testbed.ports) and
returns once it accepts connections; `Front.stop()` ends it and removes the directory. Each request is
balanced on its own (HTTP mode), also over one keep-alive client connection, so the split measured
through the front is the routers' split; a router that refuses a connection is retried on the other
(`retry-on conn-failure`), as an ALB's target health does.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.ports import address, free_port, wait_port
from testbed.wait import until


@dataclass
class Front:
    """A running haproxy: its front port, the routers behind it, its process and directory."""

    port: int
    backends: tuple[tuple[str, int], ...]
    process: subprocess.Popen[bytes]
    dir: Path

    @property
    def url(self) -> str:
        return f"http://{address()}:{self.port}"

    def log_text(self) -> str:
        return (self.dir / "haproxy.log").read_text(errors="replace")

    def stop(self) -> None:
        """Stop haproxy (TERM, then KILL after 10 s) and remove its directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def front_config(port: int, backends: Sequence[tuple[str, int]]) -> str:
    """haproxy.cfg: HTTP mode, keep-alive both sides, round-robin over `backends`, retries on refusal."""
    servers = "".join(f"    server router{i} {host}:{p} check inter 500ms fall 2 rise 1\n"
                      for i, (host, p) in enumerate(backends, 1))
    return (
        "global\n    maxconn 4000\n\n"
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n"
        "    timeout server 30s\n    timeout http-keep-alive 30s\n    option http-keep-alive\n"
        "    retries 3\n    retry-on conn-failure empty-response\n    option redispatch\n\n"
        f"frontend ps_front\n    bind {address()}:{port}\n    default_backend routers\n\n"
        f"backend routers\n    balance roundrobin\n{servers}")


def start_front(backends: Sequence[tuple[str, int]], *, port: int | None = None) -> Front:
    """haproxy on <run address>:port (a free one by default) in front of `backends`, listening."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).is_file():
        raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
    port = port or free_port()
    work = Path(tempfile.mkdtemp(prefix="ps-bed-front-"))
    cfg = work / "haproxy.cfg"
    cfg.write_text(front_config(port, backends))
    check = subprocess.run([binary, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"haproxy rejected its config: {check.stderr.strip()[-500:]}")
    log = open(work / "haproxy.log", "wb")  # noqa: SIM115 - lives as long as haproxy
    proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    front = Front(port=port, backends=tuple(backends), process=proc, dir=work)

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited: {front.log_text()[-500:]}")
        return wait_port(port, timeout=0.2)

    if not until(listening, 15, 0.05):
        front.stop()
        raise RuntimeError("haproxy did not listen in time")
    return front
