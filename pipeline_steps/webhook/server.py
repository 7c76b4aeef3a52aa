"""The GitLab webhook receiver: record durably, answer 200 at once, act later in one worker thread.

POST (any path)  a GitLab webhook delivery; `X-Gitlab-Token` must match (constant-time compare)
GET /healthz     {"status": "ok", "pending": n, "action": name} (no token: for load balancers)
GET /deliveries  {"deliveries": [...]} newest first (`?limit=N`); needs the token too

HTTP is served by uvicorn (asyncio, httptools, uvloop): listen backlog 1024, a connection limit, an idle
deadline (keep-alive) and a whole-request deadline: a request whose headers and body are not all in
within `request_deadline` seconds is cut, however slowly its bytes trickle in. Requests are parsed and
checked in the event loop; their records go to the store in group commits on one thread (commits.py).

The worker runs one delivery at a time, its attempts and retries as attempts.py says. Request checks are
in validate.py, the fitted uvicorn server in httpd.py, the durable transactions in store.py. With
`--workers N` (N > 1) several processes serve one listening socket and only receive, and one process
acts (`listen=False`), woken by a byte per accepted delivery on a pipe: prefork.py.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from uvicorn import Server

from pipeline_steps.secrets import mask
from pipeline_steps.webhook.actions import Action
from pipeline_steps.webhook.attempts import run_delivery
from pipeline_steps.webhook.commits import GroupCommit
from pipeline_steps.webhook.httpd import Log, Receive, Scope, Send, json_answer, make_server
from pipeline_steps.webhook.prefork import listen_socket
from pipeline_steps.webhook.store import (
    DEAD,
    DONE,
    FAILED,
    IGNORED,
    PENDING,
    RETRY,
    RUNNING,
    SUPERSEDED,
    Delivery,
    DeliveryStore,
)
from pipeline_steps.webhook.validate import (
    MAX_BODY,
    MAX_DEPTH,
    MIN_TOKEN_LENGTH,
    ZERO_SHA,
    Classified,
    classify,
    commit_ids,
    delivery_ids,
    delivery_key,
    identify,
    nesting_within,
    parse_body,
    token_matches,
)

# A thread back from SQLite or a socket (the commit thread, the worker) waits for the GIL up to this long
# while the event loop computes: 5 ms by default, paid per transaction. The serving process uses less.
SWITCH_INTERVAL = 0.0005
SETTLE_QUIET, SETTLE_MAX = 0.02, 0.5  # the worker acts once no delivery was recorded for SETTLE_QUIET s


@dataclass(frozen=True)
class ReceiverSettings:
    """What the receiver accepts and how it serves, retries and coalesces."""

    token: str
    branches: tuple[str, ...] = ("develop",)
    max_body: int = MAX_BODY
    max_depth: int = MAX_DEPTH
    coalesce: bool = True             # pushes of a branch waiting behind a deploy collapse to the newest
    attempts: int = 5                 # attempts per delivery before it is `dead`
    retry_wait: float = 1.0           # backoff: retry_wait * 2^n seconds, at most retry_max_wait
    retry_max_wait: float = 60.0
    backlog: int = 1024
    # open connections (and requests in progress) at most; one more is answered 503 and closed
    connection_limit: int = 1024
    idle_timeout: float = 30.0        # an idle keep-alive connection is closed after this
    request_deadline: float = 10.0    # headers + body must be in within this
    # receiving processes on one socket (prefork.py); 1: this process receives and acts, as always
    workers: int = 1


class WebhookServer:
    """The receiver and its worker; `start()` serves in a thread, `serve_forever()` in this one."""

    def __init__(self, store: DeliveryStore, action: Action, settings: ReceiverSettings,
                 host: str = "127.0.0.1", port: int = 9000, *, start_worker: bool = True,
                 log: Log | None = None, sock: socket.socket | None = None, listen: bool = True,
                 notify: Callable[[], None] | None = None) -> None:
        """`sock`: serve this listening socket (shared with other receiving processes) instead of binding
        host:port; `listen=False`: no HTTP at all (the acting process of prefork.py); `notify` is called
        once per accepted delivery (it wakes that acting process)."""
        self.store = store
        self.action = action
        self.settings = settings
        self.log: Log = log or (lambda line: None)
        self.start_worker = start_worker
        self.host = host
        bind = getattr(action, "bind", None)
        if callable(bind):
            bind(store)
        self._token = settings.token.encode("utf-8")
        self._port = port
        self._notify = notify
        self._notified = 0  # deliveries other processes said they accepted (see watch())
        self._commits = GroupCommit(store)
        self._sock: socket.socket | None = None
        self._httpd: Server | None = None
        if listen:
            self._sock = sock if sock is not None else listen_socket(host, port, settings.backlog)
            self._port = int(self._sock.getsockname()[1])
            self._httpd = make_server(self.asgi, connection_limit=settings.connection_limit,
                                      idle_timeout=settings.idle_timeout,
                                      request_deadline=settings.request_deadline, shutdown_wait=5.0,
                                      log=lambda line: self.log(line))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._idle_rounds = 0
        self._worker: threading.Thread | None = None
        self._serving: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------ HTTP

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application; every failure is one log line and a JSON answer, never a traceback."""
        try:
            await self._route(scope, receive, send)
        except Exception as exc:
            self.log(f"internal error answering {scope.get('method')} {scope.get('path')}: "
                     f"{type(exc).__name__}: {mask(str(exc))[:200]}")
            await json_answer(send, 500, {"status": "internal error"})

    def _authorized(self, headers: Mapping[bytes, bytes]) -> bool:
        given = headers.get(b"x-gitlab-token")
        bearer = headers.get(b"authorization") or b""
        if not given and bearer.lower().startswith(b"bearer "):
            given = bearer[7:].strip()
        return hmac.compare_digest(given or b"", self._token)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"] or "/"
        headers = dict(scope["headers"])
        if method in ("GET", "HEAD"):
            if path == "/healthz":
                return await json_answer(send, 200, {"status": "ok", "pending": self.store.count(PENDING),
                                                     "action": self.action.name})
            if path == "/deliveries":
                if not self._authorized(headers):
                    return await json_answer(send, 401, {"status": "unauthorized"})
                try:
                    limit = int(parse_qs(scope["query_string"].decode("latin-1")).get("limit", ["100"])[0])
                except ValueError:
                    return await json_answer(send, 400, {"status": "bad request",
                                                         "error": "limit must be a whole number"})
                rows = await asyncio.get_running_loop().run_in_executor(
                    None, self.store.recent, max(1, min(limit, 1000)))
                return await json_answer(send, 200, {"deliveries": [d.as_dict() for d in rows]})
            return await json_answer(send, 404, {"status": "not found"})
        if method != "POST":
            return await json_answer(send, 405, {"status": "method not allowed"})
        if not self._authorized(headers):
            return await json_answer(send, 401, {"status": "unauthorized"})
        body = await self._body(headers, receive)
        if body is None:
            return await json_answer(send, 413, {"status": "too large",
                                                 "error": f"body over {self.settings.max_body} bytes"})
        payload, error = parse_body(body, self.settings.max_depth)
        if payload is None:
            return await json_answer(send, 400, {"status": "bad request", "error": error})
        status, answer = await self._receive(_header(headers, b"idempotency-key"),
                                             _header(headers, b"x-gitlab-event-uuid"), body, payload)
        await json_answer(send, status, answer)

    async def _body(self, headers: Mapping[bytes, bytes], receive: Receive) -> bytes | None:
        """The request body; None when it is (or says it is) over max_body, unread then."""
        limit = self.settings.max_body
        try:
            if int(headers.get(b"content-length") or 0) > limit:
                return None
        except ValueError:
            pass
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    # ------------------------------------------------------------ receiving

    async def _receive(self, idem: str, uuid: str, body: bytes,
                       payload: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Record one authenticated delivery; the answer (status, JSON) for GitLab."""
        key, ids = identify(idem, uuid, body)
        info = classify(payload, self.settings.branches)
        now = time.time()
        delivery = Delivery(info.event, info.ref, info.branch, info.sha, info.project, info.user, key=key,
                            received_at=now, status=IGNORED if info.ignored else PENDING,
                            outcome=info.ignored, updated_at=now)
        recorded, looked_up = commit_ids(info)
        try:
            found = await self._commits.record((delivery, ids, recorded, looked_up))
        except Exception as exc:  # disk full, locked database: GitLab must retry later
            self.log(f"delivery {key} NOT recorded: {type(exc).__name__}: {exc}")
            return 503, {"status": "not recorded", "delivery": key}
        if found is not None:
            self.log(f"delivery {key}: duplicate of {found}, not acted on again")
            return 200, {"status": "duplicate", "delivery": found}
        if info.ignored:
            self.log(f"delivery {key}: ignored ({info.ignored})")
            return 200, {"status": "ignored", "delivery": key, "reason": info.ignored}
        what = "merge into" if info.event == "merge_request" else "push of"
        self.log(f"delivery {key}: accepted {what} {info.branch} at {(info.sha or '')[:12]}")
        self._wake.set()
        if self._notify is not None:
            self._notify()
        return 200, {"status": "accepted", "delivery": key}

    # ------------------------------------------------------------ working

    def run_pending(self) -> int:
        """Run every waiting delivery now (in this thread), each claimed once the deliveries arriving
        meanwhile have settled (see _settle); returns how many ran."""
        ran = 0
        while not self._stop.is_set():
            self._settle()
            delivery = self.store.claim_next(coalesce=self.settings.coalesce)
            if delivery is None:
                return ran
            self._run(delivery, resumed=False)
            ran += 1
        return ran

    def _run(self, delivery: Delivery, resumed: bool) -> None:
        run_delivery(self.store, self.action, self.settings, delivery, resumed, self._stop, self.log)

    def _work(self) -> None:
        try:
            self._work_loop()
        except Exception as exc:  # only when stopping (the store closed under an action in flight)
            if not self._stop.is_set():
                self.log(f"worker stopped: {type(exc).__name__}: {mask(str(exc))[:200]}")

    def _work_loop(self) -> None:
        interrupted = self.store.in_status(RUNNING)
        if interrupted:
            self.log(f"{len(interrupted)} delivery(ies) were in flight when the receiver last stopped: "
                     "checking whether the far side has them before any repeat")
        for delivery in interrupted:  # before anything new: never two deploys at once
            if self._stop.is_set():
                return
            self._run(delivery, resumed=True)
        while not self._stop.is_set():
            self._wake.clear()
            if self.run_pending() == 0:
                with self._idle:
                    self._idle_rounds += 1  # a round that found nothing to do (wait_idle counts them)
                    self._idle.notify_all()
            self._wake.wait(timeout=1.0)

    def _settle(self) -> None:
        """Let a burst of deliveries be recorded before acting on it (at most SETTLE_MAX): the action's
        store writes and HTTP calls would compete with the receiving path for the writer and the GIL, and
        coalescing then starts the burst's newest push of a branch once instead of its first one and then
        the newest. Before each claim, not only the first: under a flood of pushes the worker acts about
        every SETTLE_MAX, on the newest, instead of back to back."""
        deadline = time.monotonic() + SETTLE_MAX
        seen = self.store.transactions + self._notified
        while time.monotonic() < deadline and not self._stop.wait(SETTLE_QUIET):
            if self.store.transactions + self._notified == seen:
                return
            seen = self.store.transactions + self._notified

    def watch(self, fd: int) -> None:
        """Wake the worker for every byte read from `fd` (the receiving processes write one per accepted
        delivery); in a daemon thread, until the pipe's last writer is gone."""
        def read() -> None:
            while True:
                try:
                    got = os.read(fd, 4096)
                except OSError:
                    return
                if not got:
                    return
                self._notified += len(got)
                self._wake.set()

        threading.Thread(target=read, name="ps-webhook-notified", daemon=True).start()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until the worker has nothing left to do (two empty rounds begun after this call)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            target = self._idle_rounds + 2
            while self._idle_rounds < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._worker is None:
                    return False
                self._wake.set()
                self._idle.wait(min(left, 0.1))
        return True

    # ------------------------------------------------------------ lifecycle

    def _begin(self) -> None:
        waiting = self.store.count(PENDING) + self.store.count(RETRY) if self.start_worker else 0
        if waiting:
            self.log(f"{waiting} waiting delivery(ies) picked up")
        if self.start_worker:
            self._worker = threading.Thread(target=self._work, name="ps-webhook-worker", daemon=True)
            self._worker.start()

    def start(self) -> None:
        """Serve in a background thread (tests, embedding)."""
        self._begin()
        if self._httpd is not None:
            self._serving = threading.Thread(target=self._serve_http, name="ps-webhook-http", daemon=True)
            self._serving.start()

    def _serve_http(self) -> None:
        assert self._httpd is not None and self._sock is not None
        self._httpd.run(sockets=[self._sock])

    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM, then stop (uvicorn ends its loop on either, then
        raises the signal again: the caller's handler runs then). Without HTTP (`listen=False`): act on
        deliveries until KeyboardInterrupt."""
        sys.setswitchinterval(SWITCH_INTERVAL)
        # what the imports and the set-up made is never garbage: a full collection during a burst then
        # scans only what came since (a burst's p99 31 ms with this, 41 to 50 ms without, in one run)
        gc.collect()
        gc.freeze()
        self._begin()
        try:
            if self._httpd is not None:
                self._serve_http()
            else:
                while not self._stop.wait(3600):
                    pass
        finally:
            self.stop()

    def stop(self, wait: float = 5.0) -> None:
        """Stop serving and working; an attempt still in flight stays `running` (resumed at next start)."""
        self._stop.set()
        self._wake.set()
        if self._httpd is not None:
            self._httpd.should_exit = True
            if self._serving is not None:
                self._serving.join(timeout=wait + 2)
                self._serving = None
            if self._sock is not None:
                self._sock.close()
        self._commits.close()
        if self._worker is not None:
            self._worker.join(timeout=wait)
            self._worker = None


def _header(headers: Mapping[bytes, bytes], name: bytes) -> str:
    return headers.get(name, b"").decode("latin-1").strip()


__all__ = ["DEAD", "DONE", "FAILED", "IGNORED", "PENDING", "RETRY", "RUNNING", "SUPERSEDED", "MAX_BODY",
           "MAX_DEPTH", "MIN_TOKEN_LENGTH", "ZERO_SHA", "Classified", "ReceiverSettings", "WebhookServer",
           "classify", "commit_ids", "delivery_ids", "delivery_key", "nesting_within", "parse_body",
           "token_matches"]
