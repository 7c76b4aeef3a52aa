"""`ps set-weights` against a real nginx in front of real sample-app slots."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from testbed.load import slots_answering
from testbed.nginx import PROXY_DEFAULTS, last_json
from testbed.ports import address, held_port
from testbed.wait import until

TrafficBed = Any  # the traffic_bed fixture of tests/integration/conftest.py


def test_weights_applied_and_measured_exactly(traffic_bed: Callable[..., TrafficBed], run_sample: Any,
                                              ps: Any) -> None:
    bed = traffic_bed({"backend": "canary"})
    bed.start_slots(run_sample, "backend")
    for pct in (10, 40, 70):
        result, measured = bed.set_and_measure(ps, pct)
        assert result["changed"] and result["reloaded"]
        text = bed.include_text()
        assert f"weight={1000 - pct * 10};" in text and f"weight={pct * 10};" in text
        # one worker, smooth weighted round robin: 1000 requests split exactly by the weights
        assert measured["counts"] == {"stable": 1000 - pct * 10, "canary": pct * 10}
    again = ps("set-weights", "--canary", "70")
    assert again.returncode == 0 and "no change" in again.stdout


def test_two_services_set_in_one_call(traffic_bed: Callable[..., TrafficBed], ps: Any) -> None:
    bed = traffic_bed({"backend": "canary", "api": "canary", "web": "blue-green"})
    workers_before = set(_workers(bed))
    done = ps("--json", "set-weights", "--canary", "40", "--service", "backend", "--service", "api")
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert sorted(s["service"] for s in result["services"]) == ["api", "backend"]
    from pipeline_steps.upstreams import UpstreamFile

    ups = UpstreamFile.load(bed.nginx.include).upstreams()
    for name in ("shop_backend", "shop_api"):
        assert [s.weight for s in ups[name].servers] == [600, 400]
    assert any(not s.backup for s in ups["shop_web"].servers)  # the blue/green service untouched
    assert set(_workers(bed)) - workers_before  # new workers: the reload took effect
    backups = list((bed.nginx.include.parent / "ps-backups").glob("*.bak"))
    assert len(backups) == 1  # one change, one backup, one reload


def _workers(bed: TrafficBed) -> list[int]:
    from pipeline_steps.adapters.proc import children

    pid = bed.nginx.master_pid()
    assert pid
    # a freshly started master may not have forked its worker yet
    return sorted(until(lambda: children(pid), 4, 0.02) or [])


@pytest.mark.parametrize("args", [
    ("set-weights", "--canary", "101"),
    ("set-weights", "--canary", "-5"),
    ("set-weights", "--canary", "ten"),
    ("set-weights", "--canary", "10", "--service", "nope"),
    ("set-weights", "--canary", "10", "--service", "web"),  # blue/green service has no canary
    ("switch", "--to", "purple"),
    ("switch", "--to", "green", "--service", "nope"),
    ("verify-weights", "--expect-canary", "150"),
    ("verify-weights", "--expect-active", "red"),
])
def test_bad_input_exits_2_and_changes_nothing(traffic_bed: Callable[..., TrafficBed], ps: Any,
                                               args: tuple[str, ...]) -> None:
    bed = traffic_bed({"backend": "canary", "web": "blue-green"})
    before = bed.include_text()
    workers = _workers(bed)
    done = ps(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith(("ps:", "Error:"))]
    assert len(errors) == 1, done.stderr
    assert bed.include_text() == before
    assert _workers(bed) == workers
    assert not (bed.nginx.include.parent / "ps-backups").exists() or \
        not list((bed.nginx.include.parent / "ps-backups").glob("*.bak"))


def test_malformed_include_on_disk(traffic_bed: Callable[..., TrafficBed], ps: Any) -> None:
    bed = traffic_bed({"backend": "canary"})
    broken = "upstream shop_backend { server 127.0.0.1:1 weight=5;\n"
    bed.nginx.include.write_text(broken)
    done = ps("set-weights", "--canary", "10")
    assert done.returncode == 2
    assert str(bed.nginx.include) in done.stderr and "unexpected end of file" in done.stderr
    assert "Traceback" not in done.stderr
    assert bed.include_text() == broken


def test_change_failing_nginx_t_is_restored(traffic_bed: Callable[..., TrafficBed], ps: Any) -> None:
    # the service's upstream name clashes with one nginx.conf already defines: nginx -t says duplicate
    bed = traffic_bed({"backend": "canary"},
                      extra_http="    upstream legacy { server 127.0.0.1:9; }\n")
    import yaml

    bed.raw["services"]["backend"]["upstream"] = "legacy"
    bed.config_path.write_text(yaml.safe_dump(bed.raw))
    before = bed.include_text()
    workers = _workers(bed)
    done = ps("set-weights", "--canary", "10")
    assert done.returncode == 1, done.stderr
    assert 'duplicate upstream "legacy"' in done.stderr and "restored" in done.stderr
    assert bed.include_text() == before
    assert _workers(bed) == workers


def test_reload_that_cannot_apply_is_detected(traffic_bed: Callable[..., TrafficBed], run_sample: Any,
                                              ps: Any) -> None:
    bed = traffic_bed({"backend": "canary"})
    bed.start_slots(run_sample, "backend")
    assert ps("set-weights", "--canary", "10").returncode == 0
    workers = _workers(bed)
    with held_port() as port:
        # someone added a server block on a port another process holds: nginx -t passes, the reload
        # cannot bind, and nginx keeps its old config while `nginx -s reload` exits 0
        edited = bed.include_text() + f"server {{ listen {address()}:{port}; {PROXY_DEFAULTS} }}\n"
        bed.nginx.include.write_text(edited)
        done = ps("set-weights", "--canary", "40")
        assert done.returncode == 1, done.stderr
        assert "Address already in use" in done.stderr and "restored" in done.stderr
        assert bed.include_text() == edited
        assert set(_workers(bed)) <= set(workers)  # no new workers: the old ones still serve
    bed.nginx.include.write_text(edited.split("server {")[0])
    probe = ps("verify-weights", "--expect-canary", "10", "--probe", "200", "--url", bed.url("backend"))
    assert probe.returncode == 0, probe.stderr


def test_port_freed_while_nginx_retries_the_bind_is_a_good_reload(
        traffic_bed: Callable[..., TrafficBed], run_sample: Any, ps: Any) -> None:
    # nginx tries a busy port again every 500 ms (five times): when it comes free in that time the
    # reload takes effect, and ps must say so rather than take the first [emerg] as the end
    bed = traffic_bed({"backend": "canary"})
    bed.start_slots(run_sample, "backend")
    assert ps("set-weights", "--canary", "10").returncode == 0
    with held_port() as port:
        bed.nginx.include.write_text(bed.include_text() +
                                     f"server {{ listen {address()}:{port}; {PROXY_DEFAULTS} }}\n")
        done = ps.popen("--json", "set-weights", "--canary", "40")
        # let go of the port only once nginx has found it busy
        until(lambda: "try again to bind()" in bed.nginx.error_log.read_text(), 30)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    assert last_json(out)["reloaded"] is True
    log = bed.nginx.error_log.read_text()
    assert "try again to bind()" in log and "still could not bind()" not in log
    probe = ps("verify-weights", "--expect-canary", "40", "--probe", "200", "--url", bed.url("backend"))
    assert probe.returncode == 0, probe.stderr


def test_verify_weights_catches_a_difference(traffic_bed: Callable[..., TrafficBed], ps: Any) -> None:
    bed = traffic_bed({"backend": "canary"})
    assert ps("set-weights", "--canary", "10").returncode == 0
    assert ps("verify-weights", "--expect-canary", "10").returncode == 0
    text = bed.include_text().replace("weight=900", "weight=898").replace("weight=100", "weight=102")
    bed.nginx.include.write_text(text)
    done = ps("--json", "verify-weights", "--expect-canary", "10")
    assert done.returncode == 1
    assert "weight 898, expected 900" in done.stderr
    record = last_json(done.stdout)
    assert record["ok"] is False and record["services"][0]["expected"]["weights"] == {"stable": 900,
                                                                                      "canary": 100}
    assert ps("verify-weights", "--expect-canary", "10", "--tolerance", "3").returncode == 0


def test_first_apply_creates_the_include(traffic_bed: Callable[..., TrafficBed], ps: Any) -> None:
    bed = traffic_bed({"backend": "canary", "web": "blue-green"})
    bed.nginx.include.unlink()
    done = ps("set-weights", "--canary", "0")
    assert done.returncode == 0, done.stderr
    text = bed.include_text()
    assert "weight=999;" in text and "weight=1;" in text and "backup" in text


def _answers(port: int, path: str = "/", timeout: float = 30.0) -> bool:
    """Poll a slot (or nginx) on <run address>:port until it answers 200; False at the deadline."""
    import http.client

    def ok() -> bool:
        conn = http.client.HTTPConnection(address(), port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    return bool(until(ok, timeout))


def _wait_sent(load: Any, count: int, timeout: float = 30.0) -> None:
    until(lambda: load.report().sent >= count, timeout)
    assert load.report().sent >= count, "the load did not get going"


def test_a_restarted_slot_drops_nothing_and_is_not_kept_out(traffic_bed: Callable[..., TrafficBed],
                                                            run_sample: Any, ps: Any) -> None:
    # nginx's passive check would mark a restarted server failed (per worker, for fail_timeout): ps
    # writes max_fails=0, so a failed attempt is retried on the other slot and the server is back the
    # moment it answers, at its full weight
    from testbed.load import LoadGenerator

    bed = traffic_bed({"backend": "canary"})
    containers = bed.start_slots(run_sample, "backend")
    assert ps("set-weights", "--canary", "10").returncode == 0
    url = bed.url("backend")
    for slot in ("canary", "stable"):  # the one at 10 %, then the one carrying 90 %
        with LoadGenerator(url, rate=75, max_seconds=60, max_requests=3000) as load:
            _wait_sent(load, 40)
            containers[slot].restart(timeout=0)
            assert _answers(bed.ports["backend"][slot]), f"{slot} did not come back"
            _wait_sent(load, load.report().sent + 75)  # a second more of load after it is back
            report = load.stop()
        assert report.sent >= 115 and report.failed == 0, (slot, report.summary(), report.errors)
        # right after, without a reload: the restarted server takes its share again
        probe = ps("verify-weights", "--expect-canary", "10", "--probe", "400", "--url", url)
        assert probe.returncode == 0, (slot, probe.stdout, probe.stderr)
    # and after the next reload it answers exactly at its weight
    _, measured = bed.set_and_measure(ps, 20)
    assert measured["counts"] == {"stable": 800, "canary": 200}


def test_the_only_live_server_restarted_is_used_the_moment_it_answers(
        traffic_bed: Callable[..., TrafficBed], run_sample: Any, ps: Any) -> None:
    # issue 9 case 1: the canary slot is empty and stable restarts. nginx marked both servers failed and
    # answered 502 ("no live upstreams") for fail_timeout after stable was back; now not a single 502
    bed = traffic_bed({"backend": "canary"})
    stable, _ = run_sample(port=bed.ports["backend"]["stable"], PS_SLOT="stable")
    assert ps("set-weights", "--canary", "0").returncode == 0
    from testbed.load import LoadGenerator

    assert _answers(bed.nginx.port, "/backend/")
    with LoadGenerator(bed.url("backend"), rate=50, max_seconds=60) as load:  # hits nginx while it is down
        _wait_sent(load, 10)
        stable.restart(timeout=0)
        assert _answers(bed.ports["backend"]["stable"]), "stable did not come back"
        during = load.stop()
    assert during.failed > 0  # nginx did see the server fail while nothing served
    assert slots_answering(bed.url("backend"), 50) == {"stable": 50}
