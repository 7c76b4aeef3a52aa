"""waitress, fitted for the receiver: a whole-request deadline, health checks first, a cheaper event loop.

waitress serves HTTP (threaded, pure Python): listen backlog, connection limit, idle deadline
(channel_timeout) come from its Adjustments. Added here: a request whose headers and body are not all in
within `request_deadline` seconds is cut, however slowly its bytes trickle in; `/healthz` goes to the head
of the task queue; every waiting connection is accepted in one turn of the loop; and the loop itself keeps
one poll set and asks each connection's state from its attributes (waitress rebuilds the poll set and calls
readable()/writable() of every open connection on every turn: with 100 connections open, that was a large
part of the CPU each delivery cost).
"""

from __future__ import annotations

import json
import logging
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

WRITE_WHEN_RUNNING = 64 * 1024  # an answer being written is sent once its task ends, unless it is larger
StartResponse = Callable[..., Any]
App = Callable[[dict[str, Any], StartResponse], list[bytes]]
_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT
_REASONS = {200: "200 OK", 400: "400 Bad Request", 401: "401 Unauthorized", 404: "404 Not Found",
            405: "405 Method Not Allowed", 500: "500 Internal Server Error", 503: "503 Service Unavailable"}
_encode = json.JSONEncoder().encode


def json_answer(start_response: StartResponse, status: int, body: dict[str, Any]) -> list[bytes]:
    """Answer `status` with `body` as JSON."""
    data = _encode(body).encode()
    start_response(_REASONS.get(status, f"{status} Status"),
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


class _Channel(HTTPChannel):
    """Remembers when the request now being received began (its first byte)."""

    request_began: float | None = None

    def received(self, data: bytes) -> bool:
        if self.request is None and data and self.request_began is None:
            self.request_began = time.monotonic()
        done = bool(super().received(data))
        if self.request is None:
            self.request_began = None
        return done

    def writable(self) -> bool:
        """Not while a task is still writing an answer of less than WRITE_WHEN_RUNNING bytes.

        waitress polls a channel for POLLOUT as soon as its task has written anything, and its
        handle_write skips sending while the task holds the buffer: the event loop spins, holding the GIL
        the task needs to end. The task pulls the loop's trigger when it ends; the answer goes out then.
        (A task blocks for the loop only above outbuf_high_watermark, far above this.)
        """
        if (self.requests and self.total_outbufs_len < WRITE_WHEN_RUNNING
                and not (self.will_close or self.close_when_flushed)):
            return False
        return bool(super().writable())


def _channel_flags(channel: _Channel, lookahead: int) -> int:
    """HTTPChannel.readable() and _Channel.writable() as poll flags, from the attributes they read."""
    if channel.will_close or channel.close_when_flushed:
        return _WRITE
    out = channel.total_outbufs_len
    if not out:
        return _READ if len(channel.requests) <= lookahead else 0
    return _WRITE if not channel.requests or out >= WRITE_WHEN_RUNNING else 0


class _Server(TcpWSGIServer):
    channel_class = _Channel
    request_deadline = 10.0
    accept_per_turn = 0  # 0: all that wait; several processes sharing one socket take a few each

    def handle_accept(self) -> None:
        """Every connection waiting to be accepted, up to the connection limit (waitress takes one per
        turn of its event loop, and each turn visits every open connection); at most `accept_per_turn`
        when other processes accept from the same socket (a burst is then shared out among them)."""
        taken = 0
        while len(self._map) < self.adj.connection_limit:
            if self.accept_per_turn and taken >= self.accept_per_turn:
                return
            taken += 1
            before = len(self._map)
            super().handle_accept()
            if len(self._map) == before:  # nothing left to accept (or a bogus socket, logged)
                return

    def maintenance(self, now: float) -> None:
        """Idle channels are closed (waitress); so are those whose request is late, trickling or not."""
        super().maintenance(now)
        cutoff = time.monotonic() - self.request_deadline
        for channel in list(self.active_channels.values()):
            began = getattr(channel, "request_began", None)
            if began is not None and began < cutoff:
                channel.will_close = True

    def run(self) -> None:
        """waitress' event loop (wasyncore.poll2), keeping one poll set across turns."""
        pollster = select.poll()
        registered: dict[int, int] = {}
        try:
            while self._map:
                self._turn(pollster, registered)
        except (SystemExit, KeyboardInterrupt):
            self.task_dispatcher.shutdown()

    def _turn(self, pollster: Any, registered: dict[int, int]) -> None:
        lookahead = self.adj.channel_request_lookahead
        channels = self._map
        for fd, obj in list(channels.items()):
            if type(obj) is _Channel:
                flags = _channel_flags(obj, lookahead)
            else:  # this server's socket, the trigger
                flags = _READ if obj.readable() else 0
                if not obj.accepting and obj.writable():
                    flags |= _WRITE
            if registered.get(fd, 0) != flags:
                if not flags:
                    pollster.unregister(fd)
                    del registered[fd]
                    continue
                if fd in registered:
                    pollster.modify(fd, flags)
                else:
                    pollster.register(fd, flags)
                registered[fd] = flags
        for fd in registered.keys() - channels.keys():  # closed since the last turn
            pollster.unregister(fd)
            del registered[fd]
        try:
            events = pollster.poll(int(self.adj.asyncore_loop_timeout * 1000))
        except InterruptedError:
            return
        for fd, flags in events:
            obj = channels.get(fd)
            if obj is not None:
                wasyncore.readwrite(obj, flags)


class _Dispatcher(ThreadedTaskDispatcher):
    """Health checks go to the head of the queue: /healthz stays fast while deliveries pile up."""

    def add_task(self, task: Any) -> None:
        requests = getattr(task, "requests", None)
        if not requests or getattr(requests[0], "path", "") != "/healthz":
            super().add_task(task)
            return
        with self.lock:
            self.queue.appendleft(task)
            self.queue_cv.notify()


def make_server(app: App, host: str, port: int, *, threads: int, backlog: int, connection_limit: int,
                idle_timeout: float, request_deadline: float, max_body: int,
                channels: dict[int, Any], sock: socket.socket | None = None,
                accept_per_turn: int = 0) -> _Server:
    """A waitress server for `app`, bound now (or on `sock`, a listening socket bound by the caller and
    shared with other processes), served by `.run()`; its connections live in `channels`."""
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" under bursts
    where: dict[str, Any] = {"sockets": [sock]} if sock is not None else {"host": host, "port": port}
    adj = Adjustments(**where, threads=threads, backlog=backlog,
                      connection_limit=connection_limit, channel_timeout=idle_timeout,
                      cleanup_interval=1, max_request_body_size=max_body + 1,
                      max_request_header_size=64 * 1024, ident="ps-webhook", expose_tracebacks=False,
                      asyncore_use_poll=True, asyncore_loop_timeout=1,  # whole seconds (an int)
                      clear_untrusted_proxy_headers=False)
    dispatcher = _Dispatcher()
    dispatcher.set_thread_count(threads)
    if sock is None:
        server = _Server(app, map=channels, adj=adj, dispatcher=dispatcher)
    else:
        server = _Server(app, map=channels, adj=adj, dispatcher=dispatcher, _sock=sock, bind_socket=False,
                         sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))
    server.request_deadline = request_deadline
    server.accept_per_turn = accept_per_turn
    return server


M_ARENA_MAX = -8  # glibc's mallopt parameter


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """Let the threads created from now on share `arenas` malloc arenas (glibc; elsewhere a no-op).

    glibc gives each new thread its own arena (up to 8 per core) and each keeps the pages it touched: with
    many request threads the receiver's RSS grows for its first thousands of deliveries. Under the GIL the
    threads hardly ever allocate at the same moment, so sharing arenas costs nothing measurable."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
