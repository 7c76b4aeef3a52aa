"""The probe's answer rule: only a 2xx naming a server of the service's own upstream counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_steps.config import parse_config
from pipeline_steps.errors import BadInput
from pipeline_steps.operations.verify_weights import (
    Answer,
    ProbeRun,
    classify,
    describe_invalid,
    last_upstream,
    measure,
    probe_url,
    send_probe,
)
from pipeline_steps.upstreams import canary_upstream
from pipeline_steps.weights import Weights

SERVERS = {"127.0.0.1:8081": "stable", "127.0.0.1:8082": "canary"}
BUILDS = {"b1": {"stable"}, "b2": {"canary"}, "same": {"stable", "canary"}}


def test_a_2xx_from_a_server_of_the_upstream_counts() -> None:
    assert classify(Answer(200, "127.0.0.1:8082"), SERVERS, BUILDS) == ("canary", "")
    assert classify(Answer(204, "127.0.0.1:8081", "b2"), SERVERS, BUILDS) == ("stable", "")  # header wins


@pytest.mark.parametrize("answer, reason", [
    (Answer(404, "127.0.0.1:8081"), "status 404"),
    (Answer(502, "shop_backend"), "status 502"),
    (Answer(301, "127.0.0.1:8081"), "status 301"),
    (Answer(200, "127.0.0.1:9999"), "other upstream"),  # the frontend's server, say
    (Answer(200, None, None), "no server named"),
    (Answer(200, "", "  "), "no server named"),
    (Answer(200, None, "zz"), "unknown build"),
    (Answer(200, None, "same"), "ambiguous build"),
    (Answer(None, error="ReadTimeout"), "no answer"),
])
def test_everything_else_fails(answer: Answer, reason: str) -> None:
    assert classify(answer, SERVERS, BUILDS) == (None, reason)


def test_without_x_upstream_the_build_names_the_slot() -> None:
    assert classify(Answer(200, None, "b2"), SERVERS, BUILDS) == ("canary", "")


def test_retried_and_redirected_requests_count_the_last_server() -> None:
    assert last_upstream("127.0.0.1:8081, 127.0.0.1:8082") == "127.0.0.1:8082"
    assert last_upstream("127.0.0.1:8081 : 127.0.0.1:8082") == "127.0.0.1:8082"
    assert last_upstream("10.0.0.1:80, 10.0.0.2:80 : unix:/tmp/x.sock") == "unix:/tmp/x.sock"
    # a retry that ended on a server of another upstream does not count
    assert classify(Answer(200, "127.0.0.1:8081, 127.0.0.1:9999"), SERVERS, BUILDS)[0] is None
    assert classify(Answer(200, "127.0.0.1:9999, 127.0.0.1:8081"), SERVERS, BUILDS) == ("stable", "")


addresses = st.builds(lambda a, p: f"127.0.{a}.1:{p}", st.integers(0, 3), st.integers(8080, 8083))
separators = st.sampled_from([", ", " : ", ",", ",  "])


@settings(max_examples=200, deadline=None)
@given(tried=st.lists(addresses, min_size=1, max_size=4), seps=st.lists(separators, min_size=3, max_size=3))
def test_header_parsing_takes_the_last_address(tried: list[str], seps: list[str]) -> None:
    value = tried[0] + "".join(sep + addr for sep, addr in zip(seps, tried[1:], strict=False))
    assert last_upstream(value) == tried[-1]
    slot, _ = classify(Answer(200, value), SERVERS, BUILDS)
    assert slot == SERVERS.get(tried[-1])


@settings(max_examples=100, deadline=None)
@given(status=st.integers(100, 599), upstream=st.none() | st.sampled_from([*SERVERS, "127.0.0.1:1"]),
       build=st.none() | st.sampled_from([*BUILDS, "nope"]))
def test_only_2xx_naming_our_server_ever_counts(status: int, upstream: str | None, build: str | None) -> None:
    slot, reason = classify(Answer(status, upstream, build), SERVERS, BUILDS)
    if slot is not None:
        assert 200 <= status < 300 and reason == ""
        by_header = bool(upstream) and SERVERS[str(upstream)] == slot
        assert by_header or (not upstream and build and BUILDS[build] == {slot})
    else:
        assert reason


def test_invalid_lines_say_how_many() -> None:
    assert describe_invalid("status 404", 12, 400, "shop_backend") == "12 of 400 answers were 404"
    assert "outside upstream shop_backend" in describe_invalid("other upstream", 3, 400, "shop_backend")
    assert "add_header X-Upstream" in describe_invalid("no server named", 1, 2, "u")


def _config(tmp_path: Path, services: int = 1, url: bool = False):  # type: ignore[no-untyped-def]
    names = ["backend", "frontend", "py"][:services]
    raw = {"app": "shop", "registry": "127.0.0.1:5000",
           "services": {n: {"slots": {"stable": 8081 + 10 * i, "canary": 8082 + 10 * i},
                            **({"url": f"http://127.0.0.1:1/{n}"} if url else {})}
                        for i, n in enumerate(names)},
           "router": {"include": str(tmp_path / "ups.conf"), "url": "http://127.0.0.1:1/"}}
    return parse_config(raw, base_dir=tmp_path)


def test_probe_url_is_the_services_own(tmp_path: Path) -> None:
    three = _config(tmp_path, 3, url=True)
    assert probe_url(three, three.services["backend"]) == "http://127.0.0.1:1/backend"
    assert probe_url(three, three.services["backend"], "http://127.0.0.1:2/") == "http://127.0.0.1:2/"
    one = _config(tmp_path, 1)
    assert probe_url(one, one.services["backend"]) == "http://127.0.0.1:1/"  # router.url: only service
    bare = _config(tmp_path, 3)
    with pytest.raises(BadInput) as info:
        probe_url(bare, bare.services["backend"])
    assert "services.backend.url" in info.value.message and info.value.exit_code == 2


def test_measure_judges_only_valid_answers_and_fails_on_any_invalid(tmp_path: Path) -> None:
    config = _config(tmp_path)
    service = config.services["backend"]
    upstream = canary_upstream(service, config.hosts, Weights.from_percent(10))
    good = [Answer(200, "127.0.0.1:8082")] * 10 + [Answer(200, "127.0.0.1:8081")] * 90
    ok, problems = measure(config, service, upstream, ProbeRun("u", 100, good), "canary", 0.1)
    assert problems == [] and ok["counts"] == {"canary": 10, "stable": 90} and ok["share"] == 0.1
    # a URL answering 404 to everything measured "canary 0.0 %": now it fails, saying why
    bad, problems = measure(config, service, upstream, ProbeRun("u", 400, [Answer(404, None)] * 400),
                            "canary", 0.0)
    assert bad["valid"] == 0 and bad["invalid"] == {"status 404": 400}
    assert any("400 of 400 answers were 404" in p for p in problems)
    # one foreign answer among good ones fails too (no budget)
    mixed = [*good[:-1], Answer(200, "127.0.0.1:9999")]
    _, problems = measure(config, service, upstream, ProbeRun("u", 100, mixed), "canary", 0.1)
    assert len(problems) == 1
    assert "1 of 100 answers named a server outside upstream shop_backend" in problems[0]
    late = ProbeRun("u", 200, good, timed_out=True)
    _, problems = measure(config, service, upstream, late, "canary", 0.1)
    assert any("ran out of time after 100 of 200" in p for p in problems)


@pytest.fixture
def slow_server() -> Iterator[str]:
    """A loopback HTTP server answering 200 with X-Upstream after 50 ms."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            threading.Event().wait(0.05)
            self.send_response(200)
            self.send_header("X-Upstream", "127.0.0.1:8081")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    from testbed.ports import address

    server = http.server.ThreadingHTTPServer((address(), 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{address()}:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_probes_run_side_by_side_in_threads_and_stay_bounded(slow_server: str) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: send_probe(slow_server, 1000, deadline=0.6), range(2)))
    assert time.monotonic() - started < 5
    for run in runs:
        assert run.timed_out and 0 < len(run.answers) < 1000
        assert all(a.status == 200 and a.upstream == "127.0.0.1:8081" for a in run.answers)
    stop = threading.Event()
    stop.set()
    stopped = send_probe(slow_server, 10, stop=stop)
    assert stopped.stopped and stopped.answers == []
