"""`ps webhook serve --workers N`: N receiving processes on one listening socket, one acting process.

The supervisor (the process `ps` started) binds the socket, makes a pipe and forks, before any thread
exists in it (it never starts one): N receivers, each a WebhookServer on the shared socket that only
receives (validate, dedup, commit, 200 after the commit is durable: SQLite WAL, BEGIN IMMEDIATE across
processes, the group commit per process) and writes one byte on the pipe per accepted delivery; and one
actor, a WebhookServer without HTTP (`listen=False`) that reads the pipe and does everything that acts:
attempts, retries, coalescing, the local deploy's process group, adopting it after a restart.

The supervisor then only waits for children. One that ends is replaced (as gunicorn does): a receiver at
once (connections still in the socket's backlog are taken by the others meanwhile; a delivery that got its
200 was committed before), the actor only after it has been reaped, so two never act at once; the new
actor resumes what the old one left `running` exactly as a restarted receiver does. Children that keep
dying (CRASH_LIMIT within CRASH_WINDOW seconds) stop everything: the supervisor exits 1. SIGTERM/SIGINT:
every child gets SIGTERM and is waited for. Children get SIGTERM when the supervisor dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from pipeline_steps.waiting import poll_until

RECEIVER, ACTOR = "receiver", "actor"
CRASH_LIMIT, CRASH_WINDOW = 5, 30.0
STOP_GRACE = 10.0  # seconds a child has to stop after SIGTERM before SIGKILL
PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

Log = Callable[[str], None]
# what a child runs: (role, listening socket, pipe fds (read, write)) -> exit code
ChildMain = Callable[[str, socket.socket, tuple[int, int]], int]


def listen_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A TCP socket bound to host:port and listening (`backlog`), to be shared by the receivers."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when its parent dies (Linux prctl); exits now if the parent is already gone."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def notify_writer(fd: int) -> Callable[[], None]:
    """One byte on the pipe per call; never blocks (a full pipe already wakes the actor)."""
    os.set_blocking(fd, False)

    def notify() -> None:
        try:
            os.write(fd, b".")
        except OSError:
            pass

    return notify


@dataclass
class Supervisor:
    """Forks and keeps `workers` receivers and one actor; `run()` returns the exit code."""

    workers: int
    sock: socket.socket
    child_main: ChildMain
    log: Log
    flush: Callable[[], None] = lambda: None  # the CLI's streams, flushed before a fork and a child's exit
    children: dict[int, str] = field(default_factory=dict)
    crashes: list[float] = field(default_factory=list)
    _pipe: tuple[int, int] = (-1, -1)

    def _fork(self, role: str) -> int:
        self.flush()  # else the child would write what the supervisor had buffered a second time
        parent = os.getpid()
        # no SIGTERM/SIGINT between the fork and the child's own handlers: the supervisor's handler would
        # raise in the child outside the try below, and the child would go on as a second supervisor
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            raise
        if pid == 0:  # the child: never returns into the supervisor's code
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
                die_with_parent(parent)
                code = self.child_main(role, self.sock, self._pipe)
            except BaseException as exc:  # noqa: BLE001 - a child reports and exits, never unwinds here
                if not isinstance(exc, KeyboardInterrupt | SystemExit):
                    self.log(f"{role} {os.getpid()} failed: {type(exc).__name__}: {str(exc)[:200]}")
                code = 0 if isinstance(exc, KeyboardInterrupt) else 1
            finally:
                try:
                    self.flush()
                finally:
                    os._exit(code)
        self.children[pid] = role
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # a pending SIGTERM is handled now
        self.log(f"{role} {pid} started")
        return pid

    def run(self) -> int:
        """Fork the children, replace those that end, until SIGTERM/SIGINT (0) or a crash loop (1)."""
        import threading

        if threading.active_count() > 1:  # a fork copies only the forking thread: never fork with others
            raise RuntimeError("the webhook supervisor must fork before any thread starts")
        self._pipe = os.pipe()

        def stop(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        code = 0
        try:
            self._fork(ACTOR)
            for _ in range(self.workers):
                self._fork(RECEIVER)
            while True:
                pid, status = os.wait()
                role = self.children.pop(pid, None)
                if role is None:
                    continue
                now = time.monotonic()
                self.crashes = [t for t in self.crashes if t > now - CRASH_WINDOW] + [now]
                if len(self.crashes) >= CRASH_LIMIT:
                    self.log(f"{role} {pid} ended ({_how(status)}); {len(self.crashes)} processes ended "
                             f"within {CRASH_WINDOW:.0f}s: stopping")
                    code = 1
                    break
                self.log(f"{role} {pid} ended ({_how(status)}): starting another")
                self._fork(role)
        except KeyboardInterrupt:
            pass
        except ChildProcessError:  # no child left (cannot happen while we replace them)
            code = 1
        except OSError as exc:  # fork refused (out of processes or memory)
            self.log(f"cannot start a receiver process: {exc.strerror or exc}: stopping")
            code = 1
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self._stop_children()
        for fd in self._pipe:
            os.close(fd)
        return code

    def _stop_children(self) -> None:
        """SIGTERM every child, wait for them (STOP_GRACE), then SIGKILL those left."""
        for pid in self.children:
            _signal(pid, signal.SIGTERM)
        poll_until(lambda: self._reap() or None, timeout=STOP_GRACE, interval=0.05)
        for pid in list(self.children):
            _signal(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            del self.children[pid]


    def _reap(self) -> bool:
        """Reap the children that ended; True when none is left."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                del self.children[pid]
        return not self.children


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
