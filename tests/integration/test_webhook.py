"""`ps webhook serve` over real HTTP (uvicorn): in-process on a free port, and as a real `ps` subprocess.

Jenkins is a local pytest-httpserver endpoint (FakeJenkins: trigger, queue and builds API); GitLab is
python-gitlab against `responses`.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pipeline_steps.errors import CheckFailed
from pipeline_steps.webhook.actions import GitLabPipelineAction, JenkinsAction, LocalDeployAction
from pipeline_steps.webhook.server import MAX_BODY, ReceiverSettings, WebhookServer
from pipeline_steps.webhook.store import (
    DEAD,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    SUPERSEDED,
    Delivery,
    DeliveryStore,
)
from testbed.ports import address, free_port, wait_port
from testbed.wait import until

REPO = Path(__file__).resolve().parents[2]

PsRun = Any  # tests/conftest.py's runner of the real `ps`

TOKEN = "whk-test-token-4f9a"
SHA = "0123456789abcdef0123456789abcdef01234567"


def head_sha(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def push_payload(branch: str = "develop", sha: str = SHA, kind: str = "push") -> dict[str, Any]:
    return {"object_kind": kind, "event_name": kind, "ref": f"refs/heads/{branch}", "before": "f" * 40,
            "after": sha, "checkout_sha": sha, "user_username": "dev",
            "project": {"id": 42, "path_with_namespace": "team/app"}}


def post(url: str, payload: Any = None, *, token: str | None = TOKEN, uuid: str | None = None,
         body: bytes | None = None, headers: dict[str, str] | None = None) -> requests.Response:
    h = {"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook", **(headers or {})}
    if token is not None:
        h["X-Gitlab-Token"] = token
    if uuid:
        h["X-Gitlab-Event-UUID"] = uuid
    data = body if body is not None else json.dumps(payload).encode()
    return requests.post(url, data=data, headers=h, timeout=5)


def padded_json(kind: str, size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    head, tail = b'{"object_kind": "' + kind.encode() + b'", "pad": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    return bool(until(check, timeout))


class Recorder:
    """An action that records what it was asked to do (optionally held until released)."""

    name = "recorder"

    def __init__(self, hold: bool = False) -> None:
        self.calls: list[Delivery] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, delivery: Delivery) -> str:
        self.started.set()
        self.release.wait(timeout=10)
        self.calls.append(delivery)
        return f"recorded {delivery.sha}"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., WebhookServer]]:
    """Start WebhookServers in-process on free ports of the run's address; all stopped afterwards."""
    started: list[tuple[WebhookServer, DeliveryStore]] = []

    def start(action: Any, db: Path | None = None, *, start_worker: bool = True,
              branches: tuple[str, ...] = ("develop",), **settings: Any) -> WebhookServer:
        store = DeliveryStore(db or tmp_path / "deliveries.sqlite3")
        settings = {"retry_wait": 0.01, "retry_max_wait": 0.05, **settings}
        server = WebhookServer(store, action, ReceiverSettings(token=TOKEN, branches=branches, **settings),
                               address(), free_port(), start_worker=start_worker)
        server.start()
        started.append((server, store))
        return server

    yield start
    for server, store in started:
        server.stop()
        store.close()


@pytest.fixture
def jenkins() -> Iterator[HTTPServer]:
    server = HTTPServer(host=address(), port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


def deliveries(server: WebhookServer | str) -> list[dict[str, Any]]:
    url = server if isinstance(server, str) else server.url
    answer = requests.get(f"{url}/deliveries", headers={"X-Gitlab-Token": TOKEN}, timeout=5)
    assert answer.status_code == 200
    return list(answer.json()["deliveries"])


# ------------------------------------------------------------------ receiving


def test_accepted_push_is_recorded_answered_fast_and_acted_on_once(
        serve: Callable[..., WebhookServer]) -> None:
    action = Recorder()
    server = serve(action)
    started = time.monotonic()
    answer = post(server.url, push_payload(), uuid="uuid-1")
    assert time.monotonic() - started < 1.0
    assert (answer.status_code, answer.json()) == (200, {"status": "accepted", "delivery": "uuid-1"})
    assert wait_for(lambda: deliveries(server)[0]["status"] == DONE)
    assert [d.sha for d in action.calls] == [SHA]
    record = deliveries(server)[0]
    assert (record["branch"], record["sha"], record["project"], record["outcome"]) == (
        "develop", SHA, "team/app", f"recorded {SHA}")
    health = requests.get(f"{server.url}/healthz", timeout=5).json()
    assert health == {"status": "ok", "pending": 0, "action": "recorder"}


def test_replayed_delivery_is_acted_on_once(serve: Callable[..., WebhookServer]) -> None:
    action = Recorder()
    server = serve(action)
    first = post(server.url, push_payload(), uuid="uuid-replay")
    assert first.json()["status"] == "accepted"
    assert wait_for(lambda: len(action.calls) == 1)
    for _ in range(3):
        again = post(server.url, push_payload(), uuid="uuid-replay")
        assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    # another push (the same body would now be a duplicate by its hash, issue 16)
    by_key = post(server.url, push_payload(sha="c" * 40), headers={"Idempotency-Key": "idem-1"})
    assert by_key.json() == {"status": "accepted", "delivery": "idem-1"}
    replay = post(server.url, push_payload(sha="c" * 40), headers={"Idempotency-Key": "idem-1"})
    assert replay.json()["status"] == "duplicate"
    assert wait_for(lambda: len(action.calls) == 2)
    assert server.wait_idle()
    assert len(action.calls) == 2
    assert len(deliveries(server)) == 2


def test_wrong_or_missing_token_is_401_and_not_recorded(serve: Callable[..., WebhookServer]) -> None:
    action = Recorder()
    server = serve(action)
    for token in ("wrong-token", "", None, TOKEN[:-1]):
        answer = post(server.url, push_payload(), token=token, uuid=f"uuid-{token}")
        assert answer.status_code == 401
        assert TOKEN not in answer.text
    assert deliveries(server) == []
    assert server.wait_idle()
    assert action.calls == []


@pytest.mark.parametrize(("payload", "reason"), [
    (push_payload(branch="main"), "branch 'main' does not deploy"),
    (push_payload(kind="merge_request"), "is not a push"),
    (push_payload(kind="tag_push"), "is not a push"),
])
def test_other_branches_and_events_get_200_ignored(serve: Callable[..., WebhookServer],
                                                   payload: dict[str, Any], reason: str) -> None:
    action = Recorder()
    server = serve(action)
    answer = post(server.url, payload, uuid="uuid-other")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ignored" and reason in answer.json()["reason"]
    assert server.wait_idle()
    assert action.calls == []
    assert [d["status"] for d in deliveries(server)] == ["ignored"]


def test_malformed_bodies_are_400(serve: Callable[..., WebhookServer]) -> None:
    server = serve(Recorder())
    for body in (b"{not json", b"\xff\xfe", b"[1, 2]", b'"push"', b""):
        answer = post(server.url, body=body)
        assert answer.status_code == 400, body
    assert deliveries(server) == []


def test_oversize_body_is_413_and_not_read(serve: Callable[..., WebhookServer]) -> None:
    server = serve(Recorder())
    # a client announcing 5 MiB: the answer comes before any body byte is sent (nothing more is read)
    with socket.create_connection((address(), server.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Gitlab-Token: " + TOKEN.encode() + b"\r\n"
                     b"Content-Length: " + str(5 * MAX_BODY).encode() + b"\r\n\r\n")
        head = sock.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413")
    # a body one byte over the limit, actually sent
    big = padded_json("push", MAX_BODY + 1)
    assert len(big) == MAX_BODY + 1
    try:
        answer = post(server.url, body=big)
        assert answer.status_code == 413
    except requests.ConnectionError:
        pass  # the server may close before the client finished sending: also refused, also unread
    assert deliveries(server) == []
    # exactly at the limit is fine (read, then ignored as not a push to develop)
    at_limit = padded_json("note", MAX_BODY)
    assert len(at_limit) == MAX_BODY
    assert post(server.url, body=at_limit).json()["status"] == "ignored"


def test_a_chunked_body_over_the_limit_is_413_and_not_recorded(serve: Callable[..., WebhookServer]) -> None:
    """No Content-Length to refuse early: the body is counted as it comes and refused past the limit."""
    server = serve(Recorder())

    def chunks(total: int) -> Iterator[bytes]:
        body = padded_json("push", total)
        for at in range(0, len(body), 64 * 1024):
            yield body[at:at + 64 * 1024]

    try:
        answer = requests.post(server.url, data=chunks(MAX_BODY + 1), timeout=5,
                               headers={"Content-Type": "application/json", "X-Gitlab-Token": TOKEN})
        assert answer.status_code == 413
    except requests.ConnectionError:
        pass  # closed before the client finished sending: refused all the same
    assert deliveries(server) == []
    answer = requests.post(server.url, data=chunks(MAX_BODY), timeout=5,
                           headers={"Content-Type": "application/json", "X-Gitlab-Token": TOKEN})
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"  # read whole, then judged


def test_a_request_head_over_64_kib_is_431_and_closed(serve: Callable[..., WebhookServer]) -> None:
    server = serve(Recorder())
    with socket.create_connection((address(), server.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Gitlab-Token: " + TOKEN.encode() + b"\r\n")
        got = b""
        try:
            for n in range(100):  # 100 headers of 1 KiB each, never the blank line that ends the head
                sock.sendall(f"X-Pad-{n}: ".encode() + b"p" * 1024 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := sock.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
    assert got.startswith(b"HTTP/1.1 431"), got[:80]
    # a head just under the limit is served
    pad = {f"X-Pad-{n}": "p" * 1000 for n in range(60)}
    assert post(server.url, push_payload(), uuid="big-head", headers=pad).json()["status"] == "accepted"
    assert [d["key"] for d in deliveries(server)] == ["big-head"]


def test_a_connection_over_the_limit_is_answered_503_and_the_others_are_served(
        serve: Callable[..., WebhookServer]) -> None:
    server = serve(Recorder(), connection_limit=3)
    idle = [socket.create_connection((address(), server.port), timeout=5) for _ in range(3)]
    try:
        assert wait_for(lambda: post(server.url, push_payload(), uuid="over").status_code == 503)
    finally:
        for sock in idle:
            sock.close()
    assert wait_for(lambda: post(server.url, push_payload(), uuid="under").status_code == 200)
    assert [d["key"] for d in deliveries(server)] == ["under"]


def test_pending_delivery_survives_a_restart_and_runs_exactly_once(
        serve: Callable[..., WebhookServer], tmp_path: Path) -> None:
    db = tmp_path / "restart.sqlite3"
    first = serve(Recorder(), db, start_worker=False)  # accepts, never works: "killed before the worker ran"
    assert post(first.url, push_payload(), uuid="uuid-restart").json()["status"] == "accepted"
    first.stop()
    with sqlite3.connect(db) as conn:  # durable before the 200
        assert conn.execute("SELECT status FROM deliveries WHERE key='uuid-restart'").fetchone() == (PENDING,)

    action = Recorder()
    second = serve(action, db)
    assert wait_for(lambda: len(action.calls) == 1)
    assert post(second.url, push_payload(), uuid="uuid-restart").json()["status"] == "duplicate"
    assert wait_for(lambda: deliveries(second)[0]["status"] == DONE)
    second.stop()

    third_action = Recorder()
    third = serve(third_action, db)
    assert third.wait_idle()
    assert third_action.calls == [] and len(action.calls) == 1
    assert [(d["key"], d["status"], d["attempts"]) for d in deliveries(third)] == [("uuid-restart", DONE, 1)]


def test_failing_action_is_retried_then_dead_and_the_worker_goes_on(
        serve: Callable[..., WebhookServer]) -> None:
    """Issue 16 changes this: a failure is retried up to the limit, then `dead` with the reason."""
    calls: list[str] = []

    class Flaky:
        name = "flaky"

        def __call__(self, delivery: Delivery) -> str:
            calls.append(delivery.key)
            if delivery.key == "bad":
                raise CheckFailed("Jenkins refused the trigger")
            if delivery.key == "boom":
                raise RuntimeError("unexpected")
            return "fine"

    server = serve(Flaky(), attempts=3, coalesce=False)
    for i, key in enumerate(("bad", "boom", "good")):
        assert post(server.url, push_payload(sha="abc"[i] * 40), uuid=key).json()["status"] == "accepted"
    assert wait_for(lambda: len(calls) == 7)
    assert server.wait_idle()
    assert sorted(calls) == ["bad"] * 3 + ["boom"] * 3 + ["good"]
    outcome = {d["key"]: (d["status"], d["outcome"], d["attempts"]) for d in deliveries(server)}
    assert outcome["bad"] == (DEAD, "Jenkins refused the trigger (gave up after 3 attempt(s))", 3)
    assert outcome["boom"][0] == DEAD and "RuntimeError" in outcome["boom"][1]
    assert outcome["good"] == (DONE, "fine", 1)


# ------------------------------------------------------------------ actions


def test_jenkins_action_posts_parameters_with_basic_auth(serve: Callable[..., WebhookServer],
                                                         jenkins: HTTPServer) -> None:
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        return Response("", status=201, headers={"Location": f"{jenkins.url_for('/queue/item/7/')}"})

    jenkins.expect_request("/job/team/job/deploy/buildWithParameters", method="POST").respond_with_handler(
        handler)
    action = JenkinsAction.from_env(jenkins.url_for("/"), "team/deploy", job_token_env="JT", user_env="JU",
                                    api_token_env="JA",
                                    env={"JT": "job-token-123", "JU": "ci-bot", "JA": "api-token-456"})
    server = serve(action)
    assert post(server.url, push_payload(), uuid="uuid-jenkins").json()["status"] == "accepted"
    assert wait_for(lambda: deliveries(server)[0]["status"] == DONE)
    assert len(seen) == 1
    request = seen[0]
    form = parse_qs(request.get_data(as_text=True))
    assert form == {"DEPLOY_TYPE": ["canary-auto"], "COMMIT_SHA": [SHA], "BUILD_ID": [SHA[:12]],
                    "COMMIT_BRANCH": ["develop"], "PS_DELIVERY": ["uuid-jenkins"], "token": ["job-token-123"]}
    assert request.args == {}  # no secret in the URL
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"ci-bot:api-token-456").decode()
    outcome = deliveries(server)[0]["outcome"]
    assert "201" in outcome and "/queue/item/7/" in outcome
    assert "job-token-123" not in outcome and "api-token-456" not in outcome


def test_jenkins_refusal_and_absence_fail_the_delivery(jenkins: HTTPServer) -> None:
    jenkins.expect_request("/job/deploy/buildWithParameters", method="POST").respond_with_data("no",
                                                                                              status=403)
    delivery = Delivery("push", "refs/heads/develop", "develop", SHA, None, None, key="k", received_at=0.0,
                        status=PENDING)
    action = JenkinsAction(url=jenkins.url_for("/"), job="deploy", user="u", api_token="wrong")
    with pytest.raises(CheckFailed, match="refused"):
        action(delivery)
    gone = JenkinsAction(url=f"http://{address()}:{free_port()}", job="deploy")
    from pipeline_steps.errors import Unreachable
    with pytest.raises(Unreachable):
        gone(delivery)


@responses.activate
def test_gitlab_action_triggers_a_pipeline_through_python_gitlab(serve: Callable[..., WebhookServer]) -> None:
    responses.add_passthru(f"http://{address()}")  # the receiver itself is real
    trigger = responses.post("https://gitlab.example.com/api/v4/projects/42/trigger/pipeline",
                             json={"id": 99, "ref": "develop", "web_url": "https://gitlab.example.com/p/-/pipelines/99"},
                             status=201)
    action = GitLabPipelineAction.from_env("https://gitlab.example.com", "42", trigger_token_env="GT",
                                           env={"GT": "trigger-token-789"})
    server = serve(action)
    assert post(server.url, push_payload(), uuid="uuid-gitlab").json()["status"] == "accepted"
    assert wait_for(lambda: deliveries(server)[0]["status"] == DONE)
    assert trigger.call_count == 1
    sent = trigger.calls[0].request
    body = sent.body
    fields = json.loads(body) if body and body[:1] in (b"{", "{") else parse_qs(str(body))
    assert fields["ref"] == "develop" and fields["token"] == "trigger-token-789"
    assert fields["variables"] == {"DEPLOY_TYPE": "canary-auto", "COMMIT_SHA": SHA, "BUILD_ID": SHA[:12],
                                   "COMMIT_BRANCH": "develop", "PS_DELIVERY": "uuid-gitlab"}
    assert "PRIVATE-TOKEN" not in sent.headers
    outcome = deliveries(server)[0]["outcome"]
    assert "pipeline 99" in outcome and "trigger-token-789" not in outcome


@responses.activate
def test_gitlab_action_maps_a_bad_trigger_token_to_check_failed() -> None:
    responses.post("https://gitlab.example.com/api/v4/projects/team%2Fapp/trigger/pipeline",
                   json={"message": "404 Not Found"}, status=404)
    responses.post("https://gitlab.example.com/api/v4/projects/7/trigger/pipeline",
                   json={"message": "401 Unauthorized"}, status=401)
    delivery = Delivery("push", "refs/heads/develop", "develop", SHA, None, None, key="k", received_at=0.0,
                        status=PENDING)
    with pytest.raises(CheckFailed, match="404"):
        GitLabPipelineAction("https://gitlab.example.com", "team/app", "tok-tok")(delivery)
    with pytest.raises(CheckFailed, match="401"):
        GitLabPipelineAction("https://gitlab.example.com", "7", "tok-tok")(delivery)


def test_local_action_runs_ps_in_a_subprocess(serve: Callable[..., WebhookServer], git_repo: Path,
                                             workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    for name in ("CI_COMMIT_SHA", "GIT_COMMIT"):
        monkeypatch.delenv(name, raising=False)
    sha = head_sha(git_repo)
    action = LocalDeployAction(template="--json context", cwd=str(git_repo))
    server = serve(action)
    assert post(server.url, push_payload(sha=sha), uuid="uuid-local").json()["status"] == "accepted"
    assert wait_for(lambda: deliveries(server)[0]["status"] in (DONE, FAILED), timeout=30)
    record = deliveries(server)[0]
    assert record["status"] == DONE, record["outcome"]
    assert sha in record["outcome"]

    outside = workdir.parent / "not-a-checkout"
    outside.mkdir()
    failing = LocalDeployAction(template="context", cwd=str(outside), run_dir=str(workdir.parent / "runs"))
    with pytest.raises(CheckFailed, match="exited 2"):
        failing(Delivery("push", None, "develop", sha, None, None, key="k", received_at=0.0, status=PENDING))


# ------------------------------------------------------------------ the real `ps webhook serve`


def start_ps_serve(ps: PsRun, port: int, db: Path, jenkins_url: str, extra_env: dict[str, str]
                   ) -> subprocess.Popen[str]:
    env = {**ps.env, "WEBHOOK_TOKEN": TOKEN, **extra_env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline_steps", "webhook", "serve", "--host", address(), "--port", str(port),
         "--db", str(db), "--action", "jenkins", "--jenkins-url", jenkins_url, "--jenkins-job", "deploy"],
        env=env, cwd=ps.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    if not wait_port(port, timeout=15):
        proc.kill()
        raise AssertionError(f"ps webhook serve did not listen: {proc.communicate(timeout=5)[0]}")
    return proc


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        return proc.communicate(timeout=10)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=5)[0]


class FakeJenkins:
    """buildWithParameters answering a script of statuses, plus the queue and builds API `find_build` reads.

    A 2xx trigger puts a queue item carrying the form's parameters in the queue (as Jenkins does).
    """

    def __init__(self, server: HTTPServer, job: str = "deploy") -> None:
        self.server = server
        self.script: list[int] = []           # statuses to answer, in order; then `default`
        self.default = 201
        self.triggers: list[dict[str, list[str]]] = []
        self.queue: list[dict[str, Any]] = []
        self.hang_after_queueing: threading.Event | None = None
        self.queue_even_on_errors = False  # Jenkins queued it, yet the answer was an error (a proxy's 502)
        self.lookups = 0
        server.expect_request(f"/job/{job}/buildWithParameters", method="POST").respond_with_handler(
            self._trigger)
        server.expect_request("/queue/api/json", method="GET").respond_with_handler(self._queue)
        server.expect_request(f"/job/{job}/api/json", method="GET").respond_with_json({"builds": []})

    def _trigger(self, request: Request) -> Response:
        form = parse_qs(request.get_data(as_text=True))
        self.triggers.append(form)
        status = self.script.pop(0) if self.script else self.default
        if 200 <= status < 300 or self.queue_even_on_errors:
            item = len(self.queue) + 1
            self.queue.append({"id": item, "url": f"queue/item/{item}/", "actions": [{"parameters": [
                {"name": k, "value": v[0]} for k, v in form.items() if k != "token"]}]})
            if self.hang_after_queueing is not None:
                self.hang_after_queueing.wait(timeout=20)  # queued, but the answer never arrives
        headers = {"Location": "/login?from=%2F"} if 300 <= status < 400 else {}
        return Response("", status=status, headers=headers)

    def _queue(self, request: Request) -> Response:
        self.lookups += 1
        return Response(json.dumps({"items": self.queue}), status=200, content_type="application/json")

    def keys(self) -> list[str]:
        return [t.get("PS_DELIVERY", [""])[0] for t in self.triggers]


def test_ps_webhook_serve_subprocess_end_to_end_and_crash_recovery(ps: PsRun, jenkins: HTTPServer,
                                                                   tmp_path: Path) -> None:
    """kill -9 while the Jenkins call is in flight: after the restart the receiver finds the queued build
    by its PS_DELIVERY and does not trigger again (issue 16 changes the old "runs again")."""
    fake = FakeJenkins(jenkins)
    db, port = tmp_path / "serve.sqlite3", free_port()
    secrets_env = {"JENKINS_USER": "bot", "JENKINS_API_TOKEN": "jenkins-api-secret-1"}
    proc = start_ps_serve(ps, port, db, jenkins.url_for("/"), secrets_env)
    url = f"http://{address()}:{port}"
    try:
        assert post(url, push_payload(), uuid="one").json()["status"] == "accepted"
        assert post(url, push_payload(), uuid="one").json()["status"] == "duplicate"
        assert post(url, push_payload(), token="nope").status_code == 401
        assert wait_for(lambda: deliveries(url)[0]["status"] == DONE)
        assert len(fake.triggers) == 1 and fake.triggers[0]["COMMIT_SHA"] == [SHA]

        # second delivery: Jenkins queues it, then the server is killed before the answer arrives
        fake.hang_after_queueing = threading.Event()
        assert post(url, push_payload(sha="b" * 40), uuid="two").json()["status"] == "accepted"
        assert wait_for(lambda: len(fake.triggers) == 2)
    finally:
        log = stop(proc, signal.SIGKILL)
    assert fake.hang_after_queueing is not None
    fake.hang_after_queueing.set()
    fake.hang_after_queueing = None
    with sqlite3.connect(db) as conn:
        assert dict(conn.execute("SELECT key, status FROM deliveries").fetchall()) == {"one": DONE,
                                                                                       "two": RUNNING}
    proc = start_ps_serve(ps, port, db, jenkins.url_for("/"), secrets_env)
    try:
        assert wait_for(lambda: {d["key"]: d["status"] for d in deliveries(url)} == {"one": DONE,
                                                                                     "two": DONE})
        assert fake.lookups >= 1
        assert fake.keys() == ["one", "two"]  # not triggered a third time
        two = next(d for d in deliveries(url) if d["key"] == "two")
        assert "already has this delivery" in two["outcome"] and "queue/item/2/" in two["outcome"]
        assert requests.get(f"{url}/healthz", timeout=5).json()["status"] == "ok"
        assert requests.get(f"{url}/deliveries", timeout=5).status_code == 401  # behind the token
    finally:
        log += stop(proc)
    assert proc.returncode == 0
    assert "ps webhook stopped" in log and "in flight" in log
    assert TOKEN not in log and "jenkins-api-secret-1" not in log

    listing = ps("--json", "webhook", "deliveries", "--db", str(db))
    assert listing.returncode == 0, listing.stderr
    assert [d["key"] for d in json.loads(listing.stdout)["deliveries"]] == ["two", "one"]


def test_ps_webhook_serve_refuses_to_start_without_a_token(ps: PsRun, tmp_path: Path) -> None:
    done = ps("webhook", "serve", "--port", str(free_port()), "--db", str(tmp_path / "x.sqlite3"))
    assert done.returncode == 2
    assert "WEBHOOK_TOKEN is not set" in done.stderr and "Traceback" not in done.stderr
    bad = ps("webhook", "serve", "--action", "jenkins", env={"WEBHOOK_TOKEN": TOKEN})
    assert bad.returncode == 2 and "--jenkins-job" in bad.stderr


# ------------------------------------------------------------------ issue 16: load, deadlines, hostile input


def test_100_deliveries_at_once_none_reset_each_push_stored_and_run_once(
        serve: Callable[..., WebhookServer]) -> None:
    """50 distinct pushes and a duplicate of each, all sent at once on 100 connections."""
    action = Recorder()
    server = serve(action, coalesce=False)
    shas = [f"{i:040x}" for i in range(1, 51)]
    jobs = [(sha, f"uuid-{sha[-6:]}") for sha in shas] * 2
    barrier = threading.Barrier(len(jobs))
    answers: list[str] = []
    errors: list[str] = []
    health_times: list[float] = []
    lock = threading.Lock()

    def send(sha: str, uuid: str) -> None:
        with requests.Session() as session:
            barrier.wait(timeout=30)
            try:
                r = session.post(server.url, data=json.dumps(push_payload(sha=sha)), timeout=30,
                                 headers={"X-Gitlab-Token": TOKEN, "X-Gitlab-Event-UUID": uuid})
                with lock:
                    answers.append(r.json()["status"])
            except requests.RequestException as exc:
                with lock:
                    errors.append(type(exc).__name__)

    def health() -> None:
        barrier_done.wait(timeout=30)
        for _ in range(10):
            started = time.monotonic()
            assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
            health_times.append(time.monotonic() - started)

    barrier_done = threading.Event()
    threads = [threading.Thread(target=send, args=job) for job in jobs]
    prober = threading.Thread(target=health)
    for t in threads:
        t.start()
    prober.start()
    barrier_done.set()
    for t in [*threads, prober]:
        t.join(timeout=60)
    assert errors == []  # no reset, no refused connection
    assert sorted(answers) == ["accepted"] * 50 + ["duplicate"] * 50
    assert wait_for(lambda: len(action.calls) == 50, timeout=30)
    assert server.wait_idle()
    assert sorted(d.sha for d in action.calls) == shas  # every push acted on exactly once
    rows = deliveries(server)
    assert len(rows) == 50 and len({r["key"] for r in rows}) == 50
    # the clients share this process (and its GIL) with the receiver: the bench measures it apart
    assert len(health_times) == 10 and sorted(health_times)[5] < 0.1 and max(health_times) < 3.0, health_times


def _slow_send(port: int, head: bytes, trickle: bytes, gap: float, limit: float) -> tuple[float, bytes]:
    """Send `head`, then `trickle` one byte per `gap` seconds until the server closes (or `limit`)."""
    started = time.monotonic()
    with socket.create_connection((address(), port), timeout=5) as sock:
        sock.sendall(head)
        got = b""
        for byte in trickle:
            sock.settimeout(gap)  # waiting for the server's close is the pacing
            try:
                chunk = sock.recv(4096)
                if not chunk:
                    return time.monotonic() - started, got
                got += chunk
            except TimeoutError:
                pass
            except ConnectionResetError:
                return time.monotonic() - started, got
            if time.monotonic() - started > limit:
                return time.monotonic() - started, got
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started, got
    return time.monotonic() - started, got


def test_a_trickled_body_or_header_is_cut_at_the_request_deadline(
        serve: Callable[..., WebhookServer]) -> None:
    """One byte per gap keeps an idle timeout happy; the whole-request deadline still cuts it."""
    server = serve(Recorder(), request_deadline=2.0, idle_timeout=60.0)
    body = json.dumps(push_payload()).encode()
    head = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Gitlab-Token: "
            + TOKEN.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    took, answer = _slow_send(server.port, head, body, gap=0.5, limit=15)
    assert 1.5 < took < 6.0 and b"200" not in answer
    took, answer = _slow_send(server.port, b"", head + body, gap=0.5, limit=15)
    assert 1.5 < took < 6.0 and b"200" not in answer
    assert deliveries(server) == []
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_deep_json_is_400_without_a_traceback(serve: Callable[..., WebhookServer],
                                             caplog: pytest.LogCaptureFixture) -> None:
    lines: list[str] = []
    server = serve(Recorder())
    server.log = lines.append
    for depth in (100_000, 401):
        answer = post(server.url, body=b'{"a":' * depth + b"1" + b"}" * depth)
        assert answer.status_code == 400 and "400 levels" in answer.json()["error"]
    ok = b'{"object_kind": "note", "x": ' + b"[" * 398 + b"]" * 398 + b"}"  # 399 deep
    assert post(server.url, body=ok).json()["status"] == "ignored"
    assert not any("Traceback" in line or "RecursionError" in line for line in lines)
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


def test_deliveries_need_the_token(serve: Callable[..., WebhookServer]) -> None:
    server = serve(Recorder())
    assert post(server.url, push_payload(), uuid="u").status_code == 200
    for headers in ({}, {"X-Gitlab-Token": "wrong"}, {"Authorization": "Bearer nope"}):
        answer = requests.get(f"{server.url}/deliveries", headers=headers, timeout=5)
        assert answer.status_code == 401 and "develop" not in answer.text
    bearer = requests.get(f"{server.url}/deliveries", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert bearer.status_code == 200 and bearer.json()["deliveries"][0]["key"] == "u"


# ------------------------------------------------------------------ issue 16: deduplication


def test_uuid_idempotency_key_and_body_hash_all_deduplicate(serve: Callable[..., WebhookServer]) -> None:
    action = Recorder()
    server = serve(action, coalesce=False)
    # a project hook and a group hook: one event UUID, two Idempotency-Keys
    first = post(server.url, push_payload(sha="1" * 40), uuid="evt-1", headers={"Idempotency-Key": "project"})
    second = post(server.url, push_payload(sha="1" * 40), uuid="evt-1", headers={"Idempotency-Key": "group"})
    assert (first.json()["status"], second.json()) == ("accepted", {"status": "duplicate",
                                                                     "delivery": "project"})
    # a body first with a key, then without one
    body = json.dumps(push_payload(sha="2" * 40)).encode()
    assert post(server.url, body=body, headers={"Idempotency-Key": "k2"}).json()["status"] == "accepted"
    assert post(server.url, body=body).json() == {"status": "duplicate", "delivery": "k2"}
    # long keys: hashed, never cut (two keys sharing their first 200 characters are two deliveries)
    long_a, long_b = "x" * 200 + "a", "x" * 200 + "b"
    a = post(server.url, push_payload(sha="3" * 40), headers={"Idempotency-Key": long_a}).json()
    b = post(server.url, push_payload(sha="4" * 40), headers={"Idempotency-Key": long_b}).json()
    assert a["status"] == b["status"] == "accepted" and a["delivery"] != b["delivery"]
    assert a["delivery"].startswith("sha256:") and len(a["delivery"]) == len("sha256:") + 64
    again = post(server.url, push_payload(sha="3" * 40), headers={"Idempotency-Key": long_a}).json()
    assert again == {"status": "duplicate", "delivery": a["delivery"]}
    assert wait_for(lambda: len(action.calls) == 4)
    assert server.wait_idle()
    assert sorted(d.sha for d in action.calls) == [c * 40 for c in "1234"]


def merge_payload(sha: str = SHA, target: str = "develop", action: str = "merge") -> dict[str, Any]:
    return {"object_kind": "merge_request", "event_type": "merge_request", "user": {"username": "dev"},
            "project": {"id": 42, "path_with_namespace": "team/app"},
            "object_attributes": {"action": action, "state": "merged", "target_branch": target,
                                  "source_branch": "feature", "merge_commit_sha": sha,
                                  "last_commit": {"id": "e" * 40}}}


@pytest.mark.parametrize("merge_first", [True, False])
def test_a_merge_into_develop_and_its_merge_commit_push_are_one_trigger(
        serve: Callable[..., WebhookServer], merge_first: bool) -> None:
    action = Recorder()
    server = serve(action)
    sends = [lambda: post(server.url, merge_payload(), uuid="mr-evt",
                          headers={"X-Gitlab-Event": "Merge Request Hook"}),
             lambda: post(server.url, push_payload(), uuid="push-evt")]
    if not merge_first:
        sends.reverse()
    first, second = (send().json() for send in sends)
    assert first["status"] == "accepted"
    assert second == {"status": "duplicate", "delivery": first["delivery"]}
    assert wait_for(lambda: len(action.calls) == 1)
    assert server.wait_idle()
    assert [(d.branch, d.sha) for d in action.calls] == [("develop", SHA)]
    # other merge events do not deploy
    for payload in (merge_payload(sha="d" * 40, action="open"), merge_payload(sha="d" * 40, target="main")):
        assert post(server.url, payload).json()["status"] == "ignored"
    assert server.wait_idle()
    assert len(action.calls) == 1


def test_pushes_queued_behind_a_running_deploy_collapse_to_the_newest(
        serve: Callable[..., WebhookServer]) -> None:
    action = Recorder(hold=True)
    server = serve(action)
    assert post(server.url, push_payload(sha="1" * 40), uuid="p1").json()["status"] == "accepted"
    assert action.started.wait(timeout=10)
    for i in (2, 3, 4):
        assert post(server.url, push_payload(sha=str(i) * 40), uuid=f"p{i}").json()["status"] == "accepted"
    action.release.set()
    assert wait_for(lambda: len(action.calls) == 2)
    assert server.wait_idle()
    assert [d.sha for d in action.calls] == ["1" * 40, "4" * 40]
    status = {d["key"]: d["status"] for d in deliveries(server)}
    assert status == {"p1": DONE, "p2": SUPERSEDED, "p3": SUPERSEDED, "p4": DONE}
    assert "superseded by p4" in next(d["outcome"] for d in deliveries(server) if d["key"] == "p2")


def test_without_coalescing_queued_pushes_run_oldest_first(serve: Callable[..., WebhookServer]) -> None:
    action = Recorder(hold=True)
    server = serve(action, coalesce=False)
    assert post(server.url, push_payload(sha="1" * 40), uuid="p1").json()["status"] == "accepted"
    assert action.started.wait(timeout=10)
    for i in (2, 3):
        assert post(server.url, push_payload(sha=str(i) * 40), uuid=f"p{i}").json()["status"] == "accepted"
    action.release.set()
    assert wait_for(lambda: len(action.calls) == 3)
    assert [d.sha for d in action.calls] == [c * 40 for c in "123"]


# ------------------------------------------------------------------ issue 16: Jenkins failures, retry, resume


def jenkins_action(jenkins: HTTPServer, url: str | None = None) -> JenkinsAction:
    return JenkinsAction(url=url or jenkins.url_for("/"), job="deploy", user="bot", api_token="api-token-1",
                         timeout=5)


@pytest.mark.parametrize(("status", "reason"), [
    (500, "answered 500"), (302, "redirect to /login"), (401, "refused"), (403, "refused"),
    (None, "unreachable"),
])
def test_jenkins_failures_are_retried_with_backoff_then_dead_and_retry_by_hand_runs_it(
        serve: Callable[..., WebhookServer], jenkins: HTTPServer, ps: PsRun, tmp_path: Path,
        status: int | None, reason: str) -> None:
    fake = FakeJenkins(jenkins)
    fake.default = status or 500
    url = f"http://{address()}:{free_port()}" if status is None else None  # None: Jenkins is down
    db = tmp_path / "retry.sqlite3"
    server = serve(jenkins_action(jenkins, url), db, attempts=3)
    assert post(server.url, push_payload(), uuid="d1").json()["status"] == "accepted"
    assert wait_for(lambda: deliveries(server)[0]["status"] == DEAD, timeout=30)
    dead = deliveries(server)[0]
    assert dead["attempts"] == 3 and reason in dead["outcome"] and "gave up after 3" in dead["outcome"]
    assert fake.keys() == ([] if status is None else ["d1"] * 3)  # the same key each time
    assert "api-token-1" not in dead["outcome"]

    listing = ps("webhook", "deliveries", "--db", str(db))
    assert listing.returncode == 0 and "dead" in listing.stdout and reason in listing.stdout
    if status is None:
        return
    fake.default = 201  # Jenkins fixed: re-trigger by hand while the receiver runs
    done = ps("webhook", "retry", "d1", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: deliveries(server)[0]["status"] == DONE, timeout=30)
    assert fake.keys() == ["d1"] * 4
    again = ps("webhook", "retry", "d1", "--db", str(db))
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and again.stderr.startswith("ps: ")
    unknown = ps("webhook", "retry", "nope", "--db", str(db))
    assert unknown.returncode == 2 and "no delivery" in unknown.stderr


def test_a_repeat_asks_jenkins_first_and_triggers_only_what_it_lacks(
        serve: Callable[..., WebhookServer], jenkins: HTTPServer) -> None:
    fake = FakeJenkins(jenkins)
    fake.script = [500]  # first attempt refused: nothing queued; the repeat finds nothing and triggers
    server = serve(jenkins_action(jenkins))
    assert post(server.url, push_payload(), uuid="r1").json()["status"] == "accepted"
    assert wait_for(lambda: deliveries(server)[0]["status"] == DONE)
    assert fake.keys() == ["r1", "r1"] and fake.lookups == 1
    assert deliveries(server)[0]["attempts"] == 2


def test_jenkins_3xx_is_not_a_trigger(jenkins: HTTPServer) -> None:
    FakeJenkins(jenkins).default = 302
    delivery = Delivery("push", "refs/heads/develop", "develop", SHA, None, None, key="k", received_at=0.0,
                        status=PENDING)
    with pytest.raises(CheckFailed, match="302"):
        jenkins_action(jenkins)(delivery)


@responses.activate
def test_gitlab_repeat_with_an_api_token_finds_the_pipeline_by_its_variable() -> None:
    base = "https://gitlab.example.com/api/v4/projects/42"
    responses.get(f"{base}/pipelines", json=[{"id": 7, "ref": "develop", "web_url": "https://g/p/7"},
                                             {"id": 8, "ref": "develop", "web_url": "https://g/p/8"}])
    responses.get(f"{base}/pipelines/7/variables", json=[{"key": "PS_DELIVERY", "value": "other"}])
    responses.get(f"{base}/pipelines/8/variables", json=[{"key": "PS_DELIVERY", "value": "k-1"}])
    action = GitLabPipelineAction("https://gitlab.example.com", "42", "trig", api_token="api-tok")
    delivery = Delivery("push", "refs/heads/develop", "develop", SHA, None, None, key="k-1", received_at=0.0,
                        status=RUNNING, started_at=time.time())
    found = action.resume(delivery)
    assert found is not None and "pipeline 8" in found
    assert action.resume(Delivery(**{**delivery.as_dict(), "key": "k-2"})) is None
    assert GitLabPipelineAction("https://gitlab.example.com", "42", "trig").resume(delivery) is None


# ------------------------------------------------------------------ issue 16: the real CLI


def test_a_short_webhook_token_is_refused_at_start(ps: PsRun, tmp_path: Path) -> None:
    done = ps("webhook", "serve", "--port", str(free_port()), "--db", str(tmp_path / "x.sqlite3"),
              env={"WEBHOOK_TOKEN": "abc"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("ps: ") and "at least 16" in done.stderr
    assert "abc" not in done.stderr.replace("abc)", "")  # the secret itself is masked


def runners(run_dir: Path) -> list[int]:
    """Pids of local-action runners whose files are under `run_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"pipeline_steps.webhook.runner" in cmdline and str(run_dir).encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_local_action_survives_a_kill_9_and_is_adopted_never_run_twice(ps: PsRun, tmp_path: Path,
                                                                     httpserver: HTTPServer) -> None:
    """The deploy (here a health-gate that waits for a local endpoint) runs in its own process group;
    after kill -9 of the receiver and a restart, the new receiver waits for it instead of starting again."""
    healthy = threading.Event()
    hits: list[str] = []

    def health(request: Request) -> Response:
        hits.append(request.path)
        return Response("ok" if healthy.is_set() else "starting", status=200 if healthy.is_set() else 503)

    httpserver.expect_request("/health").respond_with_handler(health)
    db, port = tmp_path / "local.sqlite3", free_port()
    command = f"health-gate --url {httpserver.url_for('/health')} --interval 100ms --retries 600 --timeout 1s"
    env = {**ps.env, "WEBHOOK_TOKEN": TOKEN}
    argv = [sys.executable, "-m", "pipeline_steps", "webhook", "serve", "--host", address(), "--port",
            str(port), "--db", str(db), "--action", "local", "--local-command", command]
    url = f"http://{address()}:{port}"
    run_dir = db.parent / "runs"

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, env=env, cwd=ps.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        assert wait_port(port, timeout=15), proc
        return proc

    proc = start()
    try:
        assert post(url, push_payload(), uuid="L1").json()["status"] == "accepted"
        assert wait_for(lambda: len(hits) >= 2 and deliveries(url)[0]["pid"] is not None, timeout=30)
        pid = deliveries(url)[0]["pid"]
        assert runners(run_dir) == [pid] and os.getpgid(pid) == pid  # its own process group
    finally:
        stop(proc, signal.SIGKILL)
    assert runners(run_dir) == [pid]  # the deploy outlived the receiver
    proc = start()
    try:
        seen = len(hits)
        assert wait_for(lambda: len(hits) > seen + 2)  # the adopted deploy still probes...
        assert runners(run_dir) == [pid]  # ...and no second one was started
        assert deliveries(url)[0]["status"] == RUNNING
        healthy.set()
        assert wait_for(lambda: deliveries(url)[0]["status"] == DONE, timeout=30)
        record = deliveries(url)[0]
        assert "adopted after a restart" in record["outcome"] and record["attempts"] == 1
        assert runners(run_dir) == []
    finally:
        log = stop(proc)
    assert "in flight" in log


@pytest.mark.slow
def test_ps_webhook_serve_cuts_a_body_sent_one_byte_every_5_s(ps: PsRun, jenkins: HTTPServer,
                                                              tmp_path: Path) -> None:
    """The real CLI with its defaults: the 10 s whole-request deadline cuts a 1 byte / 5 s body."""
    FakeJenkins(jenkins)
    db, port = tmp_path / "slow.sqlite3", free_port()
    proc = start_ps_serve(ps, port, db, jenkins.url_for("/"), {})
    try:
        body = json.dumps(push_payload()).encode()
        head = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Gitlab-Token: "
                + TOKEN.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        took, answer = _slow_send(port, head, body, gap=5.0, limit=30)
        assert 9.0 < took < 20.0 and b"200" not in answer
        assert deliveries(f"http://{address()}:{port}") == []
    finally:
        stop(proc)


def test_a_delivery_waiting_for_its_retry_across_a_restart_asks_jenkins_first(
        serve: Callable[..., WebhookServer], jenkins: HTTPServer, tmp_path: Path) -> None:
    """The first attempt got a 502 although Jenkins had queued the build; the receiver stops during the
    backoff; the next receiver finds the build by PS_DELIVERY and does not trigger again."""
    fake = FakeJenkins(jenkins)
    fake.script, fake.queue_even_on_errors = [502], True
    db = tmp_path / "backoff.sqlite3"
    first = serve(jenkins_action(jenkins), db, retry_wait=60.0, retry_max_wait=60.0)
    assert post(first.url, push_payload(), uuid="b1").json()["status"] == "accepted"
    assert wait_for(lambda: deliveries(first)[0]["status"] == "retry")
    assert "502" in deliveries(first)[0]["outcome"]
    first.stop()
    second = serve(jenkins_action(jenkins), db)
    assert wait_for(lambda: deliveries(second)[0]["status"] == DONE)
    assert fake.keys() == ["b1"] and fake.lookups == 1
    assert "already has this delivery" in deliveries(second)[0]["outcome"]
