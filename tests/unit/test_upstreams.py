"""The include file model: crossplane parse/render round trips, services <-> server lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_steps.config import Host, parse_config
from pipeline_steps.upstreams import (
    MalformedUpstreams,
    ServerLine,
    Upstream,
    UpstreamFile,
    active_color,
    blue_green_upstream,
    canary_upstream,
    carries_traffic,
    initial_file,
    slot_weights,
)
from pipeline_steps.weights import Weights

HOSTS = (Host("a", address="127.0.0.1"), Host("b", address="127.0.0.2"))


def make_config(tmp_path: Path, hosts: int = 1):  # type: ignore[no-untyped-def]
    raw = {
        "app": "shop", "registry": "127.0.0.1:5000",
        "hosts": [{"name": h.name, "address": h.address} for h in HOSTS[:hosts]],
        "services": {"backend": {"slots": {"stable": 8081, "canary": 8082}},
                     "web": {"slots": {"blue": 8091, "green": 8092}}},
        "router": {"include": str(tmp_path / "ups.conf")},
    }
    return parse_config(raw, base_dir=tmp_path)


def test_parse_the_documented_example() -> None:
    f = UpstreamFile.from_text(
        "upstream shop_backend { server 127.0.0.1:8081 weight=900; server 127.0.0.1:8082 weight=100;"
        " keepalive 32; }\n")
    up = f.get("shop_backend")
    assert up is not None
    assert [(s.address, s.weight) for s in up.servers] == [("127.0.0.1:8081", 900), ("127.0.0.1:8082", 100)]
    assert up.others == [{"directive": "keepalive", "args": ["32"]}]


def test_render_keeps_foreign_directives_and_comments() -> None:
    text = ("# hand comment\nupstream other { server 10.0.0.1:80; }\n"
            "server { listen 127.0.0.1:9999; location / { return 204; } }\n")
    f = UpstreamFile.from_text(text)
    f.put(Upstream("shop_backend", [ServerLine("127.0.0.1:8081", weight=5)]))
    again = UpstreamFile.from_text(f.render())
    assert set(again.upstreams()) == {"other", "shop_backend"}
    assert any(d["directive"] == "server" for d in again.directives)
    assert any(d.get("comment") == " hand comment" for d in again.directives)
    # render is stable: rendering the parsed render gives the same text
    assert again.render() == f.render()


def test_put_replaces_in_place() -> None:
    f = UpstreamFile.from_text("upstream a { server x:1; }\nupstream b { server y:2; }\n")
    f.put(Upstream("a", [ServerLine("z:3", weight=7)]))
    names = [d["args"][0] for d in f.directives if d["directive"] == "upstream"]
    assert names == ["a", "b"]
    assert f.upstreams()["a"].servers[0].address == "z:3"


@pytest.mark.parametrize("text", ["upstream a { server x:1;\n", "upstream a { server x:1 weight=abc; }\n",
                                  "upstream a { server ; }\n", "}}\n"])
def test_malformed_file_names_file_and_reason(tmp_path: Path, text: str) -> None:
    path = tmp_path / "ups.conf"
    path.write_text(text)
    with pytest.raises(MalformedUpstreams) as info:
        UpstreamFile.load(path)
    assert str(path) in info.value.message and "nothing was changed" in info.value.message
    assert info.value.exit_code == 2


def test_canary_upstream_per_host_per_slot(tmp_path: Path) -> None:
    config = make_config(tmp_path, hosts=2)
    svc = config.services["backend"]
    up = canary_upstream(svc, config.hosts, Weights.from_percent(10))
    assert [" ".join(s.args()) for s in up.servers] == [
        "127.0.0.1:8081 max_fails=0 weight=900", "127.0.0.1:8082 max_fails=0 weight=100",
        "127.0.0.2:8081 max_fails=0 weight=900", "127.0.0.2:8082 max_fails=0 weight=100"]
    assert slot_weights(up, svc, config.hosts) == {"stable": 1800, "canary": 200}
    assert carries_traffic(up, svc, config.hosts[0], "stable", 1)
    assert carries_traffic(up, svc, config.hosts[1], "canary", 1)
    zero = canary_upstream(svc, config.hosts, Weights.from_percent(0))
    assert not carries_traffic(zero, svc, config.hosts[0], "canary", 1)
    assert not carries_traffic(None, svc, config.hosts[0], "stable", 1)


def test_blue_green_backup_and_active(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    svc = config.services["web"]
    up = blue_green_upstream(svc, config.hosts, "green")
    lines = [" ".join(s.args()) for s in up.servers]
    # issue 9: max_fails=0 (was max_fails=3 fail_timeout=30s): nginx never marks a ps server failed
    assert lines == ["127.0.0.1:8091 max_fails=0 backup", "127.0.0.1:8092 max_fails=0"]
    assert active_color(up, svc, config.hosts) == "green"
    assert carries_traffic(up, svc, config.hosts[0], "green", 1)
    assert not carries_traffic(up, svc, config.hosts[0], "blue", 1)


def test_initial_file_from_config(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    f = initial_file(config, tmp_path / "ups.conf")
    ups = UpstreamFile.from_text(f.render()).upstreams()
    assert set(ups) == {"shop_backend", "shop_web"}
    assert [s.weight for s in ups["shop_backend"].servers] == [999, 1]
    assert active_color(ups["shop_web"], config.services["web"], config.hosts) == "blue"


addresses = st.builds(lambda a, p: f"127.0.{a}.1:{p}", st.integers(0, 255), st.integers(1, 65535))
servers = st.builds(ServerLine, address=addresses, weight=st.none() | st.integers(1, 100_000),
                    backup=st.booleans(), down=st.booleans(),
                    params=st.sampled_from([(), ("max_fails=3", "fail_timeout=30s"), ("max_conns=10",)]))
upstreams = st.builds(Upstream, name=st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
                      servers=st.lists(servers, min_size=1, max_size=6),
                      others=st.sampled_from([[], [{"directive": "keepalive", "args": ["32"]}]]))


@settings(max_examples=60, deadline=None)
@given(ups=st.lists(upstreams, min_size=1, max_size=4, unique_by=lambda u: u.name))
def test_render_parse_round_trip(ups: list[Upstream]) -> None:
    f = UpstreamFile(path=Path("x.conf"))
    for u in ups:
        f.put(u)
    back = UpstreamFile.from_text(f.render()).upstreams()
    assert back == {u.name: u for u in ups}
