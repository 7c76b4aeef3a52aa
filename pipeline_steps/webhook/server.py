"""The GitLab webhook receiver: record durably, answer 200 at once, act later in one worker thread.

POST (any path)  a GitLab webhook delivery; `X-Gitlab-Token` must match (constant-time compare)
GET /healthz     {"status": "ok", "pending": n, "action": name} (no token: for load balancers)
GET /deliveries  {"deliveries": [...]} newest first (`?limit=N`); needs the token too

HTTP is served by waitress (threaded, pure Python): listen backlog 1024, a connection limit, an idle
deadline (channel_timeout) and a whole-request deadline: a request whose headers and body are not all in
within `request_deadline` seconds is cut, however slowly its bytes trickle in.

The worker runs one delivery at a time, its attempts and retries as attempts.py says. Request checks are
in validate.py, the fitted waitress server in httpd.py, the durable group commit in store.py. With
`--workers N` (N > 1) several processes serve one listening socket and only receive, and one process
acts (`listen=False`), woken by a byte per accepted delivery on a pipe: prefork.py.
"""

from __future__ import annotations

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

from pipeline_steps.secrets import mask
from pipeline_steps.webhook.actions import Action
from pipeline_steps.webhook.attempts import run_delivery
from pipeline_steps.webhook.httpd import StartResponse, json_answer, make_server
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

# A thread back from SQLite or a socket waits for the GIL up to this long while another thread (waitress'
# event loop) computes: 5 ms by default, paid several times per delivery. The serving process uses less.
SWITCH_INTERVAL = 0.0005
SETTLE_QUIET, SETTLE_MAX = 0.02, 0.5  # the worker acts once no delivery was recorded for SETTLE_QUIET s
# connections one receiving process accepts per turn of its loop when several share the socket: a burst is
# shared out among them instead of the first one awake taking it all
ACCEPT_PER_TURN = 4
Log = Callable[[str], None]


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
    # deliveries being recorded at once (each thread holds one while its group commit is fsync'd, so a
    # burst of 100 needs 100/threads fsyncs one after the other: 2.5 ms median each here). 16 rather than 8:
    # bursts answered sooner under load; 32 was faster still but raised the RSS plateau past the 10 % goal
    # (+12..13 % even with the malloc arenas capped, +17 % without; 16: +7.8..9.7 %)
    threads: int = 16
    backlog: int = 1024
    connection_limit: int = 256
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
        self._map: dict[int, Any] = {}
        self._port = port
        self._notify = notify
        self._notified = 0  # deliveries other processes said they accepted (see watch())
        self._httpd = None if not listen else make_server(
            self.wsgi, host, port, threads=settings.threads, backlog=settings.backlog,
            connection_limit=settings.connection_limit, idle_timeout=settings.idle_timeout,
            request_deadline=settings.request_deadline, max_body=settings.max_body, channels=self._map,
            sock=sock, accept_per_turn=ACCEPT_PER_TURN if sock is not None else 0)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._idle_rounds = 0
        self._worker: threading.Thread | None = None
        self._serving: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.effective_port) if self._httpd is not None else self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------ HTTP

    def wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        """The WSGI application; every failure is one log line and a JSON answer, never a traceback."""
        try:
            return self._route(environ, start_response)
        except Exception as exc:
            self.log(f"internal error answering {environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}: "
                     f"{type(exc).__name__}: {mask(str(exc))[:200]}")
            return json_answer(start_response, 500, {"status": "internal error"})

    def _authorized(self, environ: Mapping[str, Any]) -> bool:
        given = environ.get("HTTP_X_GITLAB_TOKEN")
        bearer = str(environ.get("HTTP_AUTHORIZATION") or "")
        if not given and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        return hmac.compare_digest((given or "").encode("utf-8"), self._token)

    def _route(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO") or "/"
        if method in ("GET", "HEAD"):
            if path == "/healthz":
                return json_answer(start_response, 200, {"status": "ok", "pending": self.store.count(PENDING),
                                                   "action": self.action.name})
            if path == "/deliveries":
                if not self._authorized(environ):
                    return json_answer(start_response, 401, {"status": "unauthorized"})
                try:
                    limit = int(parse_qs(environ.get("QUERY_STRING", "")).get("limit", ["100"])[0])
                except ValueError:
                    return json_answer(start_response, 400, {"status": "bad request",
                                                       "error": "limit must be a whole number"})
                rows = self.store.recent(max(1, min(limit, 1000)))
                return json_answer(start_response, 200, {"deliveries": [d.as_dict() for d in rows]})
            return json_answer(start_response, 404, {"status": "not found"})
        if method != "POST":
            return json_answer(start_response, 405, {"status": "method not allowed"})
        if not self._authorized(environ):
            return json_answer(start_response, 401, {"status": "unauthorized"})
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        payload, error = parse_body(body, self.settings.max_depth)
        if payload is None:
            return json_answer(start_response, 400, {"status": "bad request", "error": error})
        status, answer = self._receive(environ.get("HTTP_IDEMPOTENCY_KEY", "").strip(),
                                       environ.get("HTTP_X_GITLAB_EVENT_UUID", "").strip(), body, payload)
        return json_answer(start_response, status, answer)

    # ------------------------------------------------------------ receiving

    def receive(self, headers: Mapping[str, str], body: bytes,
                payload: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Record one authenticated delivery; the answer (status, JSON) for GitLab."""
        lowered = {k.lower(): v for k, v in headers.items()}
        return self._receive((lowered.get("idempotency-key") or "").strip(),
                             (lowered.get("x-gitlab-event-uuid") or "").strip(), body, payload)

    def _receive(self, idem: str, uuid: str, body: bytes,
                 payload: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        key, ids = identify(idem, uuid, body)
        info = classify(payload, self.settings.branches)
        now = time.time()
        delivery = Delivery(info.event, info.ref, info.branch, info.sha, info.project, info.user, key=key,
                            received_at=now, status=IGNORED if info.ignored else PENDING,
                            outcome=info.ignored, updated_at=now)
        recorded, looked_up = commit_ids(info)
        try:
            found = self.store.record(delivery, ids, recorded, looked_up)
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
        """Run every waiting delivery now (in this thread); returns how many ran."""
        ran = 0
        while not self._stop.is_set():
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
            self._settle()
            if self.run_pending() == 0:
                with self._idle:
                    self._idle_rounds += 1  # a round that found nothing to do (wait_idle counts them)
                    self._idle.notify_all()
            self._wake.wait(timeout=1.0)

    def _settle(self) -> None:
        """Let a burst of deliveries be recorded before acting on it (at most SETTLE_MAX): the action's
        store writes and HTTP calls would compete with the receiving threads, and coalescing then starts
        the burst's newest push of a branch once instead of its first one and then the newest."""
        deadline = time.monotonic() + SETTLE_MAX
        seen = self.store.group_commits + self._notified
        while time.monotonic() < deadline and not self._stop.wait(SETTLE_QUIET):
            if self.store.group_commits + self._notified == seen:
                return
            seen = self.store.group_commits + self._notified

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
            self._serving = threading.Thread(target=self._httpd.run, name="ps-webhook-http", daemon=True)
            self._serving.start()

    def serve_forever(self) -> None:
        """Serve in this thread until KeyboardInterrupt (SIGINT/SIGTERM), then stop. Without HTTP
        (`listen=False`): act on deliveries until then."""
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._begin()
        try:
            if self._httpd is not None:
                self._httpd.run()
            else:
                while not self._stop.wait(3600):
                    pass
        finally:
            self.stop()

    def _close_all(self) -> None:
        for channel in list(self._map.values()):
            channel.close()

    def stop(self, wait: float = 5.0) -> None:
        """Stop serving and working; an attempt still in flight stays `running` (resumed at next start)."""
        self._stop.set()
        self._wake.set()
        if self._httpd is None:
            pass
        elif self._serving is not None:
            try:
                self._httpd.trigger.pull_trigger(self._close_all)
            except OSError:  # the loop already ended and closed its trigger
                pass
            self._serving.join(timeout=wait)
            self._serving = None
        else:
            self._close_all()
        if self._httpd is not None:
            self._httpd.task_dispatcher.shutdown(timeout=wait)
        if self._worker is not None:
            self._worker.join(timeout=wait)
            self._worker = None


__all__ = ["DEAD", "DONE", "FAILED", "IGNORED", "PENDING", "RETRY", "RUNNING", "SUPERSEDED", "MAX_BODY",
           "MAX_DEPTH", "MIN_TOKEN_LENGTH", "ZERO_SHA", "Classified", "ReceiverSettings", "WebhookServer",
           "classify", "commit_ids", "delivery_ids", "delivery_key", "nesting_within", "parse_body",
           "token_matches"]
