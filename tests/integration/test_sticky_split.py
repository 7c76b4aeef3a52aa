"""Sticky canaries and segments (issue 13) on real nginx: two local backends (stable, canary) behind nginx,
`ps set-weights` through the CLI, and thousands of keyed requests checked answer by answer.

A request counts only when it is 200, its X-Upstream's last address is the server of the slot its X-Slot
names, and the backend that answered is one of the service's two. Loopback only, bounded in requests.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_steps import sticky
from pipeline_steps.weights import binomial_interval
from testbed.backends import Backend, start_backend
from testbed.keepalive_load import KeepAliveLoad, Route
from testbed.nginx import Nginx, last_json
from testbed.ports import address

pytestmark = pytest.mark.slow
KEYS = 2000
COOKIE = "ps_uid"
UPSTREAM = "shop_backend"
LOCATION = f"""\
    server {{
        listen {{address}}:{{port}};
{{proxy_defaults}}        location /backend/ {{
            proxy_pass http://$ps_{UPSTREAM};
            add_header Set-Cookie $ps_{UPSTREAM}__set_cookie;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
"""


@dataclass
class StickySite:
    nginx: Nginx
    stable: Backend
    canary: Backend
    config_path: Path

    @property
    def servers(self) -> dict[str, str]:
        return {self.stable.address: "stable", self.canary.address: "canary"}


def make_site(nginx_factory: Callable[..., Nginx], workdir: Path, key: str = f"cookie {COOKIE}",
              server_extra: str = "") -> StickySite:
    """Two backends, nginx in front with ps's first include (sticky by `key`, two segments), ps.yaml."""
    from pipeline_steps.config import parse_config
    from pipeline_steps.upstreams import initial_file

    stable, canary = start_backend("stable"), start_backend("canary")
    raw: dict[str, Any] = {
        "app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(workdir / "state"),
        "hosts": [{"name": "local", "address": address()}],
        "services": {"backend": {"context": ".", "slots": {"stable": stable.port, "canary": canary.port}}},
        "canary": {"sticky": key, "segments": [
            {"header": "X-Canary", "value": "always", "to": "canary"},
            {"header": "X-Canary", "value": "never", "to": "stable"}]},
    }
    first = parse_config({**raw, "router": {"include": "ups.conf"}}, base_dir=workdir)
    include = initial_file(first, workdir / "ups.conf")
    sticky.apply(first, include)
    server = LOCATION if key.startswith("cookie") else LOCATION.replace(
        f"            add_header Set-Cookie $ps_{UPSTREAM}__set_cookie;\n", "")
    nginx = nginx_factory(server.replace("{proxy_defaults}", "{proxy_defaults}" + server_extra),
                          include.render())
    raw["router"] = {"include": str(nginx.include), "url": nginx.url,
                     "nginx": {"prefix": str(nginx.prefix), "conf": str(nginx.conf),
                               "error_log": str(nginx.error_log)}}
    path = workdir / "ps.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return StickySite(nginx, stable, canary, path)


@pytest.fixture
def site(nginx_factory: Callable[..., Nginx], workdir: Path) -> Iterator[StickySite]:
    made = make_site(nginx_factory, workdir)
    yield made
    made.stable.stop()
    made.canary.stop()


def slot_of(status: int, headers: http.client.HTTPMessage, servers: dict[str, str]) -> str:
    """The slot of a counted answer; AssertionError for one that does not count."""
    assert status == 200, status
    last = (headers.get("X-Upstream") or "").split(",")[-1].split(" : ")[-1].strip()
    assert last in servers, headers.get("X-Upstream")
    assert headers.get("X-Slot") == servers[last], (headers.get("X-Slot"), last)
    return servers[last]


def send(port: int, keys: list[str], servers: dict[str, str], *, repeat: int = 2,
         headers: Callable[[str], dict[str, str]] | None = None, workers: int = 4) -> dict[str, list[str]]:
    """`repeat` requests per key (cookie ps_uid=<key>, or `headers(key)`), over a few keep-alive
    connections; the slots each key's answers came from."""
    out: dict[str, list[str]] = {}
    lock = threading.Lock()
    failures: list[str] = []
    make = headers or (lambda k: {"Cookie": f"{COOKIE}={k}"})

    def work(part: list[str]) -> None:
        conn = http.client.HTTPConnection(address(), port, timeout=10)
        try:
            for key in part:
                got = []
                for _ in range(repeat):
                    conn.request("GET", "/backend/k", headers=make(key))
                    answer = conn.getresponse()
                    answer.read()
                    got.append(slot_of(answer.status, answer.headers, servers))
                with lock:
                    out[key] = got
        except Exception as exc:  # reported below, in the test's thread
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=work, args=(keys[i::workers],)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]
    assert len(out) == len(keys)
    return out


def set_weights(ps: Any, site: StickySite, pct: int) -> dict[str, Any]:
    done = ps("--json", "--config", str(site.config_path), "set-weights", "--canary", str(pct))
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["reloaded"] or not result["changed"]
    return result


def canary_keys(seen: dict[str, list[str]]) -> set[str]:
    return {k for k, slots in seen.items() if slots[0] == "canary"}


def test_sticky_split_by_cookie_through_10_40_70_and_back(site: StickySite, ps: Any,
                                                          nginx_factory: Callable[..., Nginx]) -> None:
    keys = [f"user-{i:05d}-{i * 7919 % 10007}" for i in range(KEYS)]
    routes = [Route("backend", "/backend/", site.servers)]
    on_canary: dict[int, set[str]] = {}
    with KeepAliveLoad(site.nginx.port, routes, rate=40, max_seconds=240, workers=4) as load:
        for pct in (10, 40, 70):
            set_weights(ps, site, pct)
            seen = send(site.nginx.port, keys, site.servers)
            both = [k for k, slots in seen.items() if len(set(slots)) > 1]
            assert both == []  # 0 keys saw both versions inside the step
            on_canary[pct] = canary_keys(seen)
            low, high = binomial_interval(KEYS, pct / 100, 0.99)
            assert low <= len(on_canary[pct]) <= high, (pct, len(on_canary[pct]))
            # nginx decides as split_clients is documented to: MurmurHash2 ranges, key by key
            assert on_canary[pct] == {k for k in keys if sticky.decide(k, pct) == "canary"}
        kept_40 = len(on_canary[10] & on_canary[40]) / len(on_canary[10])
        kept_70 = len(on_canary[10] & on_canary[70]) / len(on_canary[10])
        assert kept_40 >= 0.99 and kept_70 >= 0.99 and len(on_canary[40] & on_canary[70]) / len(
            on_canary[40]) >= 0.99
        print(f"sticky: canary keys at 10/40/70 %: {[len(on_canary[p]) for p in (10, 40, 70)]} of {KEYS}; "
              f"kept 10->40 {kept_40:.4f}, 10->70 {kept_70:.4f}")

        # the probe of `ps verify-weights` measures by keys, not requests
        probe = ps("--json", "--config", str(site.config_path), "verify-weights", "--expect-canary", "70",
                   "--probe", "1000", "--url", f"{site.nginx.url}/backend/")
        assert probe.returncode == 0, (probe.stdout, probe.stderr)
        measured = last_json(probe.stdout)["services"][0]["measured"]
        assert measured["by"] == "keys" and measured["valid"] == 1000 and measured["keys_on_both_slots"] == 0
        assert measured["interval"][0] <= measured["share"] <= measured["interval"][1]

        # segments: X-Canary always reaches the canary, never never does, whatever the split
        segment = send(site.nginx.port, keys[:200], site.servers,
                       headers=lambda k: {"Cookie": f"{COOKIE}={k}", "X-Canary": "never"})
        assert {s for slots in segment.values() for s in slots} == {"stable"}

        # traffic status names the mode and the live split
        status = ps("--json", "--config", str(site.config_path), "traffic", "status")
        svc = last_json(status.stdout)["services"][0]
        assert svc["mode"].startswith("sticky by cookie ps_uid; segments: header X-Canary=always -> canary")
        assert svc["keys_percent"] == 70.0

        # a second router with a copy of the same include decides the same for every key
        copy = nginx_factory(LOCATION, site.nginx.include.read_text())
        there = send(copy.port, keys, site.servers, repeat=1)
        assert {k: v[0] for k, v in there.items()} == {k: ("canary" if k in on_canary[70] else "stable")
                                                        for k in keys}

        # rollback: traffic back on stable in one reload, every key with it
        backups = site.nginx.include.parent / "ps-backups"
        before = len(list(backups.glob("*.bak"))) if backups.exists() else 0
        set_weights(ps, site, 0)
        assert len(list(backups.glob("*.bak"))) == before + 1  # one change, one backup, one reload
        seen = send(site.nginx.port, keys, site.servers)
        assert {s for slots in seen.values() for s in slots} == {"stable"}
        always = send(site.nginx.port, keys[:200], site.servers,
                      headers=lambda k: {"Cookie": f"{COOKIE}={k}", "X-Canary": "always"})
        assert {s for slots in always.values() for s in slots} == {"canary"}
        load.wait_more(40)
        report = load.stop()
    assert report.sent > 0 and report.failed == 0, report.errors()
    print(f"sticky: keep-alive load during the changes: {report.summary()}")


def test_a_new_user_gets_a_cookie_and_stays_on_its_slot(site: StickySite, ps: Any) -> None:
    from http.cookies import SimpleCookie

    set_weights(ps, site, 40)
    conn = http.client.HTTPConnection(address(), site.nginx.port, timeout=10)
    firsts: dict[str, str] = {}
    try:
        for _ in range(300):
            conn.request("GET", "/backend/first")
            answer = conn.getresponse()
            answer.read()
            first = slot_of(answer.status, answer.headers, site.servers)
            jar = SimpleCookie(answer.headers["Set-Cookie"])
            morsel = jar[COOKIE]
            assert morsel["path"] == "/" and morsel["httponly"] and morsel["samesite"] == "Lax"
            assert int(morsel["max-age"]) >= 24 * 3600
            value = morsel.value
            assert sticky.decide(value, 40) == first  # the split used the value the cookie carries
            for _ in range(2):
                conn.request("GET", "/backend/next", headers={"Cookie": f"{COOKIE}={value}"})
                again = conn.getresponse()
                again.read()
                assert again.headers.get("Set-Cookie") is None  # a known user gets no new cookie
                assert slot_of(again.status, again.headers, site.servers) == first
            firsts[value] = first
    finally:
        conn.close()
    assert len(firsts) == 300 and set(firsts.values()) == {"stable", "canary"}


def test_users_without_sticky_keep_their_include(traffic_bed: Callable[..., Any], ps: Any) -> None:
    bed = traffic_bed({"backend": "canary"})
    done = ps("set-weights", "--canary", "10")
    assert done.returncode == 0, done.stderr
    text = bed.include_text()
    assert "split_clients" not in text and "map " not in text and "__stable" not in text


def test_router_init_writes_the_split_and_prints_the_location_lines(traffic_bed: Callable[..., Any],
                                                                    ps: Any) -> None:
    bed = traffic_bed({"backend": "canary"}, extra={"canary": {"sticky": f"cookie {COOKIE}"}})
    assert "split_clients" not in bed.include_text()  # an include from before sticky was turned on
    done = ps("router", "init")
    assert done.returncode == 0, done.stderr
    assert (f"backend: sticky split / segments: the location needs proxy_pass http://$ps_{UPSTREAM}; "
            f"add_header Set-Cookie $ps_{UPSTREAM}__set_cookie;") in done.stdout
    from pipeline_steps.upstreams import UpstreamFile

    file = UpstreamFile.load(bed.nginx.include)
    assert sticky.read_split(file, UPSTREAM) == 0.0  # stable 100 %: every key on stable
    assert {f"{UPSTREAM}__stable", f"{UPSTREAM}__canary", UPSTREAM} <= set(file.upstreams())
    again = ps("router", "init")
    assert again.returncode == 0 and "already there" in again.stdout


@pytest.mark.parametrize("realip", [True, False])
def test_the_probe_of_a_split_by_ip_needs_realip(nginx_factory: Callable[..., Nginx], workdir: Path, ps: Any,
                                                 realip: bool) -> None:
    extra = ("        set_real_ip_from 127.0.0.0/8;\n        real_ip_header X-Forwarded-For;\n"
             if realip else "")
    made = make_site(nginx_factory, workdir, "ip", extra)
    try:
        set_weights(ps, made, 40)
        probe = ps("--json", "verify-weights", "--expect-canary", "40", "--probe", "600",
                   "--url", f"{made.nginx.url}/backend/")
        if realip:  # each X-Forwarded-For address is a key of its own
            assert probe.returncode == 0, (probe.stdout, probe.stderr)
            measured = last_json(probe.stdout)["services"][0]["measured"]
            assert measured["by"] == "keys" and measured["key"] == "client ip"
            assert measured["keys_on_both_slots"] == 0 and measured["valid"] == 600
        else:  # one machine, one address: every key on one slot, and the line says why
            assert probe.returncode == 1, (probe.stdout, probe.stderr)
            assert "set_real_ip_from" in probe.stderr
    finally:
        made.stable.stop()
        made.canary.stop()
