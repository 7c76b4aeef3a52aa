"""The run report: JSON record, HTML page beside it, and a well-formed SVG timeline."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_steps.deploy.report import FAIL_COLOR, OK_COLOR, RunReport
from pipeline_steps.errors import BadInput
from pipeline_steps.secrets import register_secret

SVG = "{http://www.w3.org/2000/svg}"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def canary_run() -> RunReport:
    clock = Clock()
    report = RunReport(app="shop", deploy_type="canary-auto", timezone="Asia/Seoul",
                       build_ids={"web/stable": "1a2b3c4d5e6f", "web/canary": "abcdefabcdef"},
                       pipeline_url="https://gitlab.example.com/shop/-/pipelines/7", who="alice",
                       clock=clock)
    report.step("deploy canary abcdefabcdef")
    report.weights({"web": 0, "api": 0})
    clock.now += 1
    report.health("web", True, "200 in 12ms")
    report.health("api", True)
    report.weights({"web": 10, "api": 10}, "step 1")
    clock.now += 2
    report.health("web", False, "503 unhealthy")
    report.rollback("web canary unhealthy twice")
    report.weights({"web": 0, "api": 0}, "rolled back")
    report.notify("rolled back", ok=True)
    clock.now += 1
    report.finish("rolled-back", "web canary failed its health checks")
    return report


def svg_of(page: str) -> ET.Element:
    start, end = page.index("<svg"), page.index("</svg>") + len("</svg>")
    return ET.fromstring(page[start:end])


def test_write_makes_json_and_html_beside_it(tmp_path: Path) -> None:
    report = canary_run()
    json_path, html_path = report.write(tmp_path / "out" / "deploy-report.json")
    assert html_path == tmp_path / "out" / "deploy-report.html"
    data = json.loads(json_path.read_text())
    assert data["app"] == "shop" and data["type"] == "canary-auto"
    assert data["result"] == "rolled-back" and data["duration"] == 4.0
    assert data["started"].endswith("+09:00") and data["finished"].endswith("+09:00")
    assert [e["kind"] for e in data["events"]] == ["step", "weights", "health", "health", "weights",
                                                  "health", "rollback", "weights", "notify"]
    assert data["events"][4] == {"t": 1.0, "kind": "weights", "message": "step 1",
                                 "weights": {"web": 10.0, "api": 10.0}, "service": None, "ok": None}
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page.split(
        "<body>")[0].replace("http://www.w3.org", "")  # no external assets in the head
    assert '<a href="https://gitlab.example.com/shop/-/pipelines/7">' in page
    root = svg_of(page)
    assert root.tag == f"{SVG}svg"


def test_svg_draws_weights_health_steps_and_rollback() -> None:
    report = canary_run()
    root = ET.fromstring(report.svg())
    lines = {p.get("data-service"): p.get("points") for p in root.iter(f"{SVG}polyline")}
    assert set(lines) == {"web", "api"}
    # step line: 0% from t=0, up to 10% at t=1, down to 0% at t=3, flat to the end (t=4)
    x = [56 + 674 * t / 4 for t in (0, 1, 3, 4)]
    y0, y10 = 28 + 200.0, 28 + 200 * 0.9
    expected = [x[0], y0, x[1], y0, x[1], y10, x[2], y10, x[2], y0, x[3], y0]
    got = [float(v) for pt in (lines["web"] or "").split() for v in pt.split(",")]
    assert got == pytest.approx(expected, abs=0.01)
    dots = [c for c in root.iter(f"{SVG}circle") if "health" in (c.get("class") or "")]
    assert [d.get("fill") for d in dots] == [OK_COLOR, OK_COLOR, FAIL_COLOR]
    assert [d.get("class") for d in dots] == ["health ok", "health ok", "health fail"]
    groups = {g.get("class"): g for g in root.iter(f"{SVG}g")}
    assert set(groups) == {"step", "rollback", "notify"}
    rollback_line = groups["rollback"].find(f"{SVG}line")
    assert rollback_line is not None and float(rollback_line.get("x1") or 0) == pytest.approx(x[2])
    title = groups["rollback"].find(f"{SVG}title")
    assert title is not None and "web canary unhealthy twice" in (title.text or "")


def test_timeline_text_for_the_terminal() -> None:
    lines = canary_run().timeline_text().splitlines()
    assert lines[0].startswith("shop canary-auto started ")
    assert lines[1].split() == ["+", "0.0s", "step", "deploy", "canary", "abcdefabcdef"]
    assert "web 10% canary, api 10% canary - step 1" in lines[5]
    assert "web FAIL - 503 unhealthy" in lines[6]
    assert lines[7].split()[2:] == ["rollback", "web", "canary", "unhealthy", "twice"]
    assert lines[-1].split()[:4] == ["+", "4.0s", "end", "rolled-back"]


def test_every_text_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert('x')</script> & \"quotes\""
    report = RunReport(app="shop", deploy_type="stable", build_ids={evil: evil},
                       pipeline_url="javascript:alert(1)", who=evil)
    report.weights({evil: 50}, evil)
    report.health(evil, False, evil)
    report.step(evil)
    report.rollback(evil)
    report.finish("failed", evil)
    _, html_path = report.write(tmp_path / "r.json")
    page = html_path.read_text()
    assert "<script>" not in page and "href=\"javascript" not in page
    root = svg_of(page)
    assert any(evil in (t.text or "") for t in root.iter(f"{SVG}title"))
    assert [p.get("data-service") for p in root.iter(f"{SVG}polyline")] == [evil]


def test_secrets_are_masked_in_json_and_html(tmp_path: Path) -> None:
    secret = "tok-9f8e7d6c5b4a"
    register_secret(secret)
    report = RunReport(app="shop", deploy_type="stable")
    report.notify(f"POST https://chat.example.com/hooks/{secret} failed", ok=False)
    report.finish("ok")
    json_path, html_path = report.write(tmp_path / "r.json")
    assert secret not in json_path.read_text() and secret not in html_path.read_text()
    assert secret not in report.timeline_text()


def test_bad_use_is_refused(tmp_path: Path) -> None:
    report = RunReport(app="shop", deploy_type="stable")
    with pytest.raises(BadInput, match="JSON file name"):
        report.write(tmp_path / "r.html")
    with pytest.raises(ValueError, match="unknown report event kind"):
        report.add("lunch")
    with pytest.raises(ValueError, match="0..100"):
        report.weights({"web": 130})


def test_an_empty_run_still_renders() -> None:
    report = RunReport(app="shop", deploy_type="stable")
    root = ET.fromstring(report.svg())
    assert list(root.iter(f"{SVG}polyline")) == []
    assert "shop stable" in report.html()


event = st.one_of(
    st.tuples(st.just("weights"), st.dictionaries(st.sampled_from(["web", "api", "<w&b>"]),
                                                  st.floats(0, 100), min_size=1)),
    st.tuples(st.just("health"), st.sampled_from(["web", "api", "x\"y"]), st.booleans()),
    st.tuples(st.sampled_from(["step", "rollback", "notify"]), st.text(max_size=30)),
)


@settings(max_examples=60, deadline=None)
@given(events=st.lists(st.tuples(st.floats(0, 3600), event), max_size=25),
       duration=st.floats(0, 3600))
def test_any_run_gives_well_formed_svg_inside_its_box(events: list[tuple[float, tuple[object, ...]]],
                                                      duration: float) -> None:
    clock = Clock()
    report = RunReport(app="a<p>p", deploy_type="t&t", clock=clock)
    for at, ev in sorted(events, key=lambda e: e[0]):
        kind = ev[0]
        if kind == "weights":
            report.weights(ev[1], at=at)  # type: ignore[arg-type]
        elif kind == "health":
            report.health(ev[1], ev[2], at=at)  # type: ignore[arg-type]
        else:
            report.add(kind, ev[1], at=at)  # type: ignore[arg-type]
    clock.now += duration
    report.finish("ok")
    root = ET.fromstring(report.svg())
    width, height = float(root.get("width") or 0), float(root.get("height") or 0)
    for line in root.iter(f"{SVG}polyline"):
        for pt in (line.get("points") or "").split():
            px, py = (float(v) for v in pt.split(","))
            assert 0 <= px <= width and 0 <= py <= height
    for circle in root.iter(f"{SVG}circle"):
        assert 0 <= float(circle.get("cx") or -1) <= width
    services_with_weights = {s for _, ev in events if ev[0] == "weights"
                             for s in ev[1]}  # type: ignore[attr-defined]
    assert len(list(root.iter(f"{SVG}polyline"))) == len(services_with_weights)
    assert len([c for c in root.iter(f"{SVG}circle") if "health" in (c.get("class") or "")]) == \
        sum(1 for _, ev in events if ev[0] == "health")
