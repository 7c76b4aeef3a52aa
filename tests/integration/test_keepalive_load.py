"""The keep-alive load client against a scripted HTTP server on the run's address: what counts as failed."""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.keepalive_load import KeepAliveLoad, Route
from testbed.ports import address

SERVER = "127.0.0.1:1111"
ROUTES = [Route("web", "/", {SERVER: "stable", "127.0.0.1:1112": "canary"})]


def _answer(path: str, *, status: int = 200, upstream: str = SERVER, slot: str = "stable",
            chunked: bool = False, body_path: str | None = None) -> bytes:
    body = json.dumps({"app": "stub", "path": body_path or path}).encode()
    head = (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nX-Upstream: {upstream}\r\n"
            f"X-Slot: {slot}\r\n")
    if chunked:
        half = len(body) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]))
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


KINDS: dict[str, dict[str, Any]] = {
    "ok": {}, "close_idle": {}, "partial": {}, "chunked": {"chunked": True}, "error": {"status": 502},
    "wrong_upstream": {"upstream": "127.0.0.1:2222"},
    "retried_upstream": {"upstream": f"127.0.0.1:1112, {SERVER}"},  # nginx tried the canary first
    "wrong_slot": {"slot": "canary"}, "wrong_path": {"body_path": "/elsewhere"},
}


class _Handler(socketserver.BaseRequestHandler):
    mode = "ok"

    def handle(self) -> None:
        sock: socket.socket = self.request
        buf = b""
        served = 0
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            mode = self.server.mode  # type: ignore[attr-defined]
            served += 1
            if mode == "reset_fresh":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # a reset on the connection's first request
                return
            if mode == "partial" and served == 2:
                sock.sendall(b"HTTP/1.1 200")
                return  # closed after 12 bytes of the answer
            answer = _answer(path, **KINDS[mode])
            sock.sendall(answer)
            if mode == "close_idle":
                return  # like nginx at a reload: the kept-alive connection is closed while idle


@pytest.fixture
def stub() -> Iterator[socketserver.ThreadingTCPServer]:
    server = socketserver.ThreadingTCPServer((address(), 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _run(stub: socketserver.ThreadingTCPServer, mode: str) -> tuple[int, int, int, int, list[str]]:
    """40 requests at 200/s on 4 kept-alive connections: sent, failed, retried, reused, first errors."""
    stub.mode = mode  # type: ignore[attr-defined]
    with KeepAliveLoad(int(stub.server_address[1]), ROUTES, rate=200, max_seconds=5, max_requests=40,
                       timeout=2.0, workers=4) as load:
        load.wait_more(40, timeout=10)
    report = load.report()
    return report.sent, report.failed, report.retried, report.reused, report.errors(3)


@pytest.mark.parametrize("mode", ["ok", "chunked", "retried_upstream"])
def test_right_answers_on_kept_alive_connections_count(stub: socketserver.ThreadingTCPServer,
                                                       mode: str) -> None:
    sent, failed, retried, reused, errors = _run(stub, mode)
    assert (sent, failed, retried) == (40, 0, 0), errors
    assert reused >= 40 - 4  # one new connection per worker, then kept alive


def test_a_kept_alive_connection_closed_while_idle_is_retried_once(
        stub: socketserver.ThreadingTCPServer) -> None:
    sent, failed, retried, reused, errors = _run(stub, "close_idle")
    assert sent == 40 and failed == 0, errors
    assert retried >= 30  # every request after a worker's first found its connection closed


@pytest.mark.parametrize(("mode", "says"), [
    ("error", "HTTP 502"),
    ("wrong_upstream", "not a server of web's upstream"),
    ("wrong_slot", "X-Slot canary"),
    ("wrong_path", "not /r"),
    ("reset_fresh", "new connection"),
    ("partial", "after 12 bytes"),
])
def test_wrong_answers_and_drops_fail(stub: socketserver.ThreadingTCPServer, mode: str, says: str) -> None:
    sent, failed, _, _, errors = _run(stub, mode)
    assert sent == 40 and failed > 0
    assert says in errors[0], errors
    if mode != "partial":
        assert failed == 40, errors
