"""`ps init --from-compose` end to end on the real engine and nginx: the ps.yaml made from a 20-service
compose file (infra, two HTTP services, workers that require image-only kafka and redis, jobs, the compose
project's network) deploys its HTTP services and its workers with `ps deploy --type stable`, under load,
0 failed requests."""

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
    kafka = docker_client.containers.run(
        base_image, ["sh", "-c", "sleep 2; touch /tmp/up; exec nc -ll -p 9092 -e /bin/echo kafka"],
        detach=True,
        name=f"{project}-kafka-1", network=network.name, labels={"pipeline-steps.test": "1"},
        healthcheck={"test": ["CMD", "sh", "-c", "[ -e /tmp/up ]"], "interval": 250_000_000, "retries": 100})
    yield project
    for c in docker_client.containers.list(all=True, filters={"network": network.name}):
        if c.id not in (redis.id, kafka.id):
            network.disconnect(c, force=True)
    redis.remove(force=True)
    kafka.remove(force=True)
    network.remove()


WORKERS = ("orders-consumer", "payments-consumer", "audit-consumer", "cache-worker", "mailer", "indexer")


def twenty_services(project: str, ports: dict[str, dict[str, int]]) -> dict[str, Any]:
    """A 20-service stack: 8 image-only infra services, 2 HTTP apps, 6 workers (three consumer groups
    with 2 replicas each), 4 one-off jobs. The shared mappings come out as YAML anchors and aliases, and
    KAFKA is interpolated with its default."""
    env = {"REDIS_URL": "redis://redis:6379", "KAFKA": "${KAFKA:-kafka:9092}"}
    app: dict[str, Any] = {"build": "./app", "restart": "unless-stopped", "environment": env}
    services: dict[str, Any] = {name: {"image": f"{name}:latest"} for name in (
        "postgres", "redis", "kafka", "zookeeper", "elasticsearch", "minio", "mailhog", "prometheus")}
    services["web"] = {**app, "ports": [f"{ports['web']['stable']}:80"], "depends_on": ["redis"]}
    services["api"] = {**app, "ports": [f"127.0.0.1:{ports['api']['stable']}:80/tcp"],
                       "environment": {**app["environment"], "API_TOKEN": None, "WORKERS": 2}}
    for name in WORKERS:
        services[name] = {**app, "deploy": {"replicas": 2 if name.endswith("-consumer") else 1,
                                            "resources": {"limits": {"memory": "64M"}}},
                          **({"depends_on": {"kafka": {"condition": "service_healthy"}}}
                             if name.endswith("-consumer") else {})}
    for name in ("db-init", "seeder", "etl", "reindex"):
        services[name] = {**app, "restart": "no", "command": ["sh", "-c", f"echo {name}"]}
    assert len(services) == 20
    return {"name": project, "services": services}


def test_a_ps_yaml_made_from_compose_deploys_its_http_services_and_workers(
        deploy_bed: Callable[..., TrafficBed], app_builds: Callable[..., str], docker_ps: Any,
        docker_client: Any, compose_stack: str, workdir: Path) -> None:
    bed = deploy_bed({"web": "canary", "api": "canary"})
    for service in ("web", "api", *WORKERS):
        app_builds(B1, service)
        app_builds(B2, service)
    compose = twenty_services(compose_stack, bed.ports)
    (workdir / "docker-compose.yml").write_text(yaml.safe_dump(compose))
    made = docker_ps("init", "--from-compose", "docker-compose.yml", "--app", APP, "--output", "made.yaml")
    assert made.returncode == 0, made.stderr
    generated = yaml.safe_load((workdir / "made.yaml").read_text())
    kinds = {n: s["kind"] for n, s in generated["services"].items()}
    assert kinds == {"web": "http", "api": "http", **{w: "worker" for w in WORKERS},
                     **{j: "job" for j in ("db-init", "seeder", "etl", "reindex")}}
    assert generated["services"]["api"]["env_from"] == ["API_TOKEN"]
    assert generated["services"]["web"]["env"] == {"REDIS_URL": "redis://redis:6379", "KAFKA": "kafka:9092"}
    assert generated["services"]["web"]["requires"] == [f"{compose_stack}-redis-1"]
    assert generated["services"]["orders-consumer"]["requires"] == [f"{compose_stack}-kafka-1"]
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
                                **{f"{w}/worker": B2 for w in WORKERS}}
    assert result.sent > 20 and result.failed == 0, result.errors[:5]
    for name, n in [(w, n) for w in WORKERS for n in ((1, 2) if w.endswith("-consumer") else (1,))]:
        replica = docker_client.containers.get(f"{APP}-{name}-{n}")
        assert replica.status == "running" and replica.labels["pipeline-steps.build-id"] == B2
        assert replica.attrs["HostConfig"]["Memory"] == 64 * 1024 ** 2
        assert f"{compose_stack}_default" in replica.attrs["NetworkSettings"]["Networks"]
        code, said = replica.exec_run(["sh", "-c", "nc -w 3 redis 6379 </dev/null"])
        assert code == 0 and b"PONG" in said  # reaches compose's redis by name
    web = docker_client.containers.get(f"{APP}-web-stable")
    assert web.attrs["Config"]["Env"].count("REDIS_URL=redis://redis:6379") == 1
