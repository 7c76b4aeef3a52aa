"""Issue 12, many routers: the `routers:` config, and one change on every router (RouterGroup over
FakeRouters with scripted failures per phase, kills between phases, convergence of differing routers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_steps.adapters import factory
from pipeline_steps.adapters.fakes import FakeAdapters, FakeDockerHost, FakeNotifier, FakeRegistry
from pipeline_steps.adapters.nginx import use_router
from pipeline_steps.adapters.nginx.fake import FakeRouter
from pipeline_steps.adapters.nginx.group import GroupKilled, RouterGroup, names_text, use_kill_after
from pipeline_steps.config import Config, Host, load_config, parse_config
from pipeline_steps.errors import CheckFailed, ConfigError
from pipeline_steps.operations.set_weights import set_weights
from pipeline_steps.operations.switch import switch
from pipeline_steps.operations.traffic import change_lines, load_live, traffic_status
from pipeline_steps.upstreams import UpstreamFile

BASE: dict[str, Any] = {
    "app": "shop", "registry": "127.0.0.1:5999",
    "hosts": [{"name": "host1", "docker": "tcp://fake-1:2375", "address": "10.0.0.1"},
              {"name": "host2", "docker": "tcp://fake-2:2375", "address": "10.0.0.2"}],
    "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": 18082}},
                 "shop": {"context": ".", "slots": {"blue": 18091, "green": 18092}}},
}


def _routers(tmp: Path) -> list[dict[str, Any]]:
    return [{"include": str(tmp / "r1.conf"), "hosts": ["host1"], "url": "http://127.0.0.1:18002"},
            {"include": str(tmp / "r2.conf"), "hosts": ["host2"], "url": "http://127.0.0.2:18002"}]


def _problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    return err.value.problems


# ------------------------------------------------------------------ config


def test_routers_list_is_built_with_names_hosts_and_front(tmp_path: Path) -> None:
    raw = {**BASE, "routers": [
        {"include": str(tmp_path / "a.conf")},
        {"name": "edge2", "include": "/etc/nginx/ps/ups.conf", "container": "nginx-2", "host": "host2"},
        {"include": "/etc/nginx/ps/ups.conf", "container": "nginx-3"}],
        "routers_url": "http://127.0.0.1:8080"}
    config = parse_config(raw)
    r1, r2, r3 = config.routers
    assert [r.name for r in config.routers] == ["router1", "edge2", "router3"]
    assert config.router is r1 and config.routers_url == "http://127.0.0.1:8080"
    assert r1.hosts == ("host1", "host2") and r1.host is None  # a host process lists every host
    assert r2.hosts == ("host2",) and r2.host == "host2"  # a container router: its own host
    assert r3.host == "host1" and r3.hosts == ("host1",)  # default: the first host
    assert config.router_host(r1) is None
    assert config.router_host(r2) is not None and config.router_host(r2).name == "host2"  # type: ignore[union-attr]
    view = config.for_router(r2)
    assert [h.name for h in view.hosts] == ["host2"] and view.routers == (r2,) and view.router is r2


def test_one_router_form_still_works_and_is_routers_0(tmp_path: Path) -> None:
    config = parse_config({**BASE, "router": {"include": str(tmp_path / "a.conf")}})
    assert config.routers == (config.router,) and config.routers_url is None
    assert [h.name for h in config.router_hosts(config.routers[0])] == ["host1", "host2"]


@pytest.mark.parametrize(("change", "where", "words"), [
    ({"router": {"include": "/x/a.conf"}}, "routers", "router and routers both given"),
    ({"routers": []}, "routers", "empty"),
    ({"routers": [{"include": "/x/a.conf", "host": "host2"}]}, "routers[0].host", "only for a router with "
                                                                                 "container"),
    ({"routers": [{"include": "/x/a.conf", "container": "n", "host": "nope"}]}, "routers[0].host",
     "unknown host 'nope'"),
    ({"routers": [{"include": "/x/a.conf", "hosts": ["host1", "hostX"]}]}, "routers[0].hosts[1]",
     "unknown host 'hostX'"),
    ({"routers": [{"include": "/x/a.conf", "name": "r"}, {"include": "/x/b.conf", "name": "r"}]},
     "routers[1].name", "duplicate router name 'r'"),
    ({"routers": [{"include": "/x/a.conf"}, {"include": "/x/a.conf"}]}, "routers[1].include",
     "each router needs its own file"),
])
def test_bad_routers_are_config_errors_with_the_path(change: dict[str, Any], where: str, words: str) -> None:
    raw = {**BASE, "routers": [{"include": "/x/r.conf"}], **change}
    problems = _problems(raw)
    assert any(p.startswith(where) and words in p for p in problems), problems


def test_both_router_forms_exit_2_naming_the_path(ps: Any, workdir: Path) -> None:
    raw = {**BASE, "router": {"include": "/x/a.conf"}, "routers": [{"include": "/x/b.conf"}]}
    (workdir / "ps.yaml").write_text(yaml.safe_dump(raw))
    done = ps("config", "validate")
    assert done.returncode == 2, done.stderr
    assert "ps: ps.yaml: routers: router and routers both given" in done.stderr


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=5))
def test_router_names_must_be_unique(names: list[str]) -> None:
    raw = {**BASE, "routers": [{"name": n, "include": f"/x/{i}.conf"} for i, n in enumerate(names)]}
    if len(set(names)) == len(names):
        assert [r.name for r in parse_config(raw).routers] == names
    else:
        assert any("duplicate router name" in p for p in _problems(raw))


# ------------------------------------------------------------------ one change, all routers


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Config, FakeRouter, FakeRouter]]:
    (tmp_path / "ps.yaml").write_text(yaml.safe_dump({**BASE, "routers": _routers(tmp_path)}))
    config = load_config(tmp_path / "ps.yaml")
    r1, r2 = FakeRouter(path=tmp_path / "r1.conf"), FakeRouter(path=tmp_path / "r2.conf")
    registry = FakeRegistry()
    hosts = {h.name: FakeDockerHost(Host(h.name, docker=h.docker, address=h.address), registry)
             for h in config.hosts}
    with factory.installed(FakeAdapters(hosts, registry, FakeNotifier())):
        use_router({"router1": r1, "router2": r2})
        try:
            yield config, r1, r2
        finally:
            use_router(None)
            use_kill_after(None)


def _addresses(text: str | None, upstream: str) -> list[str]:
    assert text is not None
    up = UpstreamFile.from_text(text).get(upstream)
    assert up is not None
    return [s.address for s in up.servers]


def _weights(text: str | None, upstream: str = "shop_web") -> list[int]:
    assert text is not None
    up = UpstreamFile.from_text(text).get(upstream)
    assert up is not None
    return [s.effective_weight for s in up.servers]


def test_set_weights_goes_to_every_router_each_with_its_own_hosts(two: tuple[Config, FakeRouter,
                                                                              FakeRouter]) -> None:
    config, r1, r2 = two
    change = set_weights(config, 10)
    assert _addresses(r1.text, "shop_web") == ["10.0.0.1:18081", "10.0.0.1:18082"]
    assert _addresses(r2.text, "shop_web") == ["10.0.0.2:18081", "10.0.0.2:18082"]
    assert _weights(r1.text) == _weights(r2.text) == [900, 100]
    assert r1.reloads == r2.reloads == 1 and r1.loaded == r1.text and r2.loaded == r2.text
    assert [r.router for r in change.routers] == ["router1", "router2"]
    assert [r.hosts for r in change.routers] == [["host1"], ["host2"]]
    assert all(r.reloaded for r in change.routers) and change.reloaded
    lines = change_lines(change)
    assert any(ln.startswith("  router2 (host2): reloaded") for ln in lines), lines
    status = traffic_status(config)
    assert [s.router for s in status.routers] == ["router1", "router2"]
    assert [next(v.split for v in s.services if v.service == "web") for s in status.routers] == [
        {"stable": 90.0, "canary": 10.0}] * 2
    assert not status.warnings


def test_test_failure_on_router2_restores_router1(two: tuple[Config, FakeRouter, FakeRouter]) -> None:
    config, r1, r2 = two
    set_weights(config, 10)
    before1, before2 = r1.text, r2.text
    r2.fail_test = "unknown directive \"bogus\""
    with pytest.raises(CheckFailed) as err:
        set_weights(config, 40)
    assert err.value.exit_code == 1
    assert err.value.message.startswith("router2: nginx -t rejected the change")
    assert err.value.message.endswith("; router1 and router2 restored")
    assert (r1.text, r2.text) == (before1, before2)
    assert r1.reloads == 1 and r2.reloads == 1  # nothing was reloaded in phase 1
    assert r1.restores == 1


def test_reload_failure_on_router2_restores_and_reloads_back_router1(
        two: tuple[Config, FakeRouter, FakeRouter]) -> None:
    config, r1, r2 = two
    set_weights(config, 10)
    before1, before2 = r1.text, r2.text
    r2.fail_reload = "bind() to 0.0.0.0:80 failed"
    with pytest.raises(CheckFailed) as err:
        set_weights(config, 40)
    assert err.value.message.startswith("router2: nginx could not apply the new config")
    assert "router1 and router2 restored" in err.value.message
    assert (r1.text, r2.text) == (before1, before2)
    assert r1.loaded == before1  # router1 had taken 40 %: reloaded back to 10 %
    assert r1.reloads == 3  # the 10 %, the 40 %, the reload back


def test_verify_failure_restores_every_router(two: tuple[Config, FakeRouter, FakeRouter]) -> None:
    config, r1, r2 = two
    set_weights(config, 10)
    before1, before2 = r1.text, r2.text
    r1.fail_verify = "nginx master gone"
    with pytest.raises(CheckFailed) as err:
        switch(config, "green")
    assert err.value.message.startswith("router1: the change did not hold: nginx master gone")
    assert (r1.text, r2.text) == (before1, before2)
    assert (r1.loaded, r2.loaded) == (before1, before2)


def test_a_failing_reload_back_is_named(two: tuple[Config, FakeRouter, FakeRouter]) -> None:
    config, r1, r2 = two
    set_weights(config, 10)
    r2.fail_reload = "boom"
    r1.fail_reload_back = "no master"
    with pytest.raises(CheckFailed) as err:
        set_weights(config, 40)
    assert "router1: reloading the restored file failed: no master" in err.value.message


@pytest.mark.parametrize("phase", [1, 2])
def test_a_kill_between_phases_leaves_valid_files_and_the_next_change_converges(
        two: tuple[Config, FakeRouter, FakeRouter], phase: int) -> None:
    config, r1, r2 = two
    set_weights(config, 10)
    use_kill_after(phase)
    with pytest.raises(GroupKilled):
        set_weights(config, 40)
    use_kill_after(None)
    # every router holds a file that passed nginx -t (phase 1 tests it before anything is reloaded)
    assert _weights(r1.text) == _weights(r2.text) == [600, 400]
    assert (r1.loaded == r1.text) is (phase == 2)
    set_weights(config, 70)
    assert _weights(r1.text) == _weights(r2.text) == [300, 700]
    assert r1.loaded == r1.text and r2.loaded == r2.text


def test_the_same_change_after_a_kill_before_the_reload_reloads_it(
        two: tuple[Config, FakeRouter, FakeRouter]) -> None:
    """Killed after phase 1: the files are right, nginx is not; the same change again must reload."""
    config, r1, r2 = two
    set_weights(config, 10)
    use_kill_after(1)
    with pytest.raises(GroupKilled):
        set_weights(config, 40)
    use_kill_after(None)
    assert r1.loaded != r1.text and r2.loaded != r2.text
    again = set_weights(config, 40)
    assert again.reloaded and r1.loaded == r1.text and r2.loaded == r2.text
    assert not set_weights(config, 40).reloaded  # nothing pending any more: no reload


def test_a_router_that_differs_is_warned_and_rewritten_by_the_next_change(
        two: tuple[Config, FakeRouter, FakeRouter]) -> None:
    config, r1, r2 = two
    set_weights(config, 10)
    switch(config, "blue")
    # a kill in the middle of phase 1 (or a hand edit): router2 alone says 50 %
    r2.text = r2.text.replace("weight=900", "weight=500").replace("weight=100", "weight=500")  # type: ignore[union-attr]
    warned: list[str] = []
    live = load_live(config, warned.append)
    assert live is not None and _weights(live.render()) == [900, 100]  # router 1's is used
    assert len(warned) == 1 and warned[0].startswith("router2: web is stable 500 : canary 500 (50.0 %) "
                                                     "while router1 says stable 900 : canary 100")
    assert any(w.startswith("router2: web") for w in traffic_status(config).warnings)
    change = switch(config, "green")  # a change of another service brings router2 back too
    assert _weights(r2.text) == [900, 100]
    assert any("router2: web was stable 500 : canary 500 (50.0 %), rewritten to stable 900 : canary 100"
               in w for w in change.warnings), change.warnings
    assert not traffic_status(config).warnings


def test_group_runs_the_reloads_in_parallel_and_names_lists() -> None:
    routers = [(f"router{i}", FakeRouter(path=Path(f"/fake/{i}.conf"))) for i in range(1, 5)]
    group = RouterGroup(routers, workers=2)  # type: ignore[arg-type]
    done = group.apply({name: f"# {name}\n" for name, _ in routers})
    assert all(r.reloaded for r in done.results.values()) and len(done.results) == 4
    assert names_text(["a"]) == "a" and names_text(["a", "b", "c"]) == "a, b and c"
    again = group.apply({name: f"# {name}\n" for name, _ in routers})
    assert not any(r.changed for r in again.results.values())


def test_dry_run_on_many_routers_writes_nothing(two: tuple[Config, FakeRouter, FakeRouter]) -> None:
    config, r1, r2 = two
    change = set_weights(config, 10, dry_run=True)
    assert r1.text is None and r2.text is None and change.changed and not change.reloaded


# ------------------------------------------------------------------ reads: verify-weights, status, history


def _sender(shares: dict[str, float]) -> Any:
    """A TrafficSender answering from each url's own router: 2xx naming a server of host1 (router1's
    url), host2 (router2's) or both (the front), the canary answering `shares[url]` of the time."""
    from pipeline_steps.adapters.traffic_probe import Answer, ProbeRun

    hosts = {"http://127.0.0.1:18002": ["10.0.0.1"], "http://127.0.0.2:18002": ["10.0.0.2"],
             "http://127.0.0.1:18080": ["10.0.0.1", "10.0.0.2"]}

    def send(url: str, n: int, **_: Any) -> ProbeRun:
        canary = round(n * shares[url])
        answers = [Answer(200, f"{hosts[url][i % len(hosts[url])]}:{18082 if i < canary else 18081}")
                   for i in range(n)]
        return ProbeRun(url=url, wanted=n, answers=answers)

    return send


def test_verify_weights_measures_through_each_router_and_the_front(
        two: tuple[Config, FakeRouter, FakeRouter]) -> None:
    from dataclasses import replace

    from pipeline_steps.operations.verify_weights import verify_weights

    config, _, _ = two
    config = replace(config, routers_url="http://127.0.0.1:18080")
    set_weights(config, 10)
    right = {"http://127.0.0.1:18002": 0.1, "http://127.0.0.2:18002": 0.1, "http://127.0.0.1:18080": 0.1}
    result = verify_weights(config, expect_canary=10, probe=400, services=["web"], sender=_sender(right))
    assert result.ok, result.problems()
    assert [(r["router"], r["hosts"], r["url"]) for r in result.routers] == [
        ("router1", ["host1"], "http://127.0.0.1:18002"), ("router2", ["host2"], "http://127.0.0.2:18002")]
    assert [r["services"][0]["measured"]["valid"] for r in result.routers] == [400, 400]
    assert result.front is not None and result.front["measured"]["valid"] == 400
    # the front sends 25 % to the canary (one router at 40 %): caught, and named
    wrong = {**right, "http://127.0.0.1:18080": 0.25}
    bad = verify_weights(config, expect_canary=10, probe=400, services=["web"], sender=_sender(wrong))
    assert not bad.ok and bad.problems()[0].startswith("front http://127.0.0.1:18080: web: canary answered "
                                                       "100 of 400")
    # router2's answers naming host1's servers are not router2's: invalid, and named router2
    swapped = verify_weights(config, expect_canary=10, probe=50, services=["web"], sender=lambda url, n, **kw:
                             _sender(right)("http://127.0.0.1:18002", n))
    assert any(p.startswith("router2: web: 50 of 50 answers") for p in swapped.problems()), swapped.problems()


def test_the_split_measures_of_one_verification_share_its_99_percent(
        two: tuple[Config, FakeRouter, FakeRouter]) -> None:
    """Two routers and the front are three measures: each is judged at 1 - 0.01/3, so a right split fails
    one of them at most 1 % of the time (not 3 %); a count just outside the 99 % interval passes them."""
    from dataclasses import replace

    from pipeline_steps.operations.verify_weights import family_confidence, verify_weights
    from pipeline_steps.weights import binomial_interval

    assert family_confidence(1) == 0.99 and family_confidence(0) == 0.99
    assert abs(family_confidence(3) - (1 - 0.01 / 3)) < 1e-12
    config, _, _ = two
    config = replace(config, routers_url="http://127.0.0.1:18080")
    set_weights(config, 10)
    n = 400
    _, high99 = binomial_interval(n, 0.1, 0.99)
    _, high3 = binomial_interval(n, 0.1, family_confidence(3))
    assert high3 > high99  # the family's intervals are wider
    edge = (high99 + 1) / n  # outside one 99 % interval, inside each of three
    shares = {"http://127.0.0.1:18002": edge, "http://127.0.0.2:18002": 0.1, "http://127.0.0.1:18080": 0.1}
    result = verify_weights(config, expect_canary=10, probe=n, services=["web"], sender=_sender(shares))
    assert result.ok, result.problems()
    measured = [r["services"][0]["measured"] for r in result.routers] + [result.front["measured"]]
    assert {m["confidence"] for m in measured} == {family_confidence(3)}
    beyond = {**shares, "http://127.0.0.1:18002": (high3 + 1) / n}
    bad = verify_weights(config, expect_canary=10, probe=n, services=["web"], sender=_sender(beyond))
    assert not bad.ok and "outside the 99.6667 % interval" in bad.problems()[0], bad.problems()
    # one router and no front: one measure, judged at 99 %, and the same count fails it
    one = replace(config.for_router(config.routers[0]), routers_url=None)
    alone = verify_weights(one, expect_canary=10, probe=n, services=["web"], url="http://127.0.0.1:18002",
                           sender=_sender(shares))
    assert not alone.ok and len(alone.problems()) == 1, alone.problems()
    assert "outside the 99 % interval" in alone.problems()[0]


def test_verify_weights_names_the_router_whose_weights_are_off(two: tuple[Config, FakeRouter,
                                                                            FakeRouter]) -> None:
    from pipeline_steps.operations.verify_weights import verify_weights

    config, _, r2 = two
    set_weights(config, 10)
    r2.text = r2.text.replace("weight=900", "weight=500").replace("weight=100", "weight=500")  # type: ignore[union-attr]
    result = verify_weights(config, expect_canary=10, services=["web"])
    assert not result.ok and result.routers[0]["ok"] and not result.routers[1]["ok"]
    assert result.problems()[0].startswith("router2: web")


def test_status_shows_every_router_and_exits_1_on_a_weight_mismatch(
        two: tuple[Config, FakeRouter, FakeRouter]) -> None:
    from pipeline_steps.operations.status import slot_status

    config, _, r2 = two
    set_weights(config, 10)
    result = slot_status(config)
    assert [(r.router, r.hosts, r.splits["web"]) for r in result.routers] == [
        ("router1", ["host1"], "stable 900 : canary 100 (10.0 %)"),
        ("router2", ["host2"], "stable 900 : canary 100 (10.0 %)")]
    assert not [m for m in result.mismatches if "routers" in m]
    r2.text = r2.text.replace("weight=900", "weight=600").replace("weight=100", "weight=400")  # type: ignore[union-attr]
    result = slot_status(config)
    assert not result.ok
    assert ("web: weights differ between routers (router1=stable 900 : canary 100 (10.0 %), "
            "router2=stable 600 : canary 400 (40.0 %))") in result.mismatches


def test_status_matches_an_unreachable_host_by_its_name_not_its_message(
        two: tuple[Config, FakeRouter, FakeRouter]) -> None:
    from pipeline_steps.adapters.fakes import FakeAdapters
    from pipeline_steps.errors import Unreachable
    from pipeline_steps.operations.status import slot_status

    config, _, _ = two

    class Down(FakeAdapters):
        def docker(self, host: Host, timeout: float = 60.0) -> Any:
            if host.name == "host2":
                raise Unreachable("the second engine said nothing", host="host2")  # no "host host2 " in it
            return super().docker(host, timeout)

    registry = FakeRegistry()
    engines = {h.name: FakeDockerHost(Host(h.name, docker=h.docker, address=h.address), registry)
               for h in config.hosts}
    engines["host1"].add_image("127.0.0.1:5999/shop/web:b1")
    with factory.installed(Down(engines, registry, FakeNotifier())):
        result = slot_status(config)
    assert result.unreachable_hosts == ["host2"]
    assert not result.mismatches  # host2 unreachable: its missing slots are no mismatch


def test_history_and_report_name_the_hosts_and_routers(two: tuple[Config, FakeRouter, FakeRouter],
                                                       tmp_path: Path) -> None:
    from pipeline_steps.deploy.history import HistoryLog, acted_on
    from pipeline_steps.deploy.report import RunReport

    config, _, _ = two
    where = acted_on(config, ["web"])
    assert where == {"hosts": ["host1", "host2"], "routers": ["router1", "router2"]}
    log = HistoryLog(tmp_path / "state")
    log.record(app="shop", type="stable", result="ok", **where)
    entry = log.read().entries[-1]
    assert (entry.hosts, entry.routers) == (["host1", "host2"], ["router1", "router2"])
    report = RunReport(app="shop", deploy_type="stable", hosts=where["hosts"], routers=where["routers"])
    assert report.to_dict()["routers"] == ["router1", "router2"] and "router1, router2" in report.html()


def test_router_init_writes_every_router_with_its_own_hosts(
        two: tuple[Config, FakeRouter, FakeRouter]) -> None:
    from pipeline_steps.operations.router import router_init

    config, r1, r2 = two
    result = router_init(config)
    assert [r.router for r in result.routers] == ["router1", "router2"]
    assert all(r.written for r in result.routers)
    assert _addresses(r1.text, "shop_web") == ["10.0.0.1:18081", "10.0.0.1:18082"]
    assert _addresses(r2.text, "shop_web") == ["10.0.0.2:18081", "10.0.0.2:18082"]
    assert router_init(config).routers[1].note == "already there"


def test_deploy_ops_warn_of_a_differing_router_and_measure_each_router_and_the_front(
        two: tuple[Config, FakeRouter, FakeRouter], monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from pipeline_steps.deploy.ops import RealOps
    from pipeline_steps.operations import verify_weights

    config, _, r2 = two
    config = replace(config, routers_url="http://127.0.0.1:18080")
    said: list[str] = []
    warned: list[str] = []
    ops = RealOps(config, None, said.append, warned.append, "canary-auto")
    ops.set_weights(10, ["web"])
    assert any(s.startswith("  router2 (host2): reloaded") for s in said), said
    right = {"http://127.0.0.1:18002": 0.1, "http://127.0.0.2:18002": 0.1, "http://127.0.0.1:18080": 0.1}
    monkeypatch.setattr(verify_weights, "send_probe", _sender(right))
    config = replace(config, canary=replace(config.canary, probe=200))
    ops = RealOps(config, None, said.append, warned.append, "canary-auto")
    verdicts = ops.measure(config.services["web"], 10, None)
    assert [v["service"] for v in verdicts] == ["web @router1", "web @router2", "web @front"]
    assert all(not v["problems"] and v["measured"]["valid"] == 200 for v in verdicts), verdicts
    assert ops.verify(["web"], 10, None) == []
    r2.text = r2.text.replace("weight=900", "weight=500").replace("weight=100", "weight=500")  # type: ignore[union-attr]
    assert ops.canary_percent(["web"]) == {"web": 10.0}  # router 1's
    assert warned and warned[-1].startswith("router2: web is stable 500 : canary 500")
    assert ops.verify(["web"], 10, None)[0].startswith("router2: web")


def test_config_validate_lists_every_router(ps: Any, workdir: Path) -> None:
    raw = {**BASE, "routers": [{"include": str(workdir / "a.conf"), "hosts": ["host1"]},
                               {"include": "/etc/nginx/ps/ups.conf", "container": "edge-2", "host": "host2"}],
           "routers_url": "http://127.0.0.1:8080"}
    (workdir / "ps.yaml").write_text(yaml.safe_dump(raw))
    done = ps("config", "validate")
    assert done.returncode == 0, done.stderr
    assert f"router router1: local nginx, include {workdir / 'a.conf'}, hosts host1" in done.stdout
    assert ("router router2: container edge-2 on host2, include /etc/nginx/ps/ups.conf, hosts host2"
            in done.stdout)
    assert "routers_url: http://127.0.0.1:8080" in done.stdout


def test_two_real_controls_in_one_directory_take_its_lock_once(tmp_path: Path) -> None:
    """Two nginx includes in one directory share ps-backups/.lock: the group must not wait on itself."""
    import threading

    from pipeline_steps.adapters.nginx.control import NginxControl
    from pipeline_steps.config import NginxRouter

    class NoNginx(NginxControl):  # the real lock and file helpers; no nginx behind them
        def stage(self, text: str, *, dry_run: bool = False) -> Any:
            from pipeline_steps.adapters.nginx.control import ApplyResult, Staged

            return Staged(None, text, ApplyResult(path=str(self.path), changed=False))

    members = [(f"router{i}", NoNginx(NginxRouter(include=str(tmp_path / f"r{i}.conf"), name=f"router{i}")))
               for i in (1, 2)]
    finished = threading.Event()

    def run() -> None:
        RouterGroup(members).apply({"router1": "a", "router2": "b"})  # type: ignore[arg-type]
        finished.set()

    threading.Thread(target=run, daemon=True).start()
    assert finished.wait(10), "the group waited on its own lock"


def test_a_routers_address_takes_the_services_path() -> None:
    """routers[].url and routers_url are addresses: the probe asks each for the service's own path."""
    from pipeline_steps.operations.verify_weights import through

    config = parse_config({"app": "shop", "registry": "r", "hosts": [{"name": "a"}],
                           "services": {"web": {"slots": {"stable": 8001, "canary": 8002},
                                                "url": "http://front.example/web/?x=1"},
                                        "api": {"slots": {"stable": 8003, "canary": 8004}}},
                           "router": {"include": "/tmp/ps-up.conf"}})
    web, api = config.services["web"], config.services["api"]
    assert through("http://127.0.0.1:8002", web) == "http://127.0.0.1:8002/web/?x=1"
    assert through("http://127.0.0.1:8002/", web) == "http://127.0.0.1:8002/web/?x=1"
    assert through("http://127.0.0.1:8002/own/", web) == "http://127.0.0.1:8002/own/"  # a path given: kept
    assert through("http://127.0.0.1:8002", api) == "http://127.0.0.1:8002"  # no service url: as given
