"""One loopback address per run, ports on it, and unique names, so parallel runs never collide.

Each run (a pytest session, a bench or demo run) takes its own pair of addresses in 127.0.0.0/8 (all of
it is loopback on Linux): `address()` for everything it starts (nginx, published container ports, the
registry, sshd, webhook receivers, HTTP stubs, load targets) and `second_address()` for the second
Docker host. The first call claims the pair by binding CLAIM_PORT on both (another run that drew the
same pair fails that bind and draws again) and exports it in PS_TEST_ADDRESS / PS_TEST_ADDRESS2, so the
run's subprocesses (ps itself, its nginx, `docker run -p`) use the same pair without claiming again.
With pytest-xdist each worker is a run of its own: `forget_inherited()` drops a pair its controller
drew (PS_TEST_ADDRESS_PID names the claimer), so every worker claims its own pair.

Ports: `free_port()` hands out ports of the run's address from a counter shared by the run's processes
(a locked file), below the kernel's ephemeral range, each checked free by a bind. A port is never handed
out twice in a run, so releasing it before the consumer binds is safe: no other run uses the address.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import random
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "PS_TEST_ADDRESS"
ENV2 = "PS_TEST_ADDRESS2"
ENV_PID = "PS_TEST_ADDRESS_PID"  # the pid of the process that drew the pair (unset: given by the user)
CLAIM_PORT = 61999  # above the default ephemeral range (32768-60999) and the counter's range
FIRST_PORT, LAST_PORT = 20000, 32000  # the counter's range (below the ephemeral range)

_claims: list[socket.socket] = []  # held for the life of the process that claimed the pair


def _claim(addr: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((addr, CLAIM_PORT))
        sock.listen(1)
        return sock
    except OSError:
        sock.close()
        return None


def _counter(host: str) -> Path:
    return Path(tempfile.gettempdir()) / f"ps-bed-ports-{host}"


def _forget(*hosts: str) -> None:
    """At the claimer's exit: its port counters go (the claim sockets close with the process)."""
    for host in hosts:
        _counter(host).unlink(missing_ok=True)


def _draw() -> tuple[str, str]:
    rng = random.Random(os.getpid() ^ uuid.uuid4().int)
    for _ in range(200):
        a, b, c = rng.randint(16, 250), rng.randint(0, 255), 2 * rng.randint(1, 126)
        first, second = f"127.{a}.{b}.{c}", f"127.{a}.{b}.{c + 1}"
        one = _claim(first)
        if one is None:
            continue
        two = _claim(second)
        if two is None:
            one.close()
            continue
        _claims.extend((one, two))
        atexit.register(_forget, first, second)
        return first, second
    raise RuntimeError("no free loopback address pair in 127.0.0.0/8")


def address() -> str:
    """This run's loopback address (claimed and exported on first use)."""
    if not os.environ.get(ENV):
        os.environ[ENV], os.environ[ENV2] = _draw()
        os.environ[ENV_PID] = str(os.getpid())
    return os.environ[ENV]


def forget_inherited() -> None:
    """Drop a pair another process drew (an xdist controller's), so this process claims its own.

    A pair given by the user (no PS_TEST_ADDRESS_PID) is kept: then the processes share it, and
    their ports stay distinct through the address's shared counter."""
    drawer = os.environ.get(ENV_PID)
    if drawer and drawer != str(os.getpid()):
        for name in (ENV, ENV2, ENV_PID):
            os.environ.pop(name, None)


def second_address() -> str:
    """The run's second loopback address (where nginx reaches the second Docker host's slots)."""
    address()
    if not os.environ.get(ENV2):  # PS_TEST_ADDRESS given alone: its neighbour
        head, _, last = os.environ[ENV].rpartition(".")
        os.environ[ENV2] = f"{head}.{int(last) ^ 1 or 2}"
    return os.environ[ENV2]


def url(port: int, path: str = "") -> str:
    """http://<run address>:port<path>."""
    return f"http://{address()}:{port}{path}"


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str | None = None) -> int:
    """A port of `host` (default: the run's address) that nobody holds and this run never handed out."""
    host = host or address()
    with open(_counter(host), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        text = fh.read().strip()
        port = int(text) if text.isdigit() else FIRST_PORT + random.randrange(LAST_PORT - FIRST_PORT)
        for _ in range(LAST_PORT - FIRST_PORT):
            port = port + 1 if FIRST_PORT <= port < LAST_PORT else FIRST_PORT
            if _bindable(host, port):
                fh.seek(0)
                fh.truncate()
                fh.write(str(port))
                return port
    raise RuntimeError(f"no free port on {host}")


def free_ports(n: int, host: str | None = None) -> list[int]:
    """n distinct free ports of `host` (default: the run's address)."""
    return [free_port(host) for _ in range(n)]


def unique(prefix: str = "pst") -> str:
    """A short unique lower-case name for apps, containers and dirs of one run."""
    return f"{prefix}{os.getpid() % 1000:03d}{uuid.uuid4().hex[:6]}"


def wait_port(port: int, host: str | None = None, timeout: float = 10.0) -> bool:
    """True once something accepts connections on host:port (default: the run's address)."""
    from testbed.wait import until

    def accepts() -> bool:
        try:
            with socket.create_connection((host or address(), port), timeout=0.5):
                return True
        except OSError:
            return False

    return bool(until(accepts, timeout))


@contextmanager
def held_port(host: str | None = None) -> Iterator[int]:
    """A free port that another process (this one) listens on until the block ends."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind((host or address(), free_port(host)))
    holder.listen(1)
    try:
        yield int(holder.getsockname()[1])
    finally:
        holder.close()
