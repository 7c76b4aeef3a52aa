"""The sticky split's nginx blocks (issue 13): generated through crossplane, derived from the weights,
monotonic, idempotent, and absent for a ps.yaml without sticky/segments."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_steps import sticky
from pipeline_steps.config import Config, parse_config
from pipeline_steps.upstreams import UpstreamFile, canary_upstream, initial_file
from pipeline_steps.weights import Weights

BASE: dict[str, Any] = {
    "app": "shop", "registry": "127.0.0.1:5000",
    "hosts": [{"name": "a", "address": "127.0.0.1"}, {"name": "b", "address": "127.0.0.2"}],
    "services": {"web": {"context": ".", "slots": {"stable": 8001, "canary": 8002}},
                 "ui": {"context": ".", "slots": {"blue": 8003, "green": 8004}}},
    "router": {"include": "ups.conf"},
}


def config(**canary: Any) -> Config:
    return parse_config({**BASE, "canary": canary})


def file_at(cfg: Config, pct: float) -> UpstreamFile:
    file = initial_file(cfg, "ups.conf")
    web = cfg.services["web"]
    file.put(canary_upstream(web, cfg.hosts, Weights.from_percent(pct, cfg.canary.scale,
                                                                  cfg.canary.min_weight)))
    return file


def by_target(file: UpstreamFile) -> dict[str, dict[str, Any]]:
    return {d["args"][1]: d for d in file.directives if d["directive"] in ("map", "split_clients")}


@given(st.integers(0, 100_000), st.integers(0, 100_000), st.integers(0, 10))
def test_split_percent_is_a_share_in_hundredths(stable: int, canary: int, minimum: int) -> None:
    pct = sticky.split_percent(stable, canary, minimum, minimum)
    assert 0 <= pct <= 100
    assert round(pct * 100) == pytest.approx(pct * 100)  # split_clients reads two decimals
    if canary <= minimum:
        assert pct == 0
    elif stable <= minimum:
        assert pct == 100
    else:
        assert abs(pct - 100 * canary / (stable + canary)) <= 0.005 + 1e-9


@given(st.integers(0, 100), st.integers(0, 100))
def test_split_lines_sum_to_100_and_grow_with_the_weight(a: int, b: int) -> None:
    low, high = sorted((a, b))
    percents = []
    for pct in (low, high):
        w = Weights.from_percent(pct)
        percent = sticky.split_percent(w.stable, w.canary, w.min_weight, w.min_weight)
        block = sticky.split_block("shop_web", percent, "$ps_shop_web")
        heads = [line["directive"] for line in block["block"]]
        assert heads[-1] == "*"  # the rest: the lines always cover 100 %
        assert sum(float(h.rstrip("%")) for h in heads[:-1]) <= 100
        assert "0%" not in heads  # nginx would read 0% as `*`
        percents.append(percent)
    assert percents[0] <= percents[1]


@settings(max_examples=200)
@given(st.text(min_size=0, max_size=40), st.integers(0, 100), st.integers(0, 100))
def test_a_canary_key_stays_on_the_canary_when_the_weight_grows(key: str, a: int, b: int) -> None:
    low, high = sorted((a, b))
    if sticky.decide(key, low) == "canary":
        assert sticky.decide(key, high) == "canary"
    assert sticky.decide(key, 0) == "stable" and sticky.decide(key, 100) == "canary"


def test_murmur2_spreads_keys_evenly() -> None:
    # nginx's own decisions are compared with decide() key by key in tests/integration/test_sticky_split.py
    assert sticky.murmur2(b"") == 0
    assert sticky.decide("k0", 10) in ("stable", "canary")
    share = sum(sticky.decide(f"user-{i}", 10) == "canary" for i in range(20000)) / 20000
    assert 0.09 < share < 0.11


def test_no_sticky_no_change_in_the_include() -> None:
    cfg = config()
    file = file_at(cfg, 10)
    before = file.render()
    assert sticky.apply(cfg, file) is False
    assert file.render() == before


def test_cookie_split_blocks_and_idempotence() -> None:
    cfg = config(sticky="cookie ps_uid")
    file = file_at(cfg, 10)
    assert sticky.apply(cfg, file) is True
    text = file.render()
    assert sticky.apply(cfg, file) is False and file.render() == text
    maps = by_target(file)
    key = maps["$ps_shop_web__key"]
    assert key["args"][0] == "$cookie_ps_uid"
    assert [(e["directive"], e["args"]) for e in key["block"]] == [("", ["$request_id"]),
                                                                  ("default", ["$cookie_ps_uid"])]
    cookie = maps["$ps_shop_web__set_cookie"]["block"][0]["args"][0]
    assert cookie.startswith("ps_uid=$request_id;") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Path=/" in cookie and "Max-Age=" in cookie
    split = maps["$ps_shop_web"]  # no segments: the split is the variable proxy_pass uses
    assert split["directive"] == "split_clients"
    assert [(e["directive"], e["args"]) for e in split["block"]] == [("10%", ["shop_web__canary"]),
                                                                    ("*", ["shop_web__stable"])]
    ups = file.upstreams()
    assert [(s.address, s.backup) for s in ups["shop_web__canary"].servers] == [
        ("127.0.0.1:8002", False), ("127.0.0.2:8002", False),
        ("127.0.0.1:8001", True), ("127.0.0.2:8001", True)]
    assert all("max_fails=0" in s.params for s in ups["shop_web__stable"].servers)
    assert [s.weight for s in ups["shop_web"].servers] == [900, 100, 900, 100]  # the weights stay
    assert "shop_ui__stable" not in ups  # blue/green services get nothing
    assert sticky.read_split(file, "shop_web") == 10.0
    # parsed back from text, the same blocks (crossplane both ways)
    again = UpstreamFile.from_text(text)
    assert sticky.apply(cfg, again) is False


def test_rollback_and_promote_move_every_key() -> None:
    cfg = config(sticky="header X-User-Id")
    file = file_at(cfg, 0)
    sticky.apply(cfg, file)
    split = by_target(file)["$ps_shop_web"]
    assert [(e["directive"], e["args"]) for e in split["block"]] == [("*", ["shop_web__stable"])]
    assert by_target(file)["$ps_shop_web__key"]["args"][0] == "$http_x_user_id"
    assert [s.weight for s in file.upstreams()["shop_web"].servers] == [999, 1, 999, 1]  # idle, observable
    file = file_at(cfg, 100)
    sticky.apply(cfg, file)
    split = by_target(file)["$ps_shop_web"]
    assert [(e["directive"], e["args"]) for e in split["block"]] == [("*", ["shop_web__canary"])]


def test_segments_chain_before_the_split_and_without_sticky() -> None:
    segments = [{"header": "X-Canary", "value": "always"}, {"cookie": "beta", "value": ["0", "no"],
                                                             "to": "stable"}]
    cfg = config(sticky="ip", segments=segments)
    file = file_at(cfg, 40)
    sticky.apply(cfg, file)
    maps = by_target(file)
    first = maps["$ps_shop_web"]
    assert first["args"][0] == "$http_x_canary"
    assert [(e["directive"], e["args"]) for e in first["block"]] == [
        ("always", ["shop_web__canary"]), ("default", ["$ps_shop_web__seg1"])]
    second = maps["$ps_shop_web__seg1"]
    assert second["args"][0] == "$cookie_beta"
    assert [(e["directive"], e["args"]) for e in second["block"]] == [
        ("0", ["shop_web__stable"]), ("no", ["shop_web__stable"]), ("default", ["$ps_shop_web__split"])]
    assert maps["$ps_shop_web__key"]["block"] == [{"directive": "default", "args": ["$remote_addr"]}]
    assert "$ps_shop_web__set_cookie" not in maps  # only a cookie key sets a cookie
    # segments alone: the fallback is the weighted upstream (split per request)
    cfg = config(segments=segments[:1])
    file = file_at(cfg, 40)
    sticky.apply(cfg, file)
    maps = by_target(file)
    assert maps["$ps_shop_web"]["block"][-1] == {"directive": "default", "args": ["shop_web"]}
    assert "split_clients" not in [d["directive"] for d in file.directives]


def test_turning_sticky_off_removes_the_blocks() -> None:
    on, off = config(sticky="cookie ps_uid"), config()
    file = file_at(on, 10)
    plain = file.render()
    sticky.apply(on, file)
    assert sticky.apply(off, file) is True
    assert file.render() == plain


def test_location_lines_and_modes() -> None:
    cfg = config(sticky="cookie ps_uid", segments=[{"header": "X-Canary", "value": "always"}])
    web = cfg.services["web"]
    assert sticky.location_lines(cfg, web) == ["proxy_pass http://$ps_shop_web;",
                                              "add_header Set-Cookie $ps_shop_web__set_cookie;"]
    assert sticky.describe_mode(cfg.canary) == ("sticky by cookie ps_uid; segments: "
                                                "header X-Canary=always -> canary")
    assert sticky.describe_mode(config().canary) == "per request"
    assert sticky.location_lines(config(), web) == ["proxy_pass http://shop_web;"]


@pytest.mark.parametrize("canary, message", [
    ({"sticky": "cookie my-id"}, "canary.sticky: must be `cookie NAME`"),
    ({"sticky": "hash"}, "canary.sticky: must be"),
    ({"segments": [{"header": "X", "cookie": "y", "value": "a"}]}, "needs exactly one of header or cookie"),
    ({"segments": [{"header": "X", "value": "default"}]}, "reserves"),
    ({"segments": [{"header": "X", "value": "a b"}]}, "must be letters"),
    ({"segments": [{"header": "X", "value": "a", "to": "blue"}]}, "canary.segments[0].to"),
])
def test_bad_sticky_config_is_refused(canary: dict[str, Any], message: str) -> None:
    from pipeline_steps.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        config(**canary)
    assert message in str(caught.value)


def _run(slots: dict[str, list[str | None]], key: str = "cookie ps_uid") -> Any:
    from pipeline_steps.adapters.key_probe import KeyAnswers, KeyedRun
    from pipeline_steps.adapters.traffic_probe import Answer

    run = KeyedRun(url="http://127.0.0.1:1/", wanted=len(slots), key=key)
    for k, got in slots.items():
        run.keys.append(KeyAnswers(k, tuple(Answer(200 if s else 502, s) for s in got)))
    return run


def _slot_of(answer: Any) -> tuple[str | None, str]:
    return (answer.upstream, "") if answer.status == 200 else (None, f"status {answer.status}")


def _where(keys: list[str], percent: float) -> dict[str, list[str | None]]:
    """Each key answered twice from the slot split_clients gives it at `percent`."""
    return {k: [sticky.decide(k, percent)] * 2 for k in keys}


def test_measure_keys_counts_keys_not_requests() -> None:
    keys = _where([f"k{i}" for i in range(1000)], 10.0)
    measured, problems = sticky.measure_keys("web", _run(keys), _slot_of, 10.0)
    assert problems == []
    assert measured["by"] == "keys" and measured["valid"] == 1000 and measured["requests"] == 2000
    hits = sum(slots[0] == "canary" for slots in keys.values())
    assert measured["share"] == hits / 1000 and measured["keys_on_both_slots"] == 0
    assert measured["keys_off_their_slot"] == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9999).map(lambda n: n / 100), st.integers(0, 2**32))
def test_a_right_sticky_split_never_fails_by_chance(percent: float, seed: int) -> None:
    """Keys are judged one by one against nginx's own decision: fresh random keys, however unlucky
    their share, never fail a right split (a binomial interval did 1 % of the time)."""
    import random

    from pipeline_steps.adapters.key_probe import new_keys

    keys = _where(new_keys("cookie", 50, random.Random(seed)), percent)
    assert sticky.measure_keys("web", _run(keys), _slot_of, percent)[1] == []


def test_measure_keys_problems() -> None:
    keys = _where([f"k{i}" for i in range(1000)], 10.0)
    canary = [k for k, slots in keys.items() if slots[0] == "canary"]
    stable = [k for k, slots in keys.items() if slots[0] == "stable"]
    keys[stable[0]] = ["stable", "canary"]
    keys[stable[1]] = ["stable", None]
    keys[canary[0]] = ["stable", "stable"]  # on stable, where split_clients says canary
    measured, problems = sticky.measure_keys("web", _run(keys), _slot_of, 10.0)
    assert measured["keys_on_both_slots"] == 1 and measured["keys_off_their_slot"] == 1
    assert any("1 answers of the keyed probe did not count (status 502)" in p for p in problems)
    assert any(f"1 of 1000 keys reached both slots (e.g. {stable[0]})" in p for p in problems)
    off = f"reached another slot than the live split (10 %) gives them, e.g. {canary[0]} on stable"
    assert any(p.startswith("web: 1 of 1000 keys ") and off in p and "set_real_ip_from" not in p
               for p in problems), problems
    _, by_ip = sticky.measure_keys("web", _run(keys, key="client ip"), _slot_of, 10.0)
    assert any("set_real_ip_from" in p for p in by_ip)


def test_new_keys_are_distinct() -> None:
    from pipeline_steps.adapters.key_probe import key_headers, new_keys

    assert len(set(new_keys("cookie", 500))) == 500
    ips = new_keys("ip", 500)
    assert len(set(ips)) == 500 and all(ip.startswith("10.") for ip in ips)
    assert key_headers("cookie", "ps_uid", "a") == {"Cookie": "ps_uid=a"}
    assert key_headers("header", "X-User", "a") == {"X-User": "a"}
    assert key_headers("ip", None, "10.0.0.1") == {"X-Forwarded-For": "10.0.0.1"}


def test_probe_keys_are_fresh_each_probe_unless_a_seed_fixes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_steps.adapters.key_probe import SEED_ENV, new_keys

    monkeypatch.delenv(SEED_ENV, raising=False)
    assert new_keys("cookie", 50) != new_keys("cookie", 50)  # 2^-64-ish odds of a repeat
    monkeypatch.setenv(SEED_ENV, "42")
    assert new_keys("cookie", 50) == new_keys("cookie", 50) and new_keys("ip", 50) == new_keys("ip", 50)
    assert new_keys("ip", 50) != new_keys("cookie", 50)
    monkeypatch.setenv(SEED_ENV, "43")
    fixed = new_keys("cookie", 50)
    monkeypatch.setenv(SEED_ENV, "42")
    assert new_keys("cookie", 50) != fixed
