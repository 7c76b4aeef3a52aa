"""Deploy hooks against FakeOps: each phase runs where the plan says (pre_traffic after the gate and
before any weight moves), the dry run lists them, and a failing hook stops the deploy with its output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.config import Config
from pipeline_steps.deploy.fake import FakeOps
from pipeline_steps.deploy.plan import Run
from pipeline_steps.deploy.rollout import DeployRequest
from pipeline_steps.deploy.types import plan_for
from tests.unit.test_deploy_types_fast import NEW, OLD, deploy, live_world, make_config

HOOKS = {"pre_deploy": [{"service": "web", "command": "backup-db"}],
         "pre_traffic": [{"service": "web", "command": ["alembic", "upgrade", "head"], "timeout": "5m"}],
         "post_deploy": [{"service": "web", "command": "warm-cache"},
                         {"service": "api", "command": "api-post"}]}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, hooks=HOOKS)


def _order(fake: FakeOps) -> list[str]:
    """The deploy's operations, hooks by phase, weights by percent."""
    out = []
    for call in fake.calls:
        if call[0] == "run_hook":
            out.append(call[1])
        elif call[0] in ("deploy", "weights", "gate", "switch"):
            out.append(f"{call[0]} {call[1]:g}" if call[0] == "weights" else f"{call[0]} {call[1]}")
    return out


def test_stable_runs_each_phase_in_place(config: Config) -> None:
    fake = live_world(config)
    outcome, said, _ = deploy(fake, "stable", services=("web",))
    assert outcome.result == "success", outcome.message
    order = _order(fake)
    assert order.index("pre_deploy") < order.index("deploy canary") < order.index("gate canary") \
        < order.index("pre_traffic") < order.index("weights 100") < order.index("post_deploy")
    assert fake.hooks_run == [("pre_deploy", "backup-db", NEW), ("pre_traffic", "alembic upgrade head", NEW),
                              ("post_deploy", "warm-cache", NEW)]  # api's hook: api is not deployed
    assert not fake.violations
    assert "pre_traffic hook: alembic upgrade head in a one-off web" in said.text


@pytest.mark.parametrize(("type", "kw"), [("canary-manual", {"weight": 20.0}), ("canary-auto", {})])
def test_canary_types_migrate_before_the_first_weight(config: Config, type: str, kw: dict[str, Any]) -> None:
    fake = live_world(config)
    outcome, _, _ = deploy(fake, type, services=("web",), **kw)
    assert outcome.result == "success", outcome.message
    order = _order(fake)
    weights = [i for i, o in enumerate(order) if o.startswith("weights") and o != "weights 0"]
    assert order.index("gate canary") < order.index("pre_traffic") < weights[0]
    assert order[-1] == "post_deploy" and not fake.violations


def test_blue_green_migrates_before_the_switch(config: Config) -> None:
    fake = live_world(config)
    outcome, _, _ = deploy(fake, "blue-green", services=("api",))
    assert outcome.result == "success", outcome.message
    assert fake.hooks_run == [("post_deploy", "api-post", NEW)]


def test_a_failing_migration_stops_before_traffic_moves(config: Config) -> None:
    fake = live_world(config)
    fake.hook_exits["alembic upgrade head"] = 3
    outcome, _, _ = deploy(fake, "canary-auto", services=("web",))
    assert outcome.result != "success" and outcome.exit_code == 1
    assert "pre_traffic hook failed: job alembic upgrade head (web " in outcome.message
    assert "last lines: migrating... | exit 3" in outcome.message
    assert fake.weights["web"] == 0.0  # no weight ever moved
    assert not any(c[0] == "weights" and c[1] > 0 for c in fake.calls)
    assert [p for p, _, _ in fake.hooks_run] == ["pre_deploy", "pre_traffic"]  # post_deploy never ran
    failure = [kw for status, kw in fake.sent if status != "started"]
    assert failure and "alembic upgrade head" in str(failure[-1])  # the notification has the job's output


def test_a_timed_out_stable_migration_leaves_stable_serving(config: Config) -> None:
    fake = live_world(config)
    fake.hook_exits["alembic upgrade head"] = None
    outcome, _, _ = deploy(fake, "stable", services=("web",))
    assert outcome.exit_code == 1 and "timed out and was killed" in outcome.message
    assert fake.slot("web", "stable").build == OLD and fake.weights["web"] == 0.0  # type: ignore[union-attr]


def test_the_dry_run_lists_the_hooks_that_run(config: Config) -> None:
    fake = live_world(config)
    run = Run(config, DeployRequest(type="canary-auto", build_id=NEW, services=("web",)), None, fake,
              lambda line: None)
    lines = plan_for(run).lines(run)
    assert any(line.startswith("pre_traffic hooks (after the gate, before any weight moves): web: alembic "
                               "upgrade head") for line in lines)
    traffic_only = Run(config, DeployRequest(type="canary-auto", build_id=NEW, services=("web",),
                                             traffic_only=True), None, fake, lambda line: None)
    names = [step.name for step in plan_for(traffic_only).steps]
    assert names[:2] == ["canary-runs", "hooks"] and "deploy" not in names  # migrations still come first
    (tmp := config_dir(config)).mkdir()
    plain = make_config(tmp)
    run = Run(plain, DeployRequest(type="stable", build_id=NEW), None, FakeOps(plain), lambda line: None)
    assert not any(step.name == "hooks" for step in plan_for(run).steps)


def config_dir(config: Config) -> Path:
    return Path(config.source).parent / "plain"


def test_hooks_name_known_services_and_hosts(tmp_path: Path) -> None:
    from pipeline_steps.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, hooks={"pre_traffic": [{"service": "nope", "command": "x", "host": "far"}]})
    assert sorted(info.value.problems) == [
        "hooks.pre_traffic[0].host: unknown host 'far' (configured: local)",
        "hooks.pre_traffic[0].service: unknown service 'nope' (configured: api, web)"]


def test_a_job_service_hook_runs_with_the_deployed_build(tmp_path: Path) -> None:
    import yaml

    from pipeline_steps.config import load_config

    config = make_config(tmp_path)
    raw = yaml.safe_load(Path(config.source).read_text())
    raw["services"]["migrate"] = {"context": "./migrations", "kind": "job", "memory": "64m"}
    raw["hooks"] = {"pre_traffic": [{"service": "migrate", "command": "alembic upgrade head"}]}
    Path(config.source).write_text(yaml.safe_dump(raw))
    config = load_config(config.source)
    assert config.service("migrate").members() == {}
    fake = live_world(config)
    outcome, _, _ = deploy(fake, "canary-manual", weight=10.0, services=("web",))
    assert outcome.result == "success", outcome.message
    assert fake.hooks_run == [("pre_traffic", "alembic upgrade head", NEW)]
