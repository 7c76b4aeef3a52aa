"""The middle tier: RealOps (the step functions `ps deploy` runs) over FakeDockerHost, FakeRouter and a
prober that asks the fake engine. Between FakeOps (deploy/fake.py, no step code) and the real bed.

A slot answers its health check when a running container of the fake engine publishes its port and its
build is not one of `Bed.broken` (so a gate can fail for the build, not for the fakes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from pipeline_steps.adapters import factory
from pipeline_steps.adapters import slots as s
from pipeline_steps.adapters.fake_prober import refused, up
from pipeline_steps.adapters.fakes import FakeAdapters, FakeDockerHost, FakeNotifier, FakeRegistry
from pipeline_steps.adapters.nginx import use_router
from pipeline_steps.adapters.nginx.fake import FakeRouter
from pipeline_steps.config import Config, Host, load_config
from pipeline_steps.deploy.ops import RealOps
from pipeline_steps.deploy.rollout import DeployOutcome, DeployRequest, Rollout
from pipeline_steps.health import GatePolicy, HealthTarget, ProbeResult
from pipeline_steps.operations.deploy_env import deploy_slot
from pipeline_steps.operations.set_weights import set_weights
from pipeline_steps.operations.traffic import traffic_status
from tests.unit.test_deploy_types_fast import NEW, OLD, Said

REPO = "127.0.0.1:5999/shop/web"


@dataclass
class EngineProber:
    """Answers 200 for a slot whose port a running container of the fake engine publishes."""

    hosts: dict[str, FakeDockerHost]
    broken: set[str] = field(default_factory=set)  # builds whose slots never answer healthy

    def prepare(self) -> None:
        """Nothing to set up."""

    def probe(self, target: HealthTarget, policy: GatePolicy) -> ProbeResult:
        port = urlsplit(target.address).port
        engine = self.hosts[target.docker.name if target.docker else "a"]
        for c in engine.containers.values():
            if c.status == "running" and any(p == port for _, p in c.ports.values()):
                if c.labels.get(s.LABEL_BUILD_ID) in self.broken:
                    return ProbeResult(target.label, False, "500", 1.0, "HTTP 500 (want 2xx)", not_ready=True)
                return up(target.label)
        return refused(target.label)

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class Bed:
    config: Config
    adapters: FakeAdapters
    router: FakeRouter
    prober: EngineProber

    @property
    def engine(self) -> FakeDockerHost:
        return self.adapters.hosts["a"]

    def deploy(self, type: str, **kw: Any) -> tuple[DeployOutcome, Said]:
        said = Said()
        ops = RealOps(self.config, None, said.say, said.warn, type, prober=lambda: self.prober)
        request = DeployRequest(type=type, **kw)
        return Rollout(self.config, request, None, said, ops=ops).run(), said  # type: ignore[arg-type]


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    raw = {"app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(tmp_path / "state"),
           "hosts": [{"name": "a", "docker": "tcp://fake-a:2375"}],
           "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": 18082},
                                "url": "http://127.0.0.1:18080/web/",
                                "health": {"retries": 3, "interval": "0.01s"}}},
           "router": {"include": str(tmp_path / "ups.conf")},
           "canary": {"probe": 0}, "deploy": {"keep_images": 2}}
    (tmp_path / "ps.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "ps.yaml")
    registry = FakeRegistry()
    hosts = {"a": FakeDockerHost(Host("a", docker="tcp://fake-a:2375"), registry)}
    for build in ("00old0000001", OLD, NEW):
        hosts["a"].add_image(f"{REPO}:{build}")
    router = FakeRouter(path=tmp_path / "ups.conf")
    adapters = FakeAdapters(hosts, registry, FakeNotifier())
    with factory.installed(adapters):
        use_router(router)
        try:
            deploy_slot(config, "stable", None, OLD)
            deploy_slot(config, "canary", None, OLD)
            set_weights(config, 0)  # stable 100 %: the live world before the deploy
            yield Bed(config, adapters, router, EngineProber(hosts))
        finally:
            use_router(None)


def _build(engine: FakeDockerHost, slot: str) -> str | None:
    c = engine.named(f"shop-web-{slot}")
    return c.labels.get(s.LABEL_BUILD_ID) if c and c.status == "running" else None


def test_a_stable_deploy_runs_the_step_functions_over_the_fakes(bed: Bed) -> None:
    reloads = bed.router.reloads
    outcome, said = bed.deploy("stable", build_id=NEW)
    assert outcome.result == "success" and outcome.exit_code == 0, "\n".join(said.lines)
    assert _build(bed.engine, "stable") == NEW and _build(bed.engine, "canary") == NEW
    web = next(t for t in traffic_status(bed.config).services if t.service == "web")
    assert web.split["stable"] > 99  # stable carries the traffic again (the canary: the minimum weight)
    assert bed.router.reloads >= reloads + 2  # to the canary and back, each through the Router
    assert not [n for n in bed.engine.containers.values() if n.name.endswith(".previous")]
    assert bed.engine.image(f"{REPO}:00old0000001") is None  # pruned: keep_images 2, not in use
    assert bed.engine.image(f"{REPO}:{OLD}") is not None
    assert any("removed old image" in line for line in said.lines)


def test_a_build_failing_the_canary_gate_leaves_stable_serving_the_old_one(bed: Bed) -> None:
    bed.prober.broken.add(NEW)
    outcome, said = bed.deploy("stable", build_id=NEW)
    assert outcome.result == "failure" and outcome.exit_code == 1, "\n".join(said.lines)
    assert _build(bed.engine, "stable") == OLD
    assert "canary" in outcome.message and "HTTP 500" in "\n".join(said.lines), outcome.message
    web = next(t for t in traffic_status(bed.config).services if t.service == "web")
    assert web.split["stable"] > 99


def test_stop_and_start_slot_and_the_image_check_go_through_the_fake_engine(bed: Bed) -> None:
    said = Said()
    ops = RealOps(bed.config, None, said.say, said.warn, "stable", prober=lambda: bed.prober)
    web = bed.config.service("web")
    ops.stop_slot("canary", [web])
    assert bed.engine.named("shop-web-canary").status == "exited"  # type: ignore[union-attr]
    assert ops.start_slot("canary", web) == ["host a: started shop-web-canary (was exited)"]
    assert ops.kept_builds(web)[:1] == [NEW]
    ops.check_image(OLD, [web])
    with pytest.raises(Exception, match="cannot be pulled"):
        ops.check_image("cccc00000003", [web])
    bed.engine.gone.add("image")
    ops.check_image(OLD, [web])  # a host whose engine went away is a warning, not a failure
    assert said.lines[-1].startswith("could not check image")
