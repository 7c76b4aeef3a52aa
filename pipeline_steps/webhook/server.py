"""The GitLab push-event receiver: record durably, answer 200 at once, act later in one worker thread.

POST (any path)  a GitLab webhook delivery; `X-Gitlab-Token` must match (constant-time compare)
GET /healthz     {"status": "ok", "pending": n, "action": name}
GET /deliveries  {"deliveries": [...]} newest first (`?limit=N`)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pipeline_steps.errors import PsError
from pipeline_steps.secrets import mask
from pipeline_steps.webhook.actions import Action
from pipeline_steps.webhook.store import DONE, FAILED, IGNORED, PENDING, Delivery, DeliveryStore, PushEvent

MAX_BODY = 1024 * 1024
ZERO_SHA = "0" * 40
Log = Callable[[str], None]


@dataclass(frozen=True)
class ReceiverSettings:
    """What the receiver accepts: the shared token, the branches that deploy, the body limit."""

    token: str
    branches: tuple[str, ...] = ("develop",)
    max_body: int = MAX_BODY


@dataclass(frozen=True)
class Classified(PushEvent):
    """A parsed delivery: what it is and, when we will not act on it, why."""

    ignored: str | None  # the reason, or None when this push starts the action


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of the X-Gitlab-Token header with the configured secret."""
    return hmac.compare_digest((given or "").encode("utf-8"), expected.encode("utf-8"))


def delivery_key(headers: Mapping[str, str], body: bytes) -> str:
    """Idempotency-Key, else X-Gitlab-Event-UUID, else a hash of the body (a replay is the same body)."""
    for header in ("Idempotency-Key", "X-Gitlab-Event-UUID"):
        value = (headers.get(header) or "").strip()
        if value:
            return value[:200]
    return "sha256:" + hashlib.sha256(body).hexdigest()


def classify(payload: Mapping[str, Any], branches: tuple[str, ...]) -> Classified:
    """Decide whether a GitLab payload is a push to one of `branches` (and read its commit)."""
    kind = str(payload.get("object_kind") or payload.get("event_name") or "unknown")
    ref = payload.get("ref") if isinstance(payload.get("ref"), str) else None
    branch = ref.removeprefix("refs/heads/") if ref and ref.startswith("refs/heads/") else None
    sha = payload.get("checkout_sha") or payload.get("after")
    sha = str(sha) if isinstance(sha, str) and sha else None
    project_raw = payload.get("project")
    project = None
    if isinstance(project_raw, dict):
        project = str(project_raw.get("path_with_namespace") or project_raw.get("id") or "") or None
    if project is None and payload.get("project_id") is not None:
        project = str(payload.get("project_id"))
    user = payload.get("user_username") or payload.get("user_name")
    user = str(user) if user else None

    def result(reason: str | None) -> Classified:
        return Classified(kind, ref, branch, sha, project, user, reason)

    if kind != "push":
        return result(f"event {kind!r} is not a push")
    if branch is None:
        return result(f"ref {ref!r} is not a branch")
    if branch not in branches:
        return result(f"branch {branch!r} does not deploy (only {', '.join(branches)})")
    if not sha or sha == ZERO_SHA:
        return result(f"branch {branch!r} was deleted")
    return result(None)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 10  # a client that stalls mid-request is dropped
    server_version = "ps-webhook"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        self.server.app.log(f"{self.address_string()} {format % args}")

    def _send(self, status: int, body: dict[str, Any], close: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        app = self.server.app
        parts = urlsplit(self.path)
        if parts.path == "/healthz":
            self._send(200, {"status": "ok", "pending": app.store.count(PENDING), "action": app.action.name})
        elif parts.path == "/deliveries":
            try:
                limit = int(parse_qs(parts.query).get("limit", ["100"])[0])
            except ValueError:
                self._send(400, {"status": "bad request", "error": "limit must be a whole number"})
                return
            self._send(200, {"deliveries": [d.as_dict() for d in app.store.recent(max(1, min(limit, 1000)))]})
        else:
            self._send(404, {"status": "not found"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        app = self.server.app
        if not token_matches(self.headers.get("X-Gitlab-Token"), app.settings.token):
            self._send(401, {"status": "unauthorized"}, close=True)
            return
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._send(411, {"status": "length required"}, close=True)
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._send(411, {"status": "length required"}, close=True)
            return
        if length < 0:
            self._send(400, {"status": "bad request", "error": "negative Content-Length"}, close=True)
            return
        if length > app.settings.max_body:
            self._send(413, {"status": "too large", "limit": app.settings.max_body}, close=True)
            return
        body = self.rfile.read(length)
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._send(400, {"status": "bad request", "error": "body is not JSON"})
            return
        if not isinstance(payload, dict):
            self._send(400, {"status": "bad request", "error": "body is not a JSON object"})
            return
        status, answer = app.receive(dict(self.headers.items()), body, payload)
        self._send(status, answer)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    app: WebhookServer


class WebhookServer:
    """The receiver and its worker; `start()` serves in a thread, `serve_forever()` in this one."""

    def __init__(self, store: DeliveryStore, action: Action, settings: ReceiverSettings,
                 host: str = "127.0.0.1", port: int = 9000, *, start_worker: bool = True,
                 log: Log | None = None) -> None:
        self.store = store
        self.action = action
        self.settings = settings
        self.log: Log = log or (lambda line: None)
        self.start_worker = start_worker
        self.host = host
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.app = self
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._serving: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------ receiving

    def receive(self, headers: Mapping[str, str], body: bytes,
                payload: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Record one authenticated delivery; the answer (status, JSON) for GitLab."""
        lowered = {k.title(): v for k, v in headers.items()}
        key = delivery_key({"Idempotency-Key": lowered.get("Idempotency-Key", ""),
                            "X-Gitlab-Event-UUID": lowered.get("X-Gitlab-Event-Uuid", "")}, body)
        info = classify(payload, self.settings.branches)
        now = time.time()
        delivery = Delivery(**info.push_fields(), key=key, received_at=now,
                            status=IGNORED if info.ignored else PENDING, outcome=info.ignored,
                            updated_at=now)
        try:
            inserted = self.store.add(delivery)
        except Exception as exc:  # disk full, locked database: GitLab must retry later
            self.log(f"delivery {key} NOT recorded: {type(exc).__name__}: {exc}")
            return 503, {"status": "not recorded", "delivery": key}
        if not inserted:
            self.log(f"delivery {key}: duplicate, not acted on again")
            return 200, {"status": "duplicate", "delivery": key}
        if info.ignored:
            self.log(f"delivery {key}: ignored ({info.ignored})")
            return 200, {"status": "ignored", "delivery": key, "reason": info.ignored}
        self.log(f"delivery {key}: accepted push of {info.branch} at {(info.sha or '')[:12]}")
        self._wake.set()
        return 200, {"status": "accepted", "delivery": key}

    # ------------------------------------------------------------ working

    def run_pending(self) -> int:
        """Run every pending delivery now (in this thread); returns how many ran."""
        ran = 0
        while not self._stop.is_set():
            delivery = self.store.claim_next()
            if delivery is None:
                return ran
            self._run(delivery)
            ran += 1
        return ran

    def _run(self, delivery: Delivery) -> None:
        self.log(f"delivery {delivery.key}: {self.action.name} for {delivery.branch} "
                 f"{(delivery.sha or '')[:12]} (attempt {delivery.attempts})")
        try:
            outcome = self.action(delivery)
            status = DONE
        except PsError as exc:
            outcome, status = exc.message, FAILED
        except Exception as exc:  # the worker must survive any single action
            outcome, status = f"internal error: {type(exc).__name__}: {exc}", FAILED
        outcome = mask(outcome)
        self.store.finish(delivery.key, status, outcome)
        self.log(f"delivery {delivery.key}: {status}: {outcome}")

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self.run_pending()
            self._wake.wait(timeout=1.0)

    # ------------------------------------------------------------ lifecycle

    def _begin(self) -> None:
        requeued = self.store.requeue_interrupted()
        if requeued:
            self.log(f"{requeued} delivery(ies) interrupted by the last stop will run again")
        pending = self.store.count(PENDING)
        if pending:
            self.log(f"{pending} pending delivery(ies) picked up")
        if self.start_worker:
            self._worker = threading.Thread(target=self._work, name="ps-webhook-worker", daemon=True)
            self._worker.start()

    def start(self) -> None:
        """Serve in a background thread (tests, embedding)."""
        self._begin()
        self._serving = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                         name="ps-webhook-http", daemon=True)
        self._serving.start()

    def serve_forever(self) -> None:
        """Serve in this thread until KeyboardInterrupt (SIGINT/SIGTERM), then stop."""
        self._begin()
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self.stop()

    def stop(self, wait: float = 5.0) -> None:
        """Stop serving and working; an action still running is left `running` (requeued at next start)."""
        self._stop.set()
        self._wake.set()
        if self._serving is not None:
            self._httpd.shutdown()
            self._serving.join(timeout=wait)
            self._serving = None
        self._httpd.server_close()
        if self._worker is not None:
            self._worker.join(timeout=wait)
            self._worker = None
