"""Issue 12 in a deploy: RealOps (the step functions `ps deploy` runs) over two fake hosts, each behind
its own FakeRouter. A canary failing on host b leaves both routers on stable; a router failing its
reload in the middle of a canary-auto rolls both back; history names the hosts and routers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_steps.adapters import factory
from pipeline_steps.adapters.fakes import FakeAdapters, FakeDockerHost, FakeNotifier, FakeRegistry
from pipeline_steps.adapters.nginx import use_router
from pipeline_steps.adapters.nginx.fake import FakeRouter
from pipeline_steps.config import Config, Host, load_config
from pipeline_steps.deploy.history import HistoryLog
from pipeline_steps.deploy.ops import RealOps
from pipeline_steps.deploy.rollout import DeployOutcome, DeployRequest, Rollout
from pipeline_steps.health import GatePolicy, HealthTarget, ProbeResult
from pipeline_steps.operations.deploy_env import deploy_slot
from pipeline_steps.operations.set_weights import set_weights
from pipeline_steps.upstreams import UpstreamFile
from tests.unit.test_deploy_realops_fakes import EngineProber
from tests.unit.test_deploy_types_fast import NEW, OLD, Said

REPO = "127.0.0.1:5999/shop/web"


@dataclass
class HostProber(EngineProber):
    """EngineProber whose `broken` builds fail only on `broken_host`."""

    broken_host: str = "b"

    def probe(self, target: HealthTarget, policy: GatePolicy) -> ProbeResult:
        if target.docker is not None and target.docker.name != self.broken_host:
            saved, self.broken = self.broken, set()
            try:
                return super().probe(target, policy)
            finally:
                self.broken = saved
        return super().probe(target, policy)


@dataclass
class Bed:
    config: Config
    routers: dict[str, FakeRouter]
    prober: HostProber

    def deploy(self, type: str, **kw: Any) -> tuple[DeployOutcome, Said]:
        said = Said()
        ops = RealOps(self.config, None, said.say, said.warn, type, prober=lambda: self.prober)
        return Rollout(self.config, DeployRequest(type=type, **kw), None, said,  # type: ignore[arg-type]
                       ops=ops).run(), said

    def weights(self, name: str) -> list[int]:
        text = self.routers[name].text
        assert text is not None
        up = UpstreamFile.from_text(text).get("shop_web")
        assert up is not None
        return [s.effective_weight for s in up.servers]


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    raw = {"app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(tmp_path / "state"),
           "hosts": [{"name": "a", "docker": "tcp://fake-a:2375", "address": "10.0.0.1"},
                     {"name": "b", "docker": "tcp://fake-b:2375", "address": "10.0.0.2"}],
           "services": {"web": {"context": ".", "slots": {"stable": 18081, "canary": 18082},
                                "health": {"retries": 3, "interval": "0.01s"}}},
           "routers": [{"include": str(tmp_path / "r1.conf"), "hosts": ["a"]},
                       {"include": str(tmp_path / "r2.conf"), "hosts": ["b"]}],
           "canary": {"probe": 0, "steps": [20, 50], "pause": "0.05s", "check_interval": "0.01s"},
           "blue_green": {"watch": 0}, "deploy": {"keep_images": 5}}
    (tmp_path / "ps.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "ps.yaml")
    registry = FakeRegistry()
    hosts = {h.name: FakeDockerHost(Host(h.name, docker=h.docker, address=h.address), registry)
             for h in config.hosts}
    for build in (OLD, NEW):
        first = hosts["a"].add_image(f"{REPO}:{build}")
        hosts["b"].add_image(f"{REPO}:{build}", first.id)
    routers = {"router1": FakeRouter(path=tmp_path / "r1.conf"),
               "router2": FakeRouter(path=tmp_path / "r2.conf")}
    with factory.installed(FakeAdapters(hosts, registry, FakeNotifier())):
        use_router(routers)
        try:
            deploy_slot(config, "stable", None, OLD)
            deploy_slot(config, "canary", None, OLD)
            set_weights(config, 0)
            yield Bed(config, routers, HostProber(hosts))
        finally:
            use_router(None)


def test_canary_auto_moves_both_routers_step_by_step_and_history_names_them(bed: Bed) -> None:
    outcome, said = bed.deploy("canary-auto", build_id=NEW)
    assert outcome.result == "success", "\n".join(said.lines)
    # every step went to both routers: 20 %, 50 %, then the promotion back to stable
    assert len(bed.routers["router1"].applied) == len(bed.routers["router2"].applied) >= 3
    assert bed.weights("router1") == bed.weights("router2")
    entry = HistoryLog.for_config(bed.config).read().entries[-1]
    assert (entry.hosts, entry.routers) == (["a", "b"], ["router1", "router2"])


def test_a_canary_failing_on_host_b_leaves_both_routers_on_stable(bed: Bed) -> None:
    bed.prober.broken.add(NEW)
    outcome, said = bed.deploy("canary-auto", build_id=NEW)
    assert outcome.result in ("failure", "rolled-back") and outcome.exit_code == 1, "\n".join(said.lines)
    assert bed.weights("router1") == bed.weights("router2") == [999, 1]


def test_a_reload_failing_on_router2_mid_rollout_rolls_both_routers_back(bed: Bed) -> None:
    r1, r2 = bed.routers["router1"], bed.routers["router2"]
    original = r2.commit
    calls = {"n": 0}

    def commit(staged: Any) -> None:  # the second traffic change (the 50 % step) fails on router 2
        calls["n"] += 1
        if calls["n"] == 2:
            r2.fail_reload = "bind() failed"
        try:
            original(staged)
        finally:
            r2.fail_reload = None

    r2.commit = commit  # type: ignore[method-assign]
    outcome, said = bed.deploy("canary-auto", build_id=NEW)
    assert outcome.result == "rolled-back", "\n".join(said.lines)
    assert "router2: nginx could not apply the new config: bind() failed" in "\n".join(said.lines + [
        outcome.message])
    assert bed.weights("router1") == bed.weights("router2") == [999, 1]  # both back on stable
    assert r1.loaded == r1.text and r2.loaded == r2.text
