"""The DockerHost contract: the same assertions against FakeDockerHost and the real engine (SdkDockerHost).

What a fast-tier test assumes of the fake holds for the engine: names, labels, port bindings, states,
conflicts, the bind test, and the safe replace with its restore.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pipeline_steps.adapters import slots
from pipeline_steps.adapters.docker_sdk import SdkDockerHost
from pipeline_steps.adapters.fakes import FakeDockerHost
from pipeline_steps.adapters.interfaces import DockerHost, EngineError
from pipeline_steps.config import Host
from testbed.ports import free_ports, unique

RUN = {"restart_policy": {"Name": "no"}, "log_config": {"Type": "json-file", "Config": {}}}


class Side:
    """One implementation under test, with an image to run and the names it made (removed afterwards)."""

    def __init__(self, engine: DockerHost, image: str) -> None:
        self.engine = engine
        self.image = image
        self.app = unique("ct")

    def create(self, name: str, port: int, **labels: str) -> Any:
        return self.engine.create(name, self.image, labels={slots.LABEL_APP: self.app, **labels},
                                  environment={"APP_STATUS": "healthy"},
                                  ports={"80/tcp": ("127.0.0.1", port)}, **RUN)


@pytest.fixture(params=["fake", "real"])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    if request.param == "fake":
        fake = FakeDockerHost(Host("local"))
        image = "pipeline-steps/sample-app:contract"
        fake.add_image(image)
        yield Side(fake, image)
        return
    engine = request.getfixturevalue("engine")
    image = request.getfixturevalue("sample_image")
    real = SdkDockerHost.open(Host("local", docker=engine.base_url), timeout=60)
    made = Side(real, image)
    try:
        yield made
    finally:
        for c in real.slot_containers(made.app):
            real.remove(c.id)
        real.close()


def test_images_are_found_by_tag_and_id_and_missing_ones_are_none(side: Side) -> None:
    image = side.engine.image(side.image)
    assert image is not None and image.id.startswith("sha256:") and side.image in image.tags
    assert side.engine.image(image.id) == image
    assert side.engine.image(f"pipeline-steps/none-{side.app}:x") is None


def test_a_container_runs_with_its_labels_and_port_and_is_listed(side: Side) -> None:
    (port,) = free_ports(1)
    name = f"{side.app}-web-canary"
    made = side.create(name, port, **{slots.LABEL_SLOT: "canary"})
    assert made.status == "created" and made.name == name
    started = side.engine.start(made.id)
    assert started.status == "running" and started.running
    found = side.engine.container(name)
    assert found is not None and found.id == made.id and found.labels[slots.LABEL_SLOT] == "canary"
    assert found.image_name == side.image
    assert found.attrs["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1",
                                                                     "HostPort": str(port)}]}
    assert [c.name for c in side.engine.slot_containers(side.app)] == [name]
    assert (name, side.image, "127.0.0.1", port) in side.engine.published_ports()
    assert side.engine.container_images()[name] == side.image


def test_names_conflict_and_rename_stop_start_remove_work_by_id(side: Side) -> None:
    (port,) = free_ports(1)
    name = f"{side.app}-web-stable"
    made = side.create(name, port)
    with pytest.raises(EngineError, match="is already in use"):
        side.create(name, port)
    side.engine.rename(made.id, slots.aside_name(name))
    assert side.engine.container(name) is None
    assert side.engine.container(slots.aside_name(name)) is not None
    side.engine.start(made.id)
    side.engine.stop(made.id, timeout=0)
    stopped = side.engine.container(made.id)
    assert stopped is not None and stopped.status == "exited" and not stopped.running
    side.engine.remove(made.id)
    side.engine.remove(made.id)  # a second remove is no error
    assert side.engine.container(slots.aside_name(name)) is None


def test_a_published_port_is_held_for_the_bind_test_and_for_a_start(side: Side) -> None:
    (port,) = free_ports(1)
    holder = side.create(f"{side.app}-web-blue", port)
    side.engine.start(holder.id)
    assert side.engine.try_bind(side.image, "127.0.0.1", free_ports(1)[0], f"{side.app}-check",
                                {slots.LABEL_APP: side.app}) is None
    reason = side.engine.try_bind(side.image, "127.0.0.1", port, f"{side.app}-check",
                                  {slots.LABEL_APP: side.app})
    assert reason is not None and ("already allocated" in reason or "already in use" in reason)
    second = side.create(f"{side.app}-web-green", port)
    with pytest.raises(EngineError, match="already allocated|already in use"):
        side.engine.start(second.id)
    assert side.engine.container(f"{side.app}-check") is None


def test_the_safe_replace_restores_the_previous_container_when_the_start_fails(side: Side) -> None:
    port, other = free_ports(2)
    name = f"{side.app}-web-canary"
    previous = side.create(name, port)
    previous = side.engine.start(previous.id)
    blocker = side.create(f"{side.app}-blocker", other)
    side.engine.start(blocker.id)
    swap = slots.Swap(name, previous)
    run = {"environment": {}, "ports": {"80/tcp": ("127.0.0.1", other)}, **RUN}  # `other` is taken
    with pytest.raises(EngineError):
        slots.replace_slot(side.engine, swap, side.image, {slots.LABEL_APP: side.app}, run)
    assert swap.aside and swap.was_running
    assert slots.restore_slot(side.engine, swap) == f"host local: previous {name} runs again"
    back = side.engine.container(name)
    assert back is not None and back.id == previous.id and back.status == "running"
    assert {c.name for c in side.engine.slot_containers(side.app)} == {name, f"{side.app}-blocker"}


def test_the_safe_replace_swaps_and_drops_the_previous_container(side: Side) -> None:
    port, = free_ports(1)
    name = f"{side.app}-web-stable"
    previous = side.engine.start(side.create(name, port).id)
    swap = slots.Swap(name, previous)
    run = {"environment": {"A": "2"}, "ports": {"80/tcp": ("127.0.0.1", port)}, **RUN}
    new = slots.replace_slot(side.engine, swap, side.image, {slots.LABEL_APP: side.app}, run)
    assert new.status == "running" and new.id != previous.id
    assert slots.drop_previous(side.engine, swap) is None
    assert [c.id for c in side.engine.slot_containers(side.app)] == [new.id]
