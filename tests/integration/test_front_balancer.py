"""The issue-12 bed itself: two hosts, an nginx router container on each (include in a named volume),
haproxy round-robin in front (testbed.front, testbed.many_routers)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import requests

from testbed.many_routers import ManyRouterBed
from testbed.ports import unique
from testbed.wait import until


def _answers(url: str, n: int) -> tuple[Counter[str], int]:
    """n GETs over one keep-alive connection: answering upstream addresses (X-Upstream), failures."""
    seen: Counter[str] = Counter()
    failed = 0
    with requests.Session() as session:
        for _ in range(n):
            try:
                got = session.get(url, timeout=5)
            except requests.RequestException:
                failed += 1
                continue
            if got.status_code != 200:
                failed += 1
                continue
            last = got.headers.get("X-Upstream", "?").split(",")[-1].strip()  # after a retry: the last
            seen[last.rsplit(":", 1)[0]] += 1
    return seen, failed


def test_the_front_balances_each_request_round_robin_over_both_routers(
        many_router_bed: Callable[..., ManyRouterBed], sample_image: str) -> None:
    bed = many_router_bed({"web": "canary"}, app=unique("mrb"))
    one, two = bed.hosts
    assert bed.raw["routers"][1]["host"] == "host2" and bed.raw["hosts"][1]["docker"].startswith("tcp://")
    for host in bed.hosts:
        bed.run_slot(host, sample_image, "web", "stable")
    url = bed.url("web")
    assert until(lambda: _answers(url, 4)[0].keys() == {one.address, two.address}, 20, 0.2)
    seen, failed = _answers(url, 200)
    # router1 lists host1's slots, router2 host2's: each request alternates routers, keep-alive or not
    assert failed == 0 and seen == {one.address: 100, two.address: 100}
    for router, host in zip(bed.routers, bed.hosts, strict=True):
        text = router.read() or ""
        assert f"{host.address}:{bed.ports['web']['stable']}" in text and router.nginx_t()[0] == 0
    bed.routers[1].container.kill()  # a router dies: the front's retry and health check skip it
    seen, failed = _answers(url, 100)
    assert failed == 0 and seen == {one.address: 100}


def test_the_tls_variant_reaches_host2_over_tls_only(many_router_bed: Callable[..., ManyRouterBed]) -> None:
    bed = many_router_bed({"web": "canary"}, app=unique("mrt"), tls=True)
    entry = bed.raw["hosts"][1]
    assert entry["docker"].startswith("tcp://") and set(entry["tls"]) == {"ca", "cert", "key"}
    assert all(code == 0 for code, _ in bed.nginx_t())
    answer: Any = requests.get(f"{bed.routers[1].url}/web/", timeout=5)
    assert answer.status_code == 502  # no slot yet: nginx on host2 answers for itself
