"""`hosts:` per service: where it runs. A two-host config whose `api` runs on both and whose `etl` job
and `consumer` worker run on app2 only, over FakeDockerHost engines and the fake router (the real step
code, no engine): every operation touches only the service's hosts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_steps.adapters import factory
from pipeline_steps.adapters.fakes import FakeAdapters, FakeDockerHost, FakeNotifier, FakeRegistry
from pipeline_steps.adapters.nginx import use_router
from pipeline_steps.adapters.nginx.fake import FakeRouter
from pipeline_steps.config import Config, Host, load_config
from pipeline_steps.errors import BadInput, ConfigError
from pipeline_steps.operations.deploy_env import deploy_slot
from pipeline_steps.operations.deploy_workers import deploy_workers
from pipeline_steps.operations.run_job import job_host, run_job
from pipeline_steps.operations.set_weights import set_weights
from pipeline_steps.operations.status import slot_status
from pipeline_steps.upstreams import UpstreamFile

REGISTRY = "127.0.0.1:5999"
B1 = "aaaa00000001"


def _raw(tmp: Path) -> dict[str, Any]:
    return {"app": "shop", "registry": REGISTRY, "state_dir": str(tmp / "state"),
            "hosts": [{"name": "app1", "docker": "tcp://fake-1:2375", "address": "10.0.0.1"},
                      {"name": "app2", "docker": "tcp://fake-2:2375", "address": "10.0.0.2"}],
            "services": {
                "api": {"context": ".", "slots": {"stable": 18081, "canary": 18082}},
                "web": {"context": ".", "slots": {"stable": 18091, "canary": 18092}, "hosts": ["app1"]},
                "consumer": {"context": ".", "kind": "worker", "replicas": 2, "hosts": ["app2"]},
                "etl": {"context": ".", "kind": "job", "hosts": ["app2"]}},
            "router": {"include": str(tmp / "ups.conf")}}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Config, dict[str, FakeDockerHost], FakeRouter]]:
    (tmp_path / "ps.yaml").write_text(yaml.safe_dump(_raw(tmp_path)))
    config = load_config(tmp_path / "ps.yaml")
    registry = FakeRegistry()
    hosts = {h.name: FakeDockerHost(Host(h.name, docker=h.docker, address=h.address), registry)
             for h in config.hosts}
    for service in ("api", "web", "consumer", "etl"):  # the same image on both hosts
        first = hosts["app1"].add_image(f"{REGISTRY}/shop/{service}:{B1}")
        hosts["app2"].add_image(f"{REGISTRY}/shop/{service}:{B1}", first.id)
    router = FakeRouter(path=tmp_path / "ups.conf")
    with factory.installed(FakeAdapters(hosts, registry, FakeNotifier())):
        use_router(router)
        try:
            yield config, hosts, router
        finally:
            use_router(None)


def _names(engine: FakeDockerHost) -> set[str]:
    return {c.name for c in engine.containers.values()}


def test_each_service_runs_on_its_hosts_only(world: Any) -> None:
    config, hosts, router = world
    assert [h.name for h in config.hosts_of(config.service("web"))] == ["app1"]
    assert [h.name for h in config.hosts_of(config.service("api"))] == ["app1", "app2"]
    deploy_slot(config, "stable", None, B1)
    deploy_slot(config, "canary", None, B1)
    assert _names(hosts["app1"]) == {"shop-api-stable", "shop-api-canary", "shop-web-stable",
                                     "shop-web-canary"}
    assert _names(hosts["app2"]) == {"shop-api-stable", "shop-api-canary"}
    deploy_workers(config, [config.service("consumer")], B1)
    assert "shop-consumer-1" in _names(hosts["app2"]) and "shop-consumer-1" not in _names(hosts["app1"])
    set_weights(config, 10)
    ups = UpstreamFile.from_text(router.text or "").upstreams()
    assert sorted(s.address for s in ups["shop_web"].servers) == ["10.0.0.1:18091", "10.0.0.1:18092"]
    assert sorted(s.address for s in ups["shop_api"].servers) == ["10.0.0.1:18081", "10.0.0.1:18082",
                                                                   "10.0.0.2:18081", "10.0.0.2:18082"]
    status = slot_status(config)
    assert not status.mismatches
    assert {(s.host, s.service) for s in status.slots if s.service == "web"} == {("app1", "web")}
    assert {(s.host, s.service) for s in status.slots if s.service == "consumer"} == {("app2", "consumer")}


def test_a_pinned_job_runs_on_its_host(world: Any) -> None:
    config, hosts, _ = world
    etl = config.service("etl")
    assert job_host(config, None, etl).name == "app2"
    with pytest.raises(BadInput, match="service etl runs only on app2 \\(its hosts:\\), not on app1"):
        job_host(config, "app1", etl)
    result = run_job(config, etl, B1, ["python", "-m", "etl", "--once"], host=job_host(config, None, etl))
    assert result.host == "app2" and result.ok
    left = [c for e in hosts.values() for c in e.containers.values() if c.labels.get("pipeline-steps.job")]
    assert left == []  # removed afterwards


def test_an_unknown_host_is_a_config_error(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["services"]["web"]["hosts"] = ["app3"]
    (tmp_path / "ps.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "ps.yaml")
    assert info.value.problems == ["services.web.hosts[0]: unknown host 'app3' (configured: app1, app2)"]
