"""status, traffic's BUILD_IDs, build, push and mattermost-notify over the fake adapters (no engine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline_steps.adapters import factory
from pipeline_steps.adapters import slots as s
from pipeline_steps.adapters.fakes import FakeAdapters, FakeDockerHost, FakeNotifier, FakeRegistry
from pipeline_steps.adapters.interfaces import Delivery
from pipeline_steps.cli.output import Output
from pipeline_steps.config import Config, Host, parse_config
from pipeline_steps.errors import CheckFailed, Unreachable
from pipeline_steps.operations.build import BuildIdentity, build
from pipeline_steps.operations.deploy_env import deploy_slot
from pipeline_steps.operations.mattermost_notify import notify
from pipeline_steps.operations.push import push
from pipeline_steps.operations.status import slot_status
from pipeline_steps.operations.traffic import _build_ids

REPO = "127.0.0.1:5999/shop/web"


class Said(Output):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)

    def debug(self, line: str) -> None:
        self.lines.append(line)

    def stream(self, chunk: str) -> None:
        self.lines.append(chunk)


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[FakeAdapters]:
    registry = FakeRegistry()
    hosts = {n: FakeDockerHost(Host(n, docker=f"tcp://fake-{n}:2375"), registry) for n in ("a", "b")}
    adapters = FakeAdapters(hosts, registry, FakeNotifier())
    with factory.installed(adapters):
        yield adapters


def _config(tmp_path: Path) -> Config:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    return parse_config({"app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(tmp_path / "state"),
                         "hosts": [{"name": "a", "docker": "tcp://fake-a:2375"},
                                   {"name": "b", "docker": "tcp://fake-b:2375"}],
                         "services": {"web": {"context": str(tmp_path),
                                              "slots": {"stable": 18081, "canary": 18082}}}},
                        base_dir=tmp_path)


def _config_one(tmp_path: Path, host: str) -> Config:
    config = _config(tmp_path)
    return parse_config({"app": "shop", "registry": "127.0.0.1:5999", "state_dir": config.state_dir,
                         "hosts": [{"name": host, "docker": f"tcp://fake-{host}:2375"}],
                         "services": {"web": {"context": str(tmp_path),
                                              "slots": {"stable": 18081, "canary": 18082}}}},
                        base_dir=tmp_path)


def _image_everywhere(fakes: FakeAdapters, build_id: str) -> None:
    image = fakes.hosts["a"].add_image(f"{REPO}:{build_id}")
    fakes.hosts["b"].add_image(f"{REPO}:{build_id}", image.id)


def test_status_shows_running_missing_foreign_and_mismatches(fakes: FakeAdapters, tmp_path: Path) -> None:
    config = _config(tmp_path)
    _image_everywhere(fakes, "b1")
    _image_everywhere(fakes, "b2")
    deploy_slot(config, "stable", None, "b1")
    fakes.hosts["b"].remove("shop-web-stable")
    deploy_slot(_config_one(tmp_path, "b"), "stable", None, "b2")
    fakes.hosts["b"].add_container("shop-web-canary", "nginx:1.25")
    result = slot_status(config)
    states = {(x.host, x.slot): (x.state, x.build_id) for x in result.slots}
    assert states[("a", "stable")] == ("running", "b1") and states[("b", "stable")] == ("running", "b2")
    assert states[("a", "canary")] == ("missing", None) and states[("b", "canary")] == ("foreign", None)
    assert result.mismatches == ["web stable: BUILD_ID differs between hosts (a=b1, b=b2)"]
    assert all(x.uptime_seconds is not None for x in result.slots if x.state == "running")
    assert _build_ids(config, []) == {("a", "web", "stable"): "b1", ("b", "web", "stable"): "b2"}
    fakes.hosts["b"].reachable = False
    down = slot_status(config)
    assert down.unreachable == ["Docker engine of host b (tcp://fake-b:2375) is unreachable: connection "
                                "refused or socket missing (is dockerd running?)"]
    warnings: list[str] = []
    assert _build_ids(config, warnings) == {("a", "web", "stable"): "b1"} and warnings == down.unreachable


def test_build_then_skip_then_push_once(fakes: FakeAdapters, tmp_path: Path) -> None:
    config = _config(tmp_path)
    out = Said()
    ident = BuildIdentity("b7", "f" * 40)
    built = build(config, list(config.services.values()), ident, out, extra_tags=["latest"])
    assert built.images[0].built and built.images[0].tags == [f"{REPO}:b7", f"{REPO}:latest"]
    image = fakes.hosts["a"].image(f"{REPO}:b7")
    assert image is not None and image.labels["org.opencontainers.image.revision"] == "f" * 40
    again = build(config, list(config.services.values()), ident, out)
    assert again.images[0].skipped and again.images[0].image_id == image.id
    assert fakes.hosts["a"].timeout == 3600

    pushed = push(config, list(config.services.values()), "b7", out, extra_tags=["latest"])
    assert [(i.image, i.pushed) for i in pushed.images] == [(f"{REPO}:b7", True), (f"{REPO}:latest", True)]
    assert fakes.fake_registry.manifests[("shop/web", "b7")][1] == image.id
    once = push(config, list(config.services.values()), "b7", out)
    assert once.images[0].already and f"web: {REPO}:b7 already pushed ({once.images[0].digest})" in out.lines


def test_push_retries_a_transient_registry_then_gives_exit_3(fakes: FakeAdapters, tmp_path: Path) -> None:
    config = _config(tmp_path)
    _image_everywhere(fakes, "b8")
    out = Said()
    fakes.fake_registry.transient = 1
    done = push(config, list(config.services.values()), "b8", out, attempts=3)
    assert done.images[0].pushed
    assert any(line.startswith("registry 127.0.0.1:5999: connection refused; retrying in")
               and "(attempt 2/3)" in line for line in out.lines)
    fakes.fake_registry.transient = 5
    with pytest.raises(Unreachable, match="registry 127.0.0.1:5999 is unreachable after 2 attempts"):
        push(config, list(config.services.values()), "b8", out, attempts=2)
    with pytest.raises(Exception, match="is not in the local engine: run ps build first"):
        push(config, list(config.services.values()), "nope", out)


def test_notify_sends_one_payload_and_reports_a_failed_delivery(fakes: FakeAdapters, tmp_path: Path) -> None:
    config = _config(tmp_path)
    env = {"MATTERMOST_WEBHOOK_URL": "http://127.0.0.1:9/hooks/abc123secret"}
    result = notify(config, None, status="success", deploy_type="canary", env=env)
    assert result.delivered and len(fakes.fake_notifier.payloads) == 1
    assert "shop" in fakes.fake_notifier.payloads[0]["text"]
    fakes.fake_notifier.outcomes.append(Delivery(False, 500, 3, "HTTP 500: down (after 3 attempts)"))
    with pytest.raises(CheckFailed, match="notification not delivered to .*HTTP 500: down"):
        notify(config, None, status="failure", env=env, fail_on_error=True)
    assert len(fakes.fake_notifier.payloads) == 2
    assert notify(config, None, status="success", env={}).reason.startswith("no webhook URL")
    assert len(fakes.fake_notifier.payloads) == 2


def test_a_slot_label_check_keeps_foreign_containers_out(fakes: FakeAdapters, tmp_path: Path) -> None:
    config = _config(tmp_path)
    fakes.hosts["a"].add_container("x", "nginx:1", labels={s.LABEL_APP: "other"})
    assert fakes.hosts["a"].slot_containers(config.app) == []


def test_prune_keeps_the_newest_and_the_images_in_use(fakes: FakeAdapters) -> None:
    from pipeline_steps.adapters.docker_host import prune_repo

    engine = fakes.hosts["a"]
    for build_id in ("b1", "b2", "b3", "b4"):
        engine.add_image(f"{REPO}:{build_id}")
    engine.add_image("other/repo:keep", engine.images[next(iter(engine.images))].id)  # b1's image elsewhere
    engine.add_container("shop-web-stable", f"{REPO}:b2", labels={s.LABEL_APP: "shop"}, status="exited")
    assert prune_repo(engine, REPO, keep=2) == [f"{REPO}:b1"]
    assert sorted(t for i in engine.images.values() for t in i.tags) == [
        f"{REPO}:b2", f"{REPO}:b3", f"{REPO}:b4", "other/repo:keep"]


def test_an_unreachable_engine_reads_the_same_from_the_fake_and_the_real_adapter(tmp_path: Path) -> None:
    from pipeline_steps.adapters.docker_host import open_host

    host = Host("x", docker=f"unix://{tmp_path}/nonexistent.sock")
    with pytest.raises(Unreachable) as real:
        open_host(host, timeout=5)
    fake = FakeDockerHost(host)
    fake.reachable = False
    with factory.installed(FakeAdapters({"x": fake})), pytest.raises(Unreachable) as faked:
        open_host(host)
    assert real.value.message == faked.value.message == (
        f"Docker engine of host x (unix://{tmp_path}/nonexistent.sock) is unreachable: connection refused "
        "or socket missing (is dockerd running?)")
    assert real.value.exit_code == 3
