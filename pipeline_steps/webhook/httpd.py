"""uvicorn, fitted for the receiver: a whole-request deadline, a cap on the request head, logs as ours.

uvicorn serves HTTP/1.1 (asyncio, with httptools' parser and uvloop's event loop: both C, both kept by the
uvicorn/MagicStack maintainers); its Config gives the keep-alive idle deadline and the connection limit
(`limit_concurrency`: a connection over it is answered 503). The listening socket is bound by the caller,
with our backlog, so the port is known before serving starts and several processes can share it. Added: a
request whose head and body are not all in within `request_deadline` seconds is cut, however slowly its
bytes trickle in (uvicorn has no such deadline: each byte restarts nothing, but nothing ends the wait
either); a request head over MAX_HEAD bytes is answered 431 and closed (llhttp sets no limit); uvicorn's
own warnings become lines of the receiver's log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn import Config, Server
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD = 64 * 1024  # request line + headers
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
Log = Callable[[str], None]
_encode = json.JSONEncoder().encode
_JSON = (b"content-type", b"application/json")
_TOO_LARGE_HEAD = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
                   b"connection: close\r\n\r\n")


async def json_answer(send: Send, status: int, body: dict[str, Any]) -> None:
    """Answer `status` with `body` as JSON."""
    data = _encode(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON, (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class _Protocol(HttpToolsProtocol):
    """Remembers when the request now being received began (its first byte) and how big its head is."""

    request_began: float | None = None
    head_bytes = 0
    in_head = False

    def _begin(self) -> None:
        if self.request_began is None:
            self.request_began = time.monotonic()
            self.in_head, self.head_bytes = True, 0

    def data_received(self, data: bytes) -> None:
        self._begin()
        if self.in_head:
            self.head_bytes += len(data)
        super().data_received(data)
        if self.in_head and self.head_bytes > MAX_HEAD and not self.transport.is_closing():
            self.transport.write(_TOO_LARGE_HEAD)  # MAX_HEAD bytes in, and the head still not complete
            self.transport.close()

    def on_message_begin(self) -> None:
        self._begin()  # a pipelined request begins inside the previous one's data
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.request_began = None
        super().on_message_complete()


class _Server(Server):
    """uvicorn's Server, cutting late requests once a second (its loop ticks every 0.1 s)."""

    request_deadline = 10.0

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:
            cutoff = time.monotonic() - self.request_deadline
            for connection in list(self.server_state.connections):
                began = getattr(connection, "request_began", None)
                if began is not None and began < cutoff:
                    connection.transport.close()
        return bool(await super().on_tick(counter))


class _LogHandler(logging.Handler):
    def __init__(self, log: Log) -> None:
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        why = f": {type(exc).__name__}: {str(exc)[:200]}" if exc is not None else ""
        self._log(f"http: {record.getMessage()}{why}")  # the receiver's log masks secrets


def make_server(app: App, *, connection_limit: int, idle_timeout: float, request_deadline: float,
                shutdown_wait: float, log: Log) -> _Server:
    """A uvicorn server for `app`; `.run(sockets=[sock])` serves a socket of prefork.listen_socket()."""
    errors = logging.getLogger("uvicorn.error")
    # uvicorn's logger is one per process: the server made last logs its lines (one per process in use)
    errors.handlers[:] = [_LogHandler(log)]
    errors.propagate = False
    config = Config(app, http=_Protocol, loop="auto", interface="asgi3", lifespan="off", log_config=None,
                    access_log=False, server_header=False, proxy_headers=False,
                    timeout_keep_alive=max(1, round(idle_timeout)), limit_concurrency=connection_limit,
                    timeout_graceful_shutdown=max(1, round(shutdown_wait)))
    server = _Server(config)
    server.request_deadline = request_deadline
    return server


M_ARENA_MAX = -8  # glibc's mallopt parameter


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """Let the threads created from now on share `arenas` malloc arenas (glibc; elsewhere a no-op).

    glibc gives each new thread its own arena (up to 8 per core) and each keeps the pages it touched: the
    receiver's store, worker and action threads would each grow one. Under the GIL the threads hardly
    ever allocate at the same moment, so sharing arenas costs nothing measurable."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
