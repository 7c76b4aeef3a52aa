"""`ps webhook serve --workers 2`: two receiving processes on one port, one acting process (prefork.py).

The real `ps` as a subprocess; Jenkins is test_webhook's FakeJenkins on pytest-httpserver. The log goes to
a file so a test can read which process is which while the receiver runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from testbed.ports import address, free_port, wait_port
from tests.integration import test_webhook as wh

TOKEN = wh.TOKEN


@pytest.fixture
def jenkins() -> Iterator[HTTPServer]:
    server = HTTPServer(host=address(), port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


class Receiver:
    """A `ps webhook serve --workers N` subprocess in a process group (session) of its own."""

    def __init__(self, ps: wh.PsRun, argv: list[str], log: Path, port: int) -> None:
        self.port, self.log_path = port, log
        self.url = f"http://{address()}:{port}"
        self.begin = log.stat().st_size if log.exists() else 0
        self.out = open(log, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline_steps", *argv],
                                     env={**ps.env, "WEBHOOK_TOKEN": TOKEN}, cwd=ps.cwd, stdout=self.out,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        # the supervisor listens before it forks: wait for its children too
        if not (wait_port(port, timeout=20) and wh.wait_for(
                lambda: len(self.started("receiver")) >= 2 and len(self.started("actor")) >= 1, timeout=20)):
            self.kill_group()
            raise AssertionError(f"ps webhook serve did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def children(self) -> list[int]:
        """The supervisor's children (the receivers and the actor)."""
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def started(self, role: str) -> list[int]:
        """Pids of the `role` processes the supervisor said it started (the newest last), since this
        receiver started (the log file may hold an earlier one's lines)."""
        return [int(p) for p in re.findall(rf"{role} (\d+) started", self.log()[self.begin:])]

    def kill_group(self) -> None:
        """kill -9 of the supervisor and every child at once (the local deploy has a session of its own)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        assert wh.wait_for(lambda: not _group_alive(self.proc.pid))
        self.out.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise
        self.out.close()
        return code


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def jenkins_argv(port: int, db: Path, jenkins: HTTPServer, *extra: str) -> list[str]:
    return ["webhook", "serve", "--host", address(), "--port", str(port), "--db", str(db), "--action",
            "jenkins", "--jenkins-url", jenkins.url_for("/"), "--jenkins-job", "deploy", "--workers", "2",
            *extra]


def send_at_once(url: str, jobs: list[tuple[str, str]], retry_errors: bool = False
                 ) -> tuple[list[str], list[str]]:
    """Each (sha, uuid) pushed on its own connection, all at the same moment; (answers, errors). With
    `retry_errors`, a connection that failed is sent again (as GitLab does) until it gets an answer."""
    barrier = threading.Barrier(len(jobs))
    answers: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def send(sha: str, uuid: str) -> None:
        barrier.wait(timeout=30)
        for _ in range(20):
            try:
                r = requests.post(url, data=json.dumps(wh.push_payload(sha=sha)), timeout=30,
                                  headers={"X-Gitlab-Token": TOKEN, "X-Gitlab-Event-UUID": uuid,
                                           "Connection": "close"})
                with lock:
                    answers.append(r.json()["status"] if r.status_code == 200 else str(r.status_code))
                return
            except requests.RequestException as exc:
                with lock:
                    errors.append(type(exc).__name__)
                if not retry_errors:
                    return

    threads = [threading.Thread(target=send, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    return answers, errors


def test_two_receivers_take_100_at_once_none_reset_each_acted_on_exactly_once(
        ps: wh.PsRun, jenkins: HTTPServer, tmp_path: Path) -> None:
    """50 distinct pushes and a duplicate of each, all at once, shared by two receiving processes."""
    fake = wh.FakeJenkins(jenkins)
    port, db = free_port(), tmp_path / "w.sqlite3"
    receiver = Receiver(ps, jenkins_argv(port, db, jenkins, "--no-coalesce"), tmp_path / "log", port)
    try:
        assert len(receiver.started("receiver")) == 2 and len(receiver.started("actor")) == 1
        assert sorted(receiver.children()) == sorted(receiver.started("receiver") + receiver.started("actor"))
        shas = [f"{i:040x}" for i in range(1, 51)]
        answers, errors = send_at_once(receiver.url, [(sha, f"uuid-{sha[-6:]}") for sha in shas] * 2)
        assert errors == []  # no reset, no refused connection
        assert sorted(answers) == ["accepted"] * 50 + ["duplicate"] * 50
        assert wh.wait_for(lambda: len(fake.triggers) >= 50 and all(
            d["status"] == wh.DONE for d in wh.deliveries(receiver.url)), timeout=60)
        assert sorted(fake.keys()) == sorted(f"uuid-{sha[-6:]}" for sha in shas)  # once each, never twice
        assert requests.get(f"{receiver.url}/healthz", timeout=5).json() == {
            "status": "ok", "pending": 0, "action": "jenkins"}
        assert requests.get(f"{receiver.url}/deliveries", timeout=5).status_code == 401
        # both receiving processes took part (each prefixes its lines with its role and pid)
        accepted_by = set(re.findall(r"\[receiver (\d+)\] delivery uuid-\w+: accepted", receiver.log()))
        assert accepted_by == {str(pid) for pid in receiver.started("receiver")}, accepted_by
    finally:
        code = receiver.stop()
    assert code == 0
    assert "ps webhook stopped" in receiver.log()
    assert wh.wait_for(lambda: not _group_alive(receiver.proc.pid))  # every child ended with it


def test_kill_9_of_the_whole_group_mid_trigger_then_restart_never_triggers_twice(
        ps: wh.PsRun, jenkins: HTTPServer, tmp_path: Path) -> None:
    """Jenkins queued the build but its answer never came; every process of the receiver is killed; the
    restarted one finds the build by PS_DELIVERY and does not trigger again."""
    fake = wh.FakeJenkins(jenkins)
    port, db = free_port(), tmp_path / "k.sqlite3"
    receiver = Receiver(ps, jenkins_argv(port, db, jenkins), tmp_path / "log", port)
    try:
        assert wh.post(receiver.url, wh.push_payload(), uuid="one").json()["status"] == "accepted"
        assert wh.wait_for(lambda: wh.deliveries(receiver.url)[0]["status"] == wh.DONE)
        fake.hang_after_queueing = threading.Event()
        assert wh.post(receiver.url, wh.push_payload(sha="b" * 40), uuid="two").json()["status"] == "accepted"
        assert wh.wait_for(lambda: len(fake.triggers) == 2)
    finally:
        receiver.kill_group()
    assert fake.hang_after_queueing is not None
    fake.hang_after_queueing.set()
    fake.hang_after_queueing = None
    again = Receiver(ps, jenkins_argv(port, db, jenkins), tmp_path / "log", port)
    try:
        assert wh.wait_for(lambda: {d["key"]: d["status"] for d in wh.deliveries(again.url)} == {
            "one": wh.DONE, "two": wh.DONE})
        assert fake.keys() == ["one", "two"]  # not triggered a third time
        two = next(d for d in wh.deliveries(again.url) if d["key"] == "two")
        assert "already has this delivery" in two["outcome"]
    finally:
        assert again.stop() == 0
    assert "in flight" in again.log()


def test_local_deploy_outlives_a_kill_9_of_the_whole_group_and_is_adopted(
        ps: wh.PsRun, tmp_path: Path, httpserver: HTTPServer) -> None:
    """The local deploy (a health-gate waiting on an endpoint) runs on in its own process group; the
    restarted receiver's actor waits for it instead of starting a second one."""
    healthy = threading.Event()
    hits: list[str] = []

    def health(request: Request) -> Response:
        hits.append(request.path)
        return Response("ok" if healthy.is_set() else "starting", status=200 if healthy.is_set() else 503)

    httpserver.expect_request("/health").respond_with_handler(health)
    port, db = free_port(), tmp_path / "local.sqlite3"
    command = f"health-gate --url {httpserver.url_for('/health')} --interval 100ms --retries 600 --timeout 1s"
    argv = ["webhook", "serve", "--host", address(), "--port", str(port), "--db", str(db), "--action",
            "local", "--local-command", command, "--workers", "2"]
    run_dir = db.parent / "runs"
    receiver = Receiver(ps, argv, tmp_path / "log", port)
    try:
        assert wh.post(receiver.url, wh.push_payload(), uuid="L1").json()["status"] == "accepted"
        assert wh.wait_for(lambda: len(hits) >= 2 and wh.deliveries(receiver.url)[0]["pid"] is not None,
                           timeout=30)
        pid = wh.deliveries(receiver.url)[0]["pid"]
        assert wh.runners(run_dir) == [pid] and os.getpgid(pid) == pid
    finally:
        receiver.kill_group()
    assert wh.runners(run_dir) == [pid]  # the deploy outlived every receiver process
    again = Receiver(ps, argv, tmp_path / "log", port)
    try:
        seen = len(hits)
        assert wh.wait_for(lambda: len(hits) > seen + 2)  # the adopted deploy still probes...
        assert wh.runners(run_dir) == [pid]  # ...and no second one was started
        assert wh.deliveries(again.url)[0]["status"] == wh.RUNNING
        healthy.set()
        assert wh.wait_for(lambda: wh.deliveries(again.url)[0]["status"] == wh.DONE, timeout=30)
        record = wh.deliveries(again.url)[0]
        assert "adopted after a restart" in record["outcome"] and record["attempts"] == 1
        assert wh.runners(run_dir) == []
    finally:
        assert again.stop() == 0


def test_a_receiver_killed_alone_is_replaced_and_no_delivery_that_got_a_200_is_lost(
        ps: wh.PsRun, jenkins: HTTPServer, tmp_path: Path) -> None:
    """kill -9 of one receiving process while 60 pushes arrive: the supervisor starts another; a push
    whose connection broke is sent again (as GitLab does); every push that got its 200 is acted on once."""
    fake = wh.FakeJenkins(jenkins)
    port, db = free_port(), tmp_path / "r.sqlite3"
    receiver = Receiver(ps, jenkins_argv(port, db, jenkins, "--no-coalesce"), tmp_path / "log", port)
    try:
        victim = receiver.started("receiver")[0]
        shas = [f"{i:040x}" for i in range(100, 160)]
        killer = threading.Timer(0.05, os.kill, (victim, signal.SIGKILL))
        killer.start()
        answers, _errors = send_at_once(receiver.url, [(sha, f"k-{sha[-6:]}") for sha in shas],
                                        retry_errors=True)
        killer.join()
        assert sorted(set(answers)) in (["accepted"], ["accepted", "duplicate"])  # a resend of one recorded
        assert len(answers) == 60
        assert wh.wait_for(lambda: len(receiver.started("receiver")) == 3, timeout=15)
        assert f"receiver {victim} ended (killed by SIGKILL): starting another" in receiver.log()
        assert wh.wait_for(lambda: len(receiver.children()) == 3)
        assert wh.wait_for(lambda: len(fake.triggers) >= 60 and all(
            d["status"] == wh.DONE for d in wh.deliveries(receiver.url)), timeout=60)
        assert sorted(fake.keys()) == sorted(f"k-{sha[-6:]}" for sha in shas)  # each exactly once
    finally:
        assert receiver.stop() == 0


def test_the_actor_killed_alone_mid_trigger_is_replaced_and_does_not_trigger_twice(
        ps: wh.PsRun, jenkins: HTTPServer, tmp_path: Path) -> None:
    fake = wh.FakeJenkins(jenkins)
    port, db = free_port(), tmp_path / "a.sqlite3"
    receiver = Receiver(ps, jenkins_argv(port, db, jenkins), tmp_path / "log", port)
    try:
        fake.hang_after_queueing = threading.Event()
        assert wh.post(receiver.url, wh.push_payload(), uuid="a1").json()["status"] == "accepted"
        assert wh.wait_for(lambda: len(fake.triggers) == 1)
        actor = receiver.started("actor")[0]
        os.kill(actor, signal.SIGKILL)
        assert wh.wait_for(lambda: len(receiver.started("actor")) == 2, timeout=15)
        fake.hang_after_queueing.set()
        fake.hang_after_queueing = None
        assert wh.wait_for(lambda: wh.deliveries(receiver.url)[0]["status"] == wh.DONE, timeout=30)
        assert fake.keys() == ["a1"]
        assert "already has this delivery" in wh.deliveries(receiver.url)[0]["outcome"]
        # the receivers went on answering meanwhile, and go on
        assert wh.post(receiver.url, wh.push_payload(sha="c" * 40), uuid="a2").json()["status"] == "accepted"
        assert wh.wait_for(lambda: fake.keys() == ["a1", "a2"])
    finally:
        assert receiver.stop() == 0


def test_workers_option_is_checked(ps: wh.PsRun, tmp_path: Path) -> None:
    done = ps("webhook", "serve", "--workers", "0", "--db", str(tmp_path / "x.sqlite3"),
              env={"WEBHOOK_TOKEN": TOKEN})
    assert done.returncode == 2 and done.stderr.startswith("ps: ") and "--workers" in done.stderr
    taken = free_port()
    with socket.socket() as sock:
        sock.bind((address(), taken))
        sock.listen(1)
        busy = ps("webhook", "serve", "--host", address(), "--port", str(taken), "--workers", "2", "--db",
                  str(tmp_path / "y.sqlite3"), env={"WEBHOOK_TOKEN": TOKEN})
    assert busy.returncode == 2 and "cannot listen" in busy.stderr and busy.stderr.count("\n") == 1
