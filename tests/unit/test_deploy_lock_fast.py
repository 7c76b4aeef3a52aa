"""issue 12, fast tier: `ps deploy`'s frame takes the engine lock (FakeOps + FakeDockerHost)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_steps.adapters.fakes import FakeDockerHost
from pipeline_steps.config import Config, load_config
from pipeline_steps.deploy.fake import FakeOps
from pipeline_steps.deploy.lock.engine import EngineLock, volume_name
from pipeline_steps.deploy.plan import Step
from pipeline_steps.deploy.rollout import DeployRequest, Rollout
from pipeline_steps.errors import CheckFailed
from tests.unit.test_deploy_types_fast import NEW, OLD, Said


@pytest.fixture
def config(tmp_path: Path) -> Config:
    raw: dict[str, Any] = {
        "app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(tmp_path / "state"),
        "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": 18082},
                             "url": "http://127.0.0.1:18080/web/"}},
        "router": {"include": str(tmp_path / "ups.conf")},
        "canary": {"steps": [10, 40], "pause": "30s", "check_interval": "1s", "probe": 0}}
    path = tmp_path / "ps.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def world(config: Config, engine: FakeDockerHost, agent: str) -> FakeOps:
    fake = FakeOps(config, lock_engine=EngineLock(engine.host, config.app, docker=engine, agent=agent))
    fake.run_slot("web", "stable", OLD)
    fake.run_slot("web", "canary", OLD)
    fake.weights["web"] = 0.0
    fake.registry.add(NEW)
    return fake


def run(fake: FakeOps, type: str, between: Any = None) -> tuple[Any, Said]:
    said = Said()
    rollout = Rollout(fake.config, DeployRequest(type=type, build_id=NEW), None, said,  # type: ignore[arg-type]
                      ops=fake)
    return rollout.run(between), said


def test_a_deploy_holds_the_engine_lock_while_it_runs(config: Config) -> None:
    engine = FakeDockerHost(config.hosts[0])
    fake = world(config, engine, "agent-1")
    seen: list[dict[str, str]] = []

    def between(_i: int, _step: Step) -> None:
        found = engine.named_volumes.get(volume_name("shop"))
        assert found is not None
        seen.append(dict(found.labels))

    outcome, _ = run(fake, "canary-auto", between)
    assert outcome.result == "success", outcome.message
    assert seen and all(s["ps.lock.host"] == "agent-1" and s["ps.lock.type"] == "canary-auto" for s in seen)
    assert engine.named_volumes == {}  # given back at the end


def test_another_agents_deploy_refuses_before_anything(config: Config, tmp_path: Path) -> None:
    engine = FakeDockerHost(config.hosts[0])
    other = EngineLock(engine.host, "shop", docker=engine, agent="agent-2")
    other.acquire(other.new_holder("run", lease=60, user="bob", deploy_type="blue-green",
                                   pipeline_url="https://ci/p/2", since="2026-12-01T10:00:00+09:00"))
    fake = world(config, engine, "agent-1")
    with pytest.raises(CheckFailed) as refused:
        run(fake, "stable")
    assert "held by pid" in refused.value.message and "on agent-2 (bob, https://ci/p/2) running blue-green" \
        in refused.value.message
    assert fake.sent == [] and fake.calls == []
    assert not (Path(config.state_dir) / "deploy.lock.json").exists()  # the kernel lock was given back
