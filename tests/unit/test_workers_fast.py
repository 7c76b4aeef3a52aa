"""Workers (kind: worker) in the deploy plans, against FakeOps: stable, promote-canary and blue-green move
them onto the build; canary steps leave them; a replica that is not ready fails the deploy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.config import Config
from pipeline_steps.deploy.plan import Run
from pipeline_steps.deploy.rollout import DeployRequest
from pipeline_steps.deploy.types import plan_for
from pipeline_steps.errors import BadInput, ConfigError
from tests.unit.test_deploy_types_fast import NEW, OLD, deploy, live_world, make_config

WORKER: dict[str, Any] = {"context": ".", "kind": "worker", "replicas": 3, "ready": "^consumer ready$"}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    config = make_config(tmp_path)
    raw = Path(config.source).read_text()
    import yaml

    data = yaml.safe_load(raw)
    data["services"]["consumer"] = WORKER
    Path(config.source).write_text(yaml.safe_dump(data))
    from pipeline_steps.config import load_config

    return load_config(config.source)


def _steps(config: Config, type: str, **kw: Any) -> list[str]:
    run = Run(config, DeployRequest(type=type, **kw), None, live_world(config), lambda line: None)
    return [step.name for step in plan_for(run).steps]


def test_stable_moves_the_workers_after_the_http_services(config: Config) -> None:
    fake = live_world(config)
    fake.workers["consumer"] = OLD
    outcome, said, _ = deploy(fake, "stable")
    assert outcome.result == "success", outcome.message
    assert fake.workers["consumer"] == NEW and outcome.build_ids["consumer/worker"] == NEW
    names = [c[0] for c in fake.calls]
    assert names.index("workers") > max(i for i, n in enumerate(names) if n == "weights")
    assert "workers: 3 of 3 replicas replaced, all ready" in said.text and not fake.violations


def test_only_workers_named_is_a_workers_deploy(config: Config) -> None:
    fake = live_world(config)
    outcome, _, _ = deploy(fake, "stable", services=("consumer",))
    assert outcome.result == "success", outcome.message
    assert fake.workers["consumer"] == NEW and not any(c[0] == "deploy" for c in fake.calls)
    assert _steps(config, "stable", build_id=NEW, services=("consumer",)) == ["workers", "prune"]


def test_canary_steps_leave_the_workers_and_promote_moves_them(config: Config) -> None:
    fake = live_world(config)
    fake.workers["consumer"] = OLD
    outcome, _, _ = deploy(fake, "canary-auto")
    assert outcome.result == "success" and fake.workers["consumer"] == OLD
    outcome, _, _ = deploy(fake, "promote-canary")
    assert outcome.result == "success", outcome.message
    assert fake.workers["consumer"] == NEW
    assert "workers" not in _steps(config, "canary-auto", build_id=NEW)


def test_blue_green_moves_the_workers_after_the_watch(config: Config) -> None:
    fake = live_world(config)
    outcome, _, _ = deploy(fake, "blue-green")
    assert outcome.result == "success", outcome.message
    assert fake.workers["consumer"] == NEW
    steps = _steps(config, "blue-green", build_id=NEW)
    assert steps.index("workers") > steps.index("watch")


def test_a_worker_not_ready_fails_the_deploy(config: Config) -> None:
    fake = live_world(config)
    fake.faults["workers"] = "shop-consumer-2 is not ready after 60s: no line matching '^consumer ready$'"
    outcome, _, _ = deploy(fake, "stable")
    assert outcome.exit_code == 1
    assert "workers: host local: shop-consumer-2 is not ready after 60s" in outcome.message
    assert "got their previous container back" in outcome.message


def test_canary_types_need_an_http_service(config: Config) -> None:
    with pytest.raises(BadInput, match="canary-auto needs a canary service; workers \\(consumer\\)"):
        _steps(config, "canary-auto", build_id=NEW, services=("consumer",))


@pytest.mark.parametrize(("extra", "expected"), [
    ({"slots": {"stable": 19001, "canary": 19002}}, "services.w.slots: a worker has none (kind: worker"),
    ({"url": "http://127.0.0.1/"}, "services.w.url: a worker has none"),
    ({"replicas": 0}, "services.w.replicas"),
    ({"ready": "("}, "services.w.ready"),
])
def test_bad_worker_config(tmp_path: Path, extra: dict[str, Any], expected: str) -> None:
    from pipeline_steps.config import parse_config

    raw = {"app": "shop", "registry": "r:5000", "services": {"w": {**WORKER, **extra}}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base_dir=tmp_path)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_an_app_of_workers_only(tmp_path: Path) -> None:
    from pipeline_steps.config import parse_config
    from pipeline_steps.deploy.fake import FakeOps

    config = parse_config({"app": "shop", "registry": "r:5000", "state_dir": str(tmp_path),
                           "services": {"consumer": WORKER}}, base_dir=tmp_path)
    fake = FakeOps(config)
    outcome, _, _ = deploy(fake, "stable")
    assert outcome.result == "success", outcome.message
    assert fake.workers == {"consumer": NEW}


def test_requires_comes_before_anything_changes(tmp_path: Path) -> None:
    from pipeline_steps.config import parse_config
    from pipeline_steps.deploy.fake import FakeOps

    services = {"consumer": {**WORKER, "requires": ["broker", {"name": "cache", "tcp": 6379}]},
                "cache": {"context": ".", "kind": "worker"}}
    config = parse_config({"app": "shop", "registry": "r:5000", "state_dir": str(tmp_path),
                           "services": services}, base_dir=tmp_path)
    assert [(r.name, r.service, r.tcp) for r in config.service("consumer").requires] == [
        ("broker", False, None), ("cache", True, 6379)]
    fake = FakeOps(config)
    outcome, said, _ = deploy(fake, "stable")
    assert outcome.result == "success", outcome.message
    assert [c[0] for c in fake.calls][:2] == ["requires", "workers"]
    assert "ready first: consumer: broker ready on host local" in said.text
    fake = FakeOps(config)
    fake.faults["requires"] = "consumer requires broker, not ready on host local: no container broker"
    outcome, _, _ = deploy(fake, "stable")
    assert outcome.exit_code == 1 and "no container broker" in outcome.message
    assert not any(c[0] == "workers" for c in fake.calls)  # nothing changed


def test_a_requires_cycle_is_a_config_error(tmp_path: Path) -> None:
    from pipeline_steps.config import parse_config

    services = {"a": {**WORKER, "requires": ["b"]}, "b": {**WORKER, "requires": ["a"]}}
    with pytest.raises(ConfigError) as info:
        parse_config({"app": "shop", "registry": "r:5000", "services": services}, base_dir=tmp_path)
    assert info.value.problems == ["services.b.requires: a cycle: a -> b -> a"]
