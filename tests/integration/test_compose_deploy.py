"""`ps init --from-compose` end to end on the real engine and nginx: the ps.yaml made from a compose file
(two HTTP services, a worker that requires an image-only redis, the compose project's network) deploys
its HTTP services and its worker with `ps deploy --type stable`, under load, 0 failed requests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.load import LoadGenerator
from testbed.ports import unique
from tests.integration import test_deploy_types as deploy_types

pytestmark = pytest.mark.docker
TrafficBed = Any
APP = deploy_types.APP
app_builds = deploy_types.app_builds  # the fixtures of the deploy-types bed, shared
deploy_bed = deploy_types.deploy_bed
B1, B2 = "cccc00000001", "dddd00000002"


@pytest.fixture
def compose_stack(docker_client: Any, base_image: str) -> Iterator[str]:
    """What compose would already run: the project's default network with an image-only redis on it."""
    project = unique("stk")
    network = docker_client.networks.create(f"{project}_default", labels={"pipeline-steps.test": "1"})
    redis = docker_client.containers.run(
        base_image, ["nc", "-ll", "-p", "6379", "-e", "/bin/echo", "PONG"], detach=True,
        name=f"{project}-redis-1", network=network.name, labels={"pipeline-steps.test": "1"},
        networking_config={network.name: docker_client.api.create_endpoint_config(aliases=["redis"])})
    yield project
    for c in docker_client.containers.list(all=True, filters={"network": network.name}):
        if c.id != redis.id:
            network.disconnect(c, force=True)
    redis.remove(force=True)
    network.remove()


def test_a_ps_yaml_made_from_compose_deploys_its_http_services_and_workers(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any,
        docker_client: Any, compose_stack: str, workdir: Path) -> None:
    bed = deploy_bed({"web": "canary", "api": "canary"})
    for service in ("web", "api", "consumer"):
        app_builds(B1, service)
        app_builds(B2, service)
    ports = bed.ports
    compose = {"name": compose_stack, "services": {
        "web": {"build": "./app", "ports": [f"{ports['web']['stable']}:80"],
                "environment": {"GREETING": "hello", "REDIS_URL": "redis://redis:6379"}},
        "api": {"build": {"context": "./app"}, "ports": [f"127.0.0.1:{ports['api']['stable']}:80/tcp"],
                "environment": ["API_TOKEN", "WORKERS=2"]},
        "consumer": {"build": "./app", "depends_on": {"redis": {"condition": "service_started"}},
                     "deploy": {"replicas": 2, "resources": {"limits": {"memory": "64M"}}}},
        "redis": {"image": "redis:7"}}}
    (workdir / "docker-compose.yml").write_text(yaml.safe_dump(compose))
    made = docker_ps("init", "--from-compose", "docker-compose.yml", "--app", APP, "--output", "made.yaml")
    assert made.returncode == 0, made.stderr
    generated = yaml.safe_load((workdir / "made.yaml").read_text())
    assert {n: s["kind"] for n, s in generated["services"].items()} == {
        "web": "http", "api": "http", "consumer": "worker"}
    assert generated["services"]["api"]["env_from"] == ["API_TOKEN"]
    assert generated["services"]["consumer"]["requires"] == [f"{compose_stack}-redis-1"]
    # the site's own parts (registry, engine, the bed's nginx), the services as init wrote them
    raw = {**bed.raw, "services": {name: {**svc, "health": bed.raw["services"].get(name, {}).get(
        "health", {"retries": 40, "interval": "200ms"}), **({"url": bed.url(name)} if name in bed.raw[
            "services"] else {})} for name, svc in generated["services"].items()}}
    bed.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert docker_ps("config", "validate").returncode == 0
    env = {"API_TOKEN": "compose-secret-token-never-printed"}
    first = docker_ps("deploy", "--type", "stable", "--build-id", B1, env=env, timeout=300)
    assert first.returncode == 0, first.stderr + first.stdout
    with LoadGenerator(bed.url("web"), rate=40, max_seconds=120, timeout=10) as load:  # the next build
        done = docker_ps("--json", "deploy", "--type", "stable", "--build-id", B2, env=env, timeout=300)
    result = load.report()
    assert done.returncode == 0, done.stderr + done.stdout
    assert "compose-secret-token-never-printed" not in done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["build_ids"] == {"web/canary": B2, "web/stable": B2, "api/canary": B2, "api/stable": B2,
                                "consumer/worker": B2}
    assert result.sent > 20 and result.failed == 0, result.errors[:5]
    for n in (1, 2):
        replica = docker_client.containers.get(f"{APP}-consumer-{n}")
        assert replica.status == "running" and replica.labels["pipeline-steps.build-id"] == B2
        assert replica.attrs["HostConfig"]["Memory"] == 64 * 1024 ** 2
        assert f"{compose_stack}_default" in replica.attrs["NetworkSettings"]["Networks"]
        code, said = replica.exec_run(["sh", "-c", "nc -w 3 redis 6379 </dev/null"])
        assert code == 0 and b"PONG" in said  # reaches compose's redis by name
    web = docker_client.containers.get(f"{APP}-web-stable")
    assert web.attrs["Config"]["Env"].count("REDIS_URL=redis://redis:6379") == 1
