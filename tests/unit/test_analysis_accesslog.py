"""The ps_json access log: the format through crossplane, the line parser, the tail (offsets, partial
lines, rotation, truncation) and the mapping of lines to (upstream, slot)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline_steps.analysis import (
    FORMAT_NAME,
    AccessLogTail,
    SlotMap,
    Window,
    access_log_directive,
    log_format_directive,
    parse_line,
)
from pipeline_steps.analysis.accesslog import FIELDS
from pipeline_steps.config import parse_config
from pipeline_steps.upstreams import ServerLine, Upstream, UpstreamFile, put_directive, render_directives

STABLE, CANARY = "127.0.0.1:8081", "127.0.0.1:8082"


def line(status: int = 200, addr: str = STABLE, upstream: str = "shop_web", t: float = 1.5,
         upstream_time: str | None = None, rid: str = "r") -> str:
    return json.dumps({"time": "1796118391.575", "status": str(status), "upstream": upstream,
                       "upstream_addr": addr, "upstream_status": str(status), "request_time": str(t),
                       "upstream_response_time": upstream_time if upstream_time is not None else str(t),
                       "request_id": rid}) + "\n"


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


# ---------------------------------------------------------------- format


def test_log_format_round_trips_through_crossplane_in_the_include() -> None:
    file = UpstreamFile.from_text("upstream shop_web { server 127.0.0.1:8081 weight=900; }\n")
    put_directive(file, log_format_directive())
    put_directive(file, log_format_directive())  # idempotent: replaced, not added twice
    again = UpstreamFile.from_text(file.render())
    assert [d for d in again.directives if d["directive"] == "log_format"] == [log_format_directive()]
    assert again.get("shop_web") == file.get("shop_web")
    name, escape, body = log_format_directive()["args"]
    assert (name, escape) == (FORMAT_NAME, "escape=json")
    keys = list(json.loads(body.replace("$", "")))  # valid JSON once nginx fills the variables in
    assert keys == [k for k, _ in FIELDS]
    assert render_directives([access_log_directive("/var/log/nginx/ps.json")]) == \
        "access_log /var/log/nginx/ps.json ps_json;\n"


def test_every_field_of_the_format_is_read() -> None:
    body = log_format_directive()["args"][2]
    filled = body
    for value, (_, var) in zip(("12.5", "503", "shop_web", "a:1, b:2", "502, 503", "0.3", "0.1, 0.2", "id"),
                               FIELDS, strict=True):
        filled = filled.replace(f'"{var}"', json.dumps(value))
    record = parse_line(filled)
    assert record is not None
    assert (record.time, record.status, record.upstream, record.address, record.addresses) == \
        (12.5, 503, "shop_web", "b:2", ("a:1", "b:2"))
    assert (record.request_time, record.upstream_time, record.latency, record.request_id) == \
        (0.3, 0.2, 0.2, "id")


def test_parse_line_edge_cases() -> None:
    no_upstream = parse_line(line(status=499, addr="", upstream_time="-"))
    assert no_upstream is not None and no_upstream.address == "" and no_upstream.upstream_time is None
    assert no_upstream.latency == 1.5  # falls back to request_time
    redirect = parse_line(line(addr="127.0.0.1:1 : 127.0.0.1:8082"))
    assert redirect is not None and redirect.address == CANARY
    for bad in ("", "not json", "[]", '{"status": "200"}', '{"time": "x", "status": "200"}'):
        assert parse_line(bad) is None


# ---------------------------------------------------------------- tail


def test_old_lines_never_count_and_new_ones_do(tmp_path: Path) -> None:
    log = tmp_path / "access.json"
    log.write_text(line(500, rid="old") * 3)
    with AccessLogTail(log) as tail:
        assert tail.read() == []
        append(log, line(rid="new1") + line(rid="new2"))
        assert [r.request_id for r in tail.read()] == ["new1", "new2"]
        assert tail.read() == []
    with AccessLogTail(log, from_start=True) as whole:
        assert len(whole.read()) == 5


def test_partial_last_line_waits_for_its_end(tmp_path: Path) -> None:
    log = tmp_path / "access.json"
    log.write_text("")
    text = line(rid="a") + line(rid="b")
    cut = len(line(rid="a")) + 10
    with AccessLogTail(log) as tail:
        append(log, text[:cut])
        assert [r.request_id for r in tail.read()] == ["a"]
        append(log, text[cut:])
        assert [r.request_id for r in tail.read()] == ["b"]
        assert tail.malformed == 0


def test_opened_inside_a_line_skips_that_line(tmp_path: Path) -> None:
    log = tmp_path / "access.json"
    first = line(status=500, rid="old")
    log.write_text(first[:20])  # nginx is writing the old line as the tail opens
    with AccessLogTail(log) as tail:
        append(log, first[20:] + line(rid="new"))
        assert [r.request_id for r in tail.read()] == ["new"]
        assert tail.malformed == 0


def test_rotation_by_rename_reads_the_old_file_to_its_end_then_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "access.json"
    log.write_text(line(rid="before"))
    with AccessLogTail(log) as tail:
        append(log, line(rid="a"))
        os.rename(log, tmp_path / "access.json.1")
        append(tmp_path / "access.json.1", line(rid="b") + '{"time": "1", "sta')  # before nginx reopens
        assert [r.request_id for r in tail.read()] == ["a", "b"]  # no new file yet
        log.write_text(line(rid="c"))
        assert [r.request_id for r in tail.read()] == ["c"]
        assert tail.rotations == 1
        append(log, line(rid="d"))
        assert [r.request_id for r in tail.read()] == ["d"]
        assert tail.malformed == 0  # the rotated file's unfinished line is dropped, not parsed


def test_truncation_restarts_from_the_beginning(tmp_path: Path) -> None:
    log = tmp_path / "access.json"
    log.write_text(line(rid="old") * 4)
    with AccessLogTail(log) as tail:
        append(log, line(rid="a"))
        assert [r.request_id for r in tail.read()] == ["a"]
        with open(log, "r+", encoding="utf-8") as fh:  # copytruncate
            fh.truncate(0)
        append(log, line(rid="b"))
        assert [r.request_id for r in tail.read()] == ["b"]
        assert tail.truncations == 1


def test_a_log_that_appears_later_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "access.json"
    with AccessLogTail(log) as tail:
        assert tail.read() == []
        log.write_text(line(rid="a"))
        assert [r.request_id for r in tail.read()] == ["a"]


def test_malformed_lines_are_counted_not_returned(tmp_path: Path) -> None:
    log = tmp_path / "access.json"
    log.write_text("")
    with AccessLogTail(log) as tail:
        append(log, '127.0.0.1 - - [01/Dec/2026] "GET / HTTP/1.1" 200\n' + line(rid="ok"))
        assert [r.request_id for r in tail.read()] == ["ok"]
        assert tail.malformed == 1


# ---------------------------------------------------------------- slots


def test_window_sorts_lines_into_slots_by_the_last_address(tmp_path: Path) -> None:
    slots = SlotMap({"shop_web": {STABLE: "stable", CANARY: "canary"}})
    window = Window(slots)
    records = [parse_line(text) for text in (
        line(200, STABLE), line(500, CANARY), line(200, f"{CANARY}, {STABLE}"),  # retried: stable answered
        line(200, STABLE, upstream="other_app"),  # a foreign upstream
        line(502, "shop_web", upstream="shop_web"),  # "no live upstreams": no server answered
        line(200, "127.0.0.1:9999"),  # not one of the slots
    )]
    assert window.add(r for r in records if r is not None) == 3
    assert window.side("shop_web", "stable").statuses == [200, 200]
    assert window.side("shop_web", "canary").statuses == [500]
    assert (window.foreign, window.unattributed) == (1, 2)
    assert len(window.side("nothing", "canary")) == 0


def test_the_sticky_splits_per_slot_upstreams_count_as_the_services(tmp_path: Path) -> None:
    """With canary.sticky nginx proxies to shop_web__canary / shop_web__stable ($proxy_host)."""
    window = Window(SlotMap({"shop_web": {STABLE: "stable", CANARY: "canary"}}))
    records = [parse_line(text) for text in (
        line(200, STABLE, upstream="shop_web__stable"), line(500, CANARY, upstream="shop_web__canary"),
        line(200, CANARY, upstream="shop_web__stable"),  # stable's backup answered: the canary did
        line(200, STABLE, upstream="other__canary"),
        line(200, "127.0.0.1:9999", upstream="shop_web__canary"))]
    assert window.add(r for r in records if r is not None) == 3
    assert window.side("shop_web", "canary").statuses == [500, 200]
    assert (window.foreign, window.unattributed) == (1, 1)


def test_slot_map_from_config_and_from_the_live_include(tmp_path: Path) -> None:
    config = parse_config({
        "app": "shop", "registry": "127.0.0.1:5000",
        "hosts": [{"name": "a", "address": "127.0.0.1"}, {"name": "b", "address": "127.0.0.2"}],
        "services": {"web": {"slots": {"stable": 8081, "canary": 8082}}},
        "router": {"include": str(tmp_path / "ups.conf")}}, base_dir=tmp_path)
    expected = {"shop_web": {"127.0.0.1:8081": "stable", "127.0.0.1:8082": "canary",
                             "127.0.0.2:8081": "stable", "127.0.0.2:8082": "canary"}}
    assert SlotMap.from_config(config).upstreams == expected
    include = UpstreamFile(path=tmp_path / "ups.conf")
    include.put(Upstream("shop_web", [ServerLine("127.0.0.1:8081", weight=900),
                                      ServerLine("127.0.0.1:8082", weight=100),
                                      ServerLine("10.9.9.9:80", weight=1)]))
    assert SlotMap.from_include(config, include).upstreams == \
        {"shop_web": {"127.0.0.1:8081": "stable", "127.0.0.1:8082": "canary"}}


def test_step_analysis_reads_two_routers_and_spends_looks_only_when_it_tests(tmp_path: Path) -> None:
    import pytest

    from pipeline_steps.analysis import AnalysisPolicy, StepAnalysis

    logs = [tmp_path / "router1.json", tmp_path / "router2.json"]
    for log in logs:
        log.write_text(line(500, CANARY, rid="old") * 100)  # before the step: never counted
    slots = SlotMap({"shop_web": {STABLE: "stable", CANARY: "canary"}})
    policy = AnalysisPolicy(min_requests=50)
    with StepAnalysis(logs, slots, policy, looks=2) as analysis:
        first = analysis.look()
        assert [j.decision for j in first] == ["inconclusive"] and first[0].look == 0
        for log in logs:  # 60 per side over both routers, canary 50 % errors
            append(log, (line(200, STABLE) * 30) + (line(500, CANARY) + line(200, CANARY)) * 15)
        second = analysis.look()
        assert (second[0].decision, second[0].look, second[0].canary.requests) == ("fail", 1, 60)
        assert second[0].stable.requests == 60 and second[0].canary.errors == 30
        assert analysis.look()[0].look == 2
        with pytest.raises(ValueError, match="planned looks"):
            analysis.look()


def test_truncated_while_skipping_an_unfinished_line(tmp_path: Path) -> None:
    log = tmp_path / "access.json"
    log.write_text(line(rid="old") * 3 + '{"time": "1", "sta')  # opened inside nginx's write
    with AccessLogTail(log) as tail:
        assert tail.read() == []
        with open(log, "r+", encoding="utf-8") as fh:
            fh.truncate(0)
        append(log, line(rid="a"))
        assert [r.request_id for r in tail.read()] == ["a"]
