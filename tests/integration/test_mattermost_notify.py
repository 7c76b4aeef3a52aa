"""`ps mattermost-notify` against a real local HTTP endpoint that checks Mattermost's webhook format."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pipeline_steps.operations.mattermost_notify import STATUSES
from testbed.ports import address, free_port
from testbed.raw_http import RawServer, read_request
from testbed.wait import stall

SECRET_PATH = "/hooks/k7q2x9w4secretkeyz1"
GITLAB = {
    "CI_COMMIT_SHA": "5a3e1e0000011111222233334444555566667777",
    "CI_COMMIT_BRANCH": "main",
    "CI_COMMIT_AUTHOR": "Dev <dev@example.com>",
    "CI_COMMIT_TITLE": "fix the cart",
    "CI_PIPELINE_URL": "https://gitlab.example.com/team/shop/-/pipelines/42",
    "CI_JOB_URL": "https://gitlab.example.com/team/shop/-/jobs/7",
    "CI_PROJECT_URL": "https://gitlab.example.com/team/shop",
}
FAST = ["--backoff", "10ms", "--timeout", "2s"]


def check_format(payload: Any) -> None:
    """What Mattermost accepts from an incoming webhook (the parts we use)."""
    assert isinstance(payload, dict)
    assert set(payload) <= {"text", "attachments", "channel", "username", "icon_url", "props"}
    assert "text" in payload or "attachments" in payload
    assert len(payload.get("text", "")) < 16383
    for att in payload.get("attachments", []):
        assert isinstance(att["fallback"], str) and att["fallback"]
        assert set(att) <= {"fallback", "color", "pretext", "title", "title_link", "fields", "footer", "text"}
        assert att["color"].startswith("#")
        for f in att.get("fields", []):
            assert set(f) == {"title", "value", "short"} and isinstance(f["short"], bool)


def mattermost(received: list[dict[str, Any]], answers: list[tuple[int, str]] | None = None) -> Any:
    """A handler checking the request and the payload, answering from `answers` (then 200 ok)."""

    def handle(request: Request) -> Response:
        assert request.method == "POST"
        assert request.headers["Content-Type"].startswith("application/json")
        payload = json.loads(request.get_data())
        check_format(payload)
        received.append(payload)
        status, body = answers.pop(0) if answers else (200, "ok")
        return Response(body, status=status, content_type="text/plain")

    return handle


@pytest.fixture
def hook(httpserver: HTTPServer) -> tuple[HTTPServer, dict[str, str]]:
    return httpserver, {"MATTERMOST_WEBHOOK_URL": httpserver.url_for(SECRET_PATH), **GITLAB}


def assert_no_secret(done: Any) -> None:
    for stream in (done.stdout, done.stderr):
        assert SECRET_PATH not in stream and "k7q2x9w4secretkeyz1" not in stream


@pytest.mark.parametrize("status", STATUSES)
def test_every_status_is_delivered(ps: Any, hook: Any, status: str, project: Any) -> None:
    server, env = hook
    project({"app": "shop", "registry": "127.0.0.1:5000", "timezone": "UTC",
             "services": {"web": {"slots": {"stable": 18081, "canary": 18082}}},
             "notify": {"mattermost": {"channel": "deploys", "username": "ci-bot"}}})
    received: list[dict[str, Any]] = []
    server.expect_request(SECRET_PATH, method="POST").respond_with_handler(mattermost(received))
    done = ps("--json", "mattermost-notify", "--status", status, "--deploy-type", "canary", "--weight", "40",
              "--services", "web", "--duration", "95s", "--rollback-info", "canary removed",
              "--log-url", "https://ci.example.com/log/7", *FAST, env=env)
    assert done.returncode == 0, done.stderr
    assert len(received) == 1
    payload = received[0]
    assert payload["channel"] == "deploys" and payload["username"] == "ci-bot"
    assert "canary 40% / stable 60%" in payload["text"] and "`5a3e1e000001`" in payload["text"]
    att = payload["attachments"][0]
    fields = {f["title"]: f["value"] for f in att["fields"]}
    assert fields["App / services"] == "shop: web"
    assert "/-/commit/5a3e1e0000011111222233334444555566667777" in fields["BUILD_ID"]
    assert fields["Author"] == "Dev <dev@example.com>" and fields["Duration"] == "1m35s"
    assert att["footer"].endswith("UTC")
    result = json.loads(done.stdout)
    assert result["delivered"] is True and result["attempts"] == 1 and result["http_status"] == 200
    assert_no_secret(done)


def test_500_then_200_is_retried_and_delivered_once(ps: Any, hook: Any) -> None:
    server, env = hook
    received: list[dict[str, Any]] = []
    server.expect_request(SECRET_PATH).respond_with_handler(
        mattermost(received, [(500, "boom"), (503, "busy")]))
    done = ps("--json", "mattermost-notify", "--status", "success", *FAST, env=env)
    assert done.returncode == 0, done.stderr
    assert len(received) == 3 and received[0] == received[2]
    result = json.loads(done.stdout)
    assert result["delivered"] is True and result["attempts"] == 3
    assert_no_secret(done)


def test_400_is_not_retried(ps: Any, hook: Any) -> None:
    server, env = hook
    received: list[dict[str, Any]] = []
    answers = [(400, "bad payload"), (400, "bad payload")]
    server.expect_request(SECRET_PATH).respond_with_handler(mattermost(received, answers))
    done = ps("--json", "mattermost-notify", "--status", "failure", *FAST, env=env)
    assert done.returncode == 0  # chat never fails a deploy
    assert len(received) == 1
    assert "warning: notification not delivered (HTTP 400: bad payload" in done.stderr
    assert json.loads(done.stdout)["delivered"] is False
    received.clear()
    done = ps("--json", "mattermost-notify", "--status", "failure", "--fail-on-error", *FAST, env=env)
    assert done.returncode == 1 and len(received) == 1
    record = json.loads(done.stdout)
    assert record["ok"] is False and record["exit_code"] == 1
    assert record["http_status"] == 400 and record["delivered"] is False
    assert_no_secret(done)


def test_200_without_ok_body_is_a_failure(ps: Any, hook: Any) -> None:
    server, env = hook
    received: list[dict[str, Any]] = []
    server.expect_request(SECRET_PATH).respond_with_handler(mattermost(received, [(200, "<html>login")]))
    done = ps("mattermost-notify", "--status", "success", "--fail-on-error", *FAST, env=env)
    assert done.returncode == 1 and len(received) == 1 and "want 200 'ok'" in done.stderr


def test_slow_endpoint_times_out_and_is_not_posted_twice(ps: Any, hook: Any) -> None:
    """The post reached Mattermost, which may yet make it: sending it again could post it twice."""
    server, env = hook
    received: list[dict[str, Any]] = []
    answer = mattermost(received)

    def slow(request: Request) -> Response:
        stall(0.6)  # slower than --timeout 200ms on purpose
        return answer(request)

    server.expect_request(SECRET_PATH).respond_with_handler(slow)
    done = ps("--json", "mattermost-notify", "--status", "started", "--timeout", "200ms", "--attempts", "3",
              "--backoff", "10ms", env=env)
    assert done.returncode == 0
    assert "no answer within 0.2s; not sent again" in done.stderr
    assert json.loads(done.stdout)["attempts"] == 1
    assert_no_secret(done)
    # The stub answers one request at a time, in order: once a later request is answered, any second post
    # ps made has been handled too.
    server.expect_request("/after").respond_with_data("here")
    assert requests.get(server.url_for("/after"), timeout=30).text == "here"
    assert len(received) == 1


def test_a_connection_closed_after_the_post_is_not_posted_twice(ps: Any) -> None:
    """The post was sent whole before the connection closed: Mattermost may have made it. The endpoint
    reads each whole post and closes without an answer (a proxy or Mattermost dying mid-request)."""
    posts: list[dict[str, Any]] = []

    def read_and_close(conn: socket.socket) -> None:
        got = read_request(conn)
        if got is not None:
            posts.append(json.loads(got[1]))

    hook = RawServer(read_and_close)
    try:
        done = ps("--json", "mattermost-notify", "--status", "started", "--attempts", "3", *FAST,
                  env={"MATTERMOST_WEBHOOK_URL": f"http://{address()}:{hook.port}{SECRET_PATH}"})
    finally:
        hook.stop()
    assert done.returncode == 0
    assert "connection closed without an answer; not sent again" in done.stderr
    assert json.loads(done.stdout)["attempts"] == 1
    assert len(posts) == 1  # read whole each time: a second post would have been counted
    check_format(posts[0])
    assert_no_secret(done)


def test_unreachable_endpoint(ps: Any) -> None:
    env = {"MATTERMOST_WEBHOOK_URL": f"http://{address()}:{free_port()}{SECRET_PATH}"}
    done = ps("mattermost-notify", "--status", "success", "--fail-on-error", *FAST, env=env)
    assert done.returncode == 1 and "connection refused" in done.stderr
    assert_no_secret(done)
    assert "Traceback" not in done.stderr


def test_no_url_configured(ps: Any) -> None:
    done = ps("mattermost-notify", "--status", "success")
    assert done.returncode == 0
    assert "no webhook URL: set $MATTERMOST_WEBHOOK_URL" in done.stderr
    done = ps("mattermost-notify", "--status", "success", "--fail-on-error")
    assert done.returncode == 2 and "no webhook URL: set $MATTERMOST_WEBHOOK_URL" in done.stderr


def test_webhook_env_name_from_config(ps: Any, project: Any, httpserver: HTTPServer) -> None:
    project({"app": "shop", "registry": "127.0.0.1:5000",
             "services": {"web": {"slots": {"stable": 18081, "canary": 18082}}},
             "notify": {"mattermost": {"webhook_env": "TEAM_HOOK"}}})
    received: list[dict[str, Any]] = []
    httpserver.expect_request(SECRET_PATH).respond_with_handler(mattermost(received))
    done = ps("mattermost-notify", "--status", "success", "--fail-on-error", "--timeout", "30s",
              env={"TEAM_HOOK": httpserver.url_for(SECRET_PATH)})
    assert done.returncode == 0, done.stderr
    assert len(received) == 1 and "**shop**" in received[0]["text"]
    done = ps("mattermost-notify", "--status", "success", "--fail-on-error")
    assert done.returncode == 2 and "$TEAM_HOOK" in done.stderr


def test_dry_run_prints_the_payload_without_the_url(ps: Any, hook: Any) -> None:
    server, env = hook
    done = ps("mattermost-notify", "--status", "rolled-back", "--app", "shop", "--dry-run",
              "--rollback-info", "stable 100%", env=env)
    assert done.returncode == 0
    assert not server.log  # nothing sent
    assert '"fallback"' in done.stdout and "stable 100%" in done.stdout
    assert_no_secret(done)
    done = ps("--dry-run", "--json", "mattermost-notify", "--status", "started", env=env)
    assert json.loads(done.stdout.splitlines()[-1])["payload"]["attachments"][0]["color"] == "#1E88E5"
    assert_no_secret(done)


def test_secret_in_a_message_is_masked(ps: Any, hook: Any) -> None:
    server, env = hook
    received: list[dict[str, Any]] = []
    server.expect_request(SECRET_PATH).respond_with_handler(mattermost(received, [(404, SECRET_PATH)]))
    done = ps("-v", "--json", "mattermost-notify", "--status", "success", *FAST, env=env)
    assert done.returncode == 0 and len(received) == 1
    assert_no_secret(done)


def test_the_log_link_defaults_to_the_ci_job(ps: Any, hook: Any) -> None:
    server, env = hook  # GitLab CI variables, CI_JOB_URL among them
    received: list[dict[str, Any]] = []
    server.expect_request(SECRET_PATH, method="POST").respond_with_handler(mattermost(received))
    done = ps("mattermost-notify", "--status", "rolled-back", "--failed-at", "canary 40 %", *FAST, env=env)
    assert done.returncode == 0, done.stderr
    fields = {f["title"]: f["value"] for f in received[0]["attachments"][0]["fields"]}
    assert fields["Log"] == f"[open the log]({GITLAB['CI_JOB_URL']})"
    assert fields["Failed at"] == "canary 40 %"
    assert "not given" not in json.dumps(received[0])
