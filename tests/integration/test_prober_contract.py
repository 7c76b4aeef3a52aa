"""The Prober contract: the same assertions against the LiveProber (a local HTTP server, a closed port, an
open port) and a FakeProber scripted with the answers the contract describes."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pytest_httpserver import HTTPServer

from pipeline_steps.adapters.fake_prober import FakeProber, not_ready, refused, up
from pipeline_steps.adapters.interfaces import Prober
from pipeline_steps.adapters.prober import LiveProber
from pipeline_steps.health import GatePolicy, HealthTarget, ProbeResult


@dataclass
class Targets:
    healthy: HealthTarget  # 200 {"status": "ok"}
    starting: HealthTarget  # 503 {"status": "starting"}
    closed: HealthTarget  # nothing listens
    open_port: HealthTarget  # a TCP port that accepts


@pytest.fixture
def targets(httpserver: HTTPServer) -> Iterator[Targets]:
    httpserver.expect_request("/ok").respond_with_data(json.dumps({"status": "ok"}), 200,
                                                       content_type="application/json")
    httpserver.expect_request("/boot").respond_with_data(json.dumps({"status": "starting"}), 503,
                                                         content_type="application/json")
    gone = socket.socket()
    gone.bind(("127.0.0.1", 0))
    closed_port = gone.getsockname()[1]
    gone.close()  # bound then closed: nothing listens there
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        yield Targets(HealthTarget.url(httpserver.url_for("/ok")),
                      HealthTarget.url(httpserver.url_for("/boot")),
                      HealthTarget.url(f"http://127.0.0.1:{closed_port}/health"),
                      HealthTarget.tcp(f"127.0.0.1:{listener.getsockname()[1]}"))


@pytest.fixture(params=["live", "fake"])
def prober(request: pytest.FixtureRequest, targets: Targets) -> Iterator[Prober]:
    if request.param == "live":
        real = LiveProber()
        yield real
        real.close()
        return
    t = targets
    yield FakeProber({
        t.healthy.label: up(t.healthy.label, detail="status=ok"),
        t.starting.label: ProbeResult(t.starting.label, False, "503", 1.0, "HTTP 503 (want 2xx)",
                                      "status=starting", not_ready=True),
        t.closed.label: refused(t.closed.label),
        t.open_port.label: up(t.open_port.label, "open"),
    })


def test_healthy_answer(prober: Prober, targets: Targets) -> None:
    prober.prepare()
    got = prober.probe(targets.healthy, GatePolicy())
    assert got.ok and got.status == "200" and got.detail == "status=ok" and got.reason == ""


def test_not_ready_answer(prober: Prober, targets: Targets) -> None:
    got = prober.probe(targets.starting, GatePolicy())
    assert not got.ok and got.status == "503" and got.not_ready and not got.no_answer
    assert "want 2xx" in got.reason and got.detail == "status=starting"


def test_nothing_listening(prober: Prober, targets: Targets) -> None:
    got = prober.probe(targets.closed, GatePolicy(timeout=2.0))
    assert not got.ok and got.status == "refused" and got.not_listening and got.no_answer


def test_open_tcp_port(prober: Prober, targets: Targets) -> None:
    got = prober.probe(targets.open_port, GatePolicy())
    assert got.ok and got.status == "open"


def test_not_ready_helper_matches_the_live_shape() -> None:
    fake = not_ready("x")
    assert not fake.ok and fake.not_ready and fake.reason == "HTTP 503 (want 2xx)"
