"""canary.analysis in the include ps writes: log_format ps_json + access_log, through crossplane, on every
writer (set-weights, router init), removed again when analysis is off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.adapters.nginx import use_router
from pipeline_steps.adapters.nginx.fake import FakeRouter
from pipeline_steps.analysis.include import put_judgement_log
from pipeline_steps.config import Config, parse_config
from pipeline_steps.upstreams import HEADER, UpstreamFile, initial_file


def config(tmp: Path, enabled: bool = True, **router: Any) -> Config:
    return parse_config({"app": "shop", "registry": "r.example:5000",
                         "services": {"web": {"slots": {"stable": 18001, "canary": 18002}}},
                         "router": {"include": str(tmp / "ups.conf"), **router},
                         "canary": {"analysis": {"enabled": enabled}}}, base_dir=tmp)


@pytest.fixture
def fake() -> Iterator[FakeRouter]:
    router = FakeRouter()
    use_router(router)
    yield router
    use_router(None)


def test_the_lines_come_after_the_header_once(tmp_path: Path) -> None:
    c = config(tmp_path)
    file = initial_file(c, tmp_path / "ups.conf")
    assert put_judgement_log(c, file)
    text = file.render()
    again = UpstreamFile.from_text(text)
    assert not put_judgement_log(c, again) and again.render() == text  # idempotent
    parsed = [d["directive"] for d in again.directives]
    assert parsed == ["#", "log_format", "access_log", "upstream"]
    assert again.directives[0]["comment"] == HEADER
    assert again.directives[1]["args"][:2] == ["ps_json", "escape=json"]
    assert again.directives[2]["args"] == [str(tmp_path / "ps-access.json"), "ps_json"]


def test_an_explicit_path_and_off_removes_them(tmp_path: Path) -> None:
    on = config(tmp_path, access_log="logs/judge.json")
    file = initial_file(on, tmp_path / "ups.conf")
    put_judgement_log(on, file)
    assert file.directives[1]["args"] == [str(tmp_path / "logs" / "judge.json"), "ps_json"]
    mine = {"directive": "access_log", "args": ["/var/log/other.log", "combined"]}
    file.directives.append(mine)
    assert put_judgement_log(config(tmp_path, enabled=False), file)
    assert [d["directive"] for d in file.directives] == ["upstream", "access_log"]  # the user's line stays


def test_set_weights_and_router_init_write_them(tmp_path: Path, fake: FakeRouter) -> None:
    from pipeline_steps.operations.router import router_init
    from pipeline_steps.operations.set_weights import set_weights

    off = config(tmp_path, enabled=False)
    router_init(off)
    assert fake.text is not None and "ps_json" not in fake.text
    on = config(tmp_path)
    result = router_init(on)  # the upstreams are there, the log lines are not: written
    assert result.note != "already there" and "log_format ps_json escape=json" in fake.text
    assert router_init(on).note == "already there"
    set_weights(off, 10)
    assert "ps_json" not in fake.text
    set_weights(on, 20)
    assert f"access_log {tmp_path / 'ps-access.json'} ps_json;" in fake.text
