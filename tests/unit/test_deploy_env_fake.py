"""deploy-env's logic against FakeDockerHost: refusals, held ports, restore on failure, idempotency."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.adapters import factory
from pipeline_steps.adapters import slots as s
from pipeline_steps.adapters.fakes import FakeAdapters, FakeDockerHost, FakeRegistry
from pipeline_steps.config import Config, Host, parse_config
from pipeline_steps.errors import CheckFailed, Unreachable
from pipeline_steps.operations.deploy_env import deploy_slot

REPO = "127.0.0.1:5999/shop/web"
B1, B2 = "b1", "b2"


class Bed:
    """Two fake hosts (a, b) with the images of builds b1 and b2 (same ID on both), and a config."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.registry = FakeRegistry()
        self.hosts = {"a": FakeDockerHost(Host("a", docker="tcp://fake-a:2375"), self.registry),
                      "b": FakeDockerHost(Host("b", docker="tcp://fake-b:2375", address="127.0.0.2"),
                                          self.registry)}
        for build in (B1, B2):
            image = self.hosts["a"].add_image(f"{REPO}:{build}", digest=f"sha256:{build}" * 4)
            self.hosts["b"].add_image(f"{REPO}:{build}", image.id, digest=f"sha256:{build}" * 4)
        self.adapters = FakeAdapters(self.hosts, self.registry)
        self.said: list[str] = []
        self.config = self.make()

    def make(self, env: dict[str, str] | None = None, canary: int = 18082) -> Config:
        hosts = [{"name": n, "docker": h.host.docker, "address": h.host.address}
                 for n, h in self.hosts.items()]
        return parse_config({"app": "shop", "registry": "127.0.0.1:5999", "state_dir": str(self.tmp_path),
                             "hosts": hosts,
                             "services": {"web": {"context": ".", "env": env or {"A": "1"},
                                                  "slots": {"stable": 18081, "canary": canary}}}},
                            base_dir=self.tmp_path)

    def deploy(self, build: str = B1, config: Config | None = None, **kw: Any) -> Any:
        return deploy_slot(config or self.config, "canary", None, build, say=self.said.append, **kw)

    def slot(self, host: str = "a", name: str = "shop-web-canary") -> Any:
        return self.hosts[host].named(name)


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    b = Bed(tmp_path)
    with factory.installed(b.adapters):
        yield b


def test_creates_the_slot_on_every_host_with_labels_ports_and_a_0600_env_file(bed: Bed) -> None:
    result = bed.deploy()
    assert result.changed and [c.action for c in result.changes] == ["created", "created"]
    for name, address in (("a", "127.0.0.1"), ("b", "127.0.0.2")):
        c = bed.slot(name)
        assert c.status == "running" and c.ports == {"80/tcp": (address, 18082)}
        assert c.labels[s.LABEL_BUILD_ID] == B1 and c.labels[s.LABEL_SLOT] == "canary"
        assert c.env["A"] == "1" and c.env["PS_SLOT"] == "canary"
        assert c.restart_policy == {"Name": "unless-stopped"}
    env_file = Path(result.changes[0].env_file)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600 and "A=1\n" in env_file.read_text()


def test_the_same_run_again_changes_nothing(bed: Bed) -> None:
    bed.deploy()
    ids = {n: bed.slot(n).id for n in bed.hosts}
    again = bed.deploy()
    assert not again.changed and {c.action for c in again.changes} == {"unchanged"}
    assert {n: bed.slot(n).id for n in bed.hosts} == ids


def _set(field: str, value: Any) -> Callable[[Any], None]:
    return lambda c: setattr(c, field, value)


@pytest.mark.parametrize(("change", "reason"), [
    (_set("restart_policy", {"Name": "no"}), "new restart policy (no -> unless-stopped)"),
    (_set("log_config", {"Type": "local", "Config": {}}), "new log config"),
    (lambda c: c.env.update(A="2"), "new environment"),
    (_set("ports", {"80/tcp": ("127.0.0.1", 18099)}), "new port (127.0.0.1:18099 -> 127.0.0.1:18082)"),
    (lambda c: c.labels.update({s.LABEL_SERVICE: "other"}), "new labels"),
    (lambda c: c.labels.update({s.LABEL_DIGEST: "sha256:old"}), "new image"),
])
def test_every_run_setting_that_differs_replaces_the_container(bed: Bed, change: Callable[[Any], None],
                                                               reason: str) -> None:
    bed.deploy()
    before = bed.slot("a").id
    change(bed.slot("a"))
    result = bed.deploy()
    by_host = {c.host: c for c in result.changes}
    assert by_host["a"].action == "replaced" and reason in by_host["a"].reason
    assert by_host["b"].action == "unchanged"
    assert bed.slot("a").id != before and bed.slot("a").status == "running"
    assert bed.hosts["a"].named(s.aside_name("shop-web-canary")) is None  # the previous one is gone


def test_new_build_and_new_env_are_replacements(bed: Bed) -> None:
    bed.deploy()
    assert "new image" in bed.deploy(B2).changes[0].reason
    assert "new environment" in bed.deploy(B2, config=bed.make(env={"A": "9"})).changes[0].reason
    assert bed.slot("b").env["A"] == "9" and bed.slot("b").labels[s.LABEL_BUILD_ID] == B2


def test_a_container_ps_did_not_make_is_refused_then_replaced_with_force(bed: Bed) -> None:
    bed.hosts["b"].add_container("shop-web-canary", "nginx:1.25")
    with pytest.raises(CheckFailed, match=r"host b: container shop-web-canary \(image nginx:1.25, running\) "
                                          r"has the slot's name but pipeline-steps did not make it"):
        bed.deploy()
    assert bed.slot("a") is None  # checked on every host before anything ran
    result = bed.deploy(force=True)
    assert "not made by pipeline-steps (image nginx:1.25) replaced (--force)" in result.changes[1].reason
    assert bed.slot("b").labels[s.LABEL_APP] == "shop"


def test_a_port_held_by_another_container_is_named_and_nothing_stops(bed: Bed) -> None:
    bed.deploy()
    bed.hosts["b"].add_container("squatter", "redis:7", ports={"6379/tcp": ("0.0.0.0", 18082)})
    bed.slot("b").ports = {"80/tcp": ("127.0.0.2", 18000)}  # the slot must move to its port
    with pytest.raises(CheckFailed, match=r"host b: port 127.0.0.2:18082 of slot canary is held by container "
                                          r"squatter \(image redis:7\)"):
        bed.deploy()
    assert bed.slot("a").status == bed.slot("b").status == "running"


def test_a_port_held_by_a_process_is_named(bed: Bed) -> None:
    bed.hosts["a"].process_holder[("127.0.0.1", 18082)] = "process nginx (pid 42)"
    with pytest.raises(CheckFailed, match=r"held by process nginx \(pid 42\)"):
        bed.deploy()
    bed.hosts["a"].process_holder.clear()
    bed.hosts["a"].held[("0.0.0.0", 18082)] = "listen tcp4 0.0.0.0:18082: bind: address already in use"
    with pytest.raises(CheckFailed, match=r"a process on that host \(not a container of its engine; the "
                                          r"engine says: listen tcp4 0.0.0.0:18082: bind: address"):
        bed.deploy()
    assert bed.slot("a") is None and bed.slot("b") is None


def test_a_bind_test_that_cannot_run_is_a_warning(bed: Bed) -> None:
    bed.hosts["a"].bind_test_error = "no docker-init"
    assert bed.deploy().changed
    assert any("the bind test of port 127.0.0.1:18082 could not run (no docker-init)" in line
               for line in bed.said)


def test_a_failed_start_puts_the_previous_container_back_on_every_host(bed: Bed) -> None:
    bed.deploy()
    old = {n: bed.slot(n).id for n in bed.hosts}
    bed.hosts["b"].fail_start["shop-web-canary"] = "OCI runtime create failed: boom"
    with pytest.raises(CheckFailed) as err:
        bed.deploy(B2)
    text = err.value.message
    assert "host b: could not start shop-web-canary: OCI runtime create failed: boom" in text
    assert "host b: previous shop-web-canary runs again" in text
    assert "host a: previous shop-web-canary runs again" in text
    for n in bed.hosts:
        c = bed.slot(n)
        assert c.id == old[n] and c.status == "running" and c.labels[s.LABEL_BUILD_ID] == B1
        assert len(bed.hosts[n].containers) == 1


def test_a_container_that_exits_at_once_is_reported_with_its_log(bed: Bed) -> None:
    bed.hosts["a"].exit_on_start["shop-web-canary"] = "exec /app: no such file"
    with pytest.raises(CheckFailed, match=r"host a: shop-web-canary is exited right after start: exec /app: "
                                          r"no such file; nothing ran in the slot before"):
        bed.deploy()
    assert bed.slot("a") is None


def test_an_engine_that_goes_away_mid_swap_is_exit_3(bed: Bed) -> None:
    bed.deploy()
    bed.hosts["a"].gone.add("create")
    with pytest.raises(Unreachable, match="host a: Docker engine went away while swapping shop-web-canary"):
        bed.deploy(B2)


def test_an_unreachable_host_is_exit_3_naming_it(bed: Bed) -> None:
    bed.hosts["b"].reachable = False
    with pytest.raises(Unreachable, match=r"Docker engine of host b \(tcp://fake-b:2375\) is unreachable"):
        bed.deploy()
    assert bed.slot("a") is None


def test_two_hosts_with_different_images_are_refused(bed: Bed) -> None:
    bed.hosts["b"].add_image(f"{REPO}:{B1}")  # another image under the same tag
    with pytest.raises(CheckFailed, match=rf"image {REPO}:{B1} differs between hosts \(a: sha256:"):
        bed.deploy()
    assert bed.slot("a") is None and bed.slot("b") is None


def test_a_missing_image_is_pulled_with_the_registry_credentials(bed: Bed,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_USER", "ci")
    monkeypatch.setenv("REGISTRY_PASSWORD", "s3cret-pw")
    image = bed.hosts["a"].add_image(f"{REPO}:b3")  # built and pushed from host a
    digest = bed.registry.store("shop/web", "b3", image.id)
    image.repo_digests.add(f"{REPO}@{digest}")
    result = bed.deploy("b3")
    assert bed.hosts["b"].pulls == [(f"{REPO}:b3", {"username": "ci", "password": "s3cret-pw"})]
    assert bed.hosts["a"].pulls == []
    assert result.changes[0].digest == result.changes[1].digest == digest
    with pytest.raises(CheckFailed, match=rf"host a: image {REPO}:nope is not there and could not be pulled"):
        bed.deploy("nope")


def test_dry_run_changes_nothing(bed: Bed) -> None:
    result = bed.deploy(dry_run=True)
    assert [c.action for c in result.changes] == ["would-create", "would-create"]
    assert not bed.hosts["a"].containers and not bed.hosts["b"].containers


def test_a_previous_container_left_aside_is_taken_as_the_slot(bed: Bed) -> None:
    bed.deploy()
    bed.hosts["a"].rename("shop-web-canary", s.aside_name("shop-web-canary"))  # an interrupted run
    result = bed.deploy(B2)
    assert "left by an interrupted run replaced" in result.changes[0].reason
    assert [c.name for c in bed.hosts["a"].containers.values()] == ["shop-web-canary"]
