"""The bounded load generator against a real sample-app container behind a real nginx."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from testbed.load import LoadGenerator
from testbed.nginx import Nginx
from testbed.ports import address, free_port
from testbed.wait import pause_until, until

pytestmark = pytest.mark.docker

SERVERS = """
server {
    listen {address}:{port};
    location / {
        proxy_pass http://ps_load_web;
{proxy_defaults}
    }
}
"""


def upstream(*backends: tuple[int, int]) -> str:
    """An upstream block: (port, weight) per server; weight 0 marks the server down."""
    lines = [f"    server {address()}:{port}" + (f" weight={w};" if w else " down;") for port, w in backends]
    return "upstream ps_load_web {\n" + "\n".join(lines) + "\n}\n"


@pytest.fixture
def routed(run_sample: Callable[..., tuple[Any, int]],
           nginx_factory: Callable[..., Nginx]) -> tuple[Nginx, dict[str, tuple[Any, int]]]:
    """nginx in front of two sample-app containers (slots stable and canary), all traffic to stable."""
    slots = {slot: run_sample(PS_SLOT=slot) for slot in ("stable", "canary")}
    nginx = nginx_factory(SERVERS, upstream((slots["stable"][1], 1), (slots["canary"][1], 0)))
    return nginx, slots


def test_load_through_nginx_has_no_failures(routed: tuple[Nginx, dict[str, tuple[Any, int]]]) -> None:
    nginx, _ = routed
    report = LoadGenerator(nginx.url + "/load", rate=100, max_seconds=2).start().wait(timeout=30)
    print(f"\nload through nginx: {report.summary()}")
    assert report.sent == 200
    assert report.failed == 0, report.errors
    assert report.by_slot == {"stable": 200}
    assert report.by_status == {"200": 200}


def test_failures_are_counted_when_the_backend_is_down(
        routed: tuple[Nginx, dict[str, tuple[Any, int]]]) -> None:
    nginx, slots = routed
    slots["stable"][0].stop(timeout=1)
    report = LoadGenerator(nginx.url + "/", rate=50, max_seconds=1).start().wait(timeout=30)
    print(f"\nbackend down: {report.summary()}")
    assert report.sent == 50
    assert report.failed == 50
    assert report.by_status == {"502": 50}
    assert report.errors and "HTTP 502" in report.errors[0]


def test_connection_refused_is_a_failure() -> None:
    report = LoadGenerator(f"http://{address()}:{free_port()}/", rate=100, max_requests=30,
                           max_seconds=5).start().wait(timeout=30)
    assert report.sent == 30
    assert report.failed == 30
    assert report.by_status == {"error": 30}
    assert "ConnectionRefusedError" in report.errors[0]


def test_load_is_bounded_and_stoppable(routed: tuple[Nginx, dict[str, tuple[Any, int]]]) -> None:
    nginx, _ = routed
    by_count = LoadGenerator(nginx.url + "/", rate=200, max_requests=25, max_seconds=30).start()
    report = by_count.wait(timeout=30)
    assert report.sent == 25 and not by_count.running
    started = time.monotonic()
    early = LoadGenerator(nginx.url + "/", rate=50, max_seconds=60).start()
    assert until(lambda: early.report().sent >= 10, 30, 0.02), "the load did not get going"
    report = early.stop()
    assert time.monotonic() - started < 10
    assert not early.running
    assert 10 <= report.sent <= 40, report.summary()
    assert report.failed == 0


def test_weight_flips_with_reloads_drop_nothing(routed: tuple[Nginx, dict[str, tuple[Any, int]]]) -> None:
    """Every request is a new connection, so requests really land on reloading nginx workers."""
    nginx, slots = routed
    stable, canary = slots["stable"][1], slots["canary"][1]
    flips = 0
    with LoadGenerator(nginx.url + "/", rate=100, max_seconds=4) as load:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            weights = ((stable, 0), (canary, 1)) if flips % 2 == 0 else ((stable, 1), (canary, 0))
            nginx.include.write_text(upstream(*weights))
            nginx.reload()
            flips += 1
            pause_until(time.monotonic() + 0.25)  # pacing the flips
        report = load.wait(timeout=30)
    print(f"\n{flips} reloads under load: {report.summary()}; errors: {report.errors[:5]}")
    assert flips >= 6
    assert report.sent == 400
    assert report.failed == 0, report.errors
    assert report.by_slot.get("stable", 0) > 0 and report.by_slot.get("canary", 0) > 0


def test_rejects_non_loopback_targets() -> None:
    with pytest.raises(ValueError, match="loopback"):
        LoadGenerator("http://example.com/")
    with pytest.raises(ValueError, match="http://"):
        LoadGenerator("ftp://127.0.0.1/")
