"""The DockerHost contract: the same assertions against FakeDockerHost and the real engine (SdkDockerHost).

What a fast-tier test assumes of the fake holds for the engine: names, labels, port bindings, states,
conflicts, the bind test, and the safe replace with its restore; images (tag, untag, prune, build, bad
references), listing by labels, logs since a time, exec, top and the errors of each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.adapters import slots
from pipeline_steps.adapters.docker_host import prune_repo
from pipeline_steps.adapters.docker_sdk import SdkDockerHost
from pipeline_steps.adapters.fakes import FakeDockerHost
from pipeline_steps.adapters.interfaces import DockerHost, EngineError, NotFoundError
from pipeline_steps.adapters.nginx.procs import parse_top
from pipeline_steps.config import Host
from testbed.ports import address, free_ports, unique
from testbed.wait import until

RUN = {"restart_policy": {"Name": "no"}, "log_config": {"Type": "json-file", "Config": {}}}


class Side:
    """One implementation under test, with an image to run and the names it made (removed afterwards)."""

    def __init__(self, engine: DockerHost, image: str) -> None:
        self.engine = engine
        self.image = image
        self.app = unique("ct")
        self.repo = f"pipeline-steps/{self.app}"  # the images this test tags (untagged afterwards)

    def say(self, name: str, text: str) -> None:
        """The container's main process prints `text` (a line of its logs)."""
        if isinstance(self.engine, FakeDockerHost):
            self.engine.write_log(name, text)
        else:
            code, out = self.engine.exec(name, ["sh", "-c", f"echo {text} > /proc/1/fd/1"])
            assert code == 0, out

    def script_exec(self, cmd: list[str], code: int, output: str) -> None:
        """What the fake answers to `cmd` (the real engine runs it)."""
        if isinstance(self.engine, FakeDockerHost):
            self.engine.exec_results[tuple(cmd)] = (code, output)

    def fail_build(self, tag: str, error: str) -> None:
        """The fake's build of `tag` stops with `error` (the real one runs the failing Dockerfile)."""
        if isinstance(self.engine, FakeDockerHost):
            self.engine.fail_build[tag] = error

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
        for other in ("", "-other"):
            for kept in real.repo_images(made.repo + other):
                for tag in kept.tags:
                    try:
                        real.untag(tag)
                    except EngineError:
                        pass
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


# ---------------------------------------------------------------- images


def _built(side: Side, tmp_path: Path, tag: str, dockerfile: str) -> tuple[list[dict[str, Any]], str | None]:
    """Build `dockerfile` (FROM the side's image) as `tag`: the stream's chunks and the image ID it named."""
    (tmp_path / "Dockerfile").write_text(f"FROM {side.image}\n{dockerfile}\n")
    chunks = list(side.engine.build(path=str(tmp_path), dockerfile="Dockerfile", tag=tag,
                                    buildargs={}, labels={"ps.test": side.app}))
    ids = [c["aux"]["ID"] for c in chunks if isinstance(c.get("aux"), dict) and "ID" in c["aux"]]
    return chunks, (ids[-1] if ids else None)


def test_tag_and_untag_name_one_image_and_missing_ones_are_not_found(side: Side) -> None:
    image = side.engine.image(side.image)
    assert image is not None
    side.engine.tag(image.id, side.repo, "1")
    side.engine.tag(image.id, side.repo, "2")
    tagged = side.engine.image(f"{side.repo}:1")
    assert tagged is not None and tagged.id == image.id and f"{side.repo}:2" in tagged.tags
    kept = side.engine.repo_images(side.repo)
    assert [(k.id, sorted(k.tags)) for k in kept] == [(image.id, [f"{side.repo}:1", f"{side.repo}:2"])]
    side.engine.untag(f"{side.repo}:1")
    assert side.engine.image(f"{side.repo}:1") is None
    assert side.engine.image(f"{side.repo}:2") is not None and side.engine.image(side.image) is not None
    with pytest.raises(NotFoundError):
        side.engine.untag(f"{side.repo}:1")
    with pytest.raises(NotFoundError):
        side.engine.tag("sha256:" + "0" * 64, side.repo, "3")


def test_a_malformed_reference_is_an_engine_error_not_a_missing_image(side: Side) -> None:
    with pytest.raises(EngineError, match="invalid reference format"):
        side.engine.image(f"{side.repo}/Upper Case:x")
    assert side.engine.image(f"{side.repo}:NotThere") is None


def test_a_build_streams_its_image_id_and_labels_and_a_failing_one_names_its_error(side: Side,
                                                                                   tmp_path: Path) -> None:
    chunks, image_id = _built(side, tmp_path, f"{side.repo}:built", "LABEL ps.step=one")
    built = side.engine.image(f"{side.repo}:built")
    assert image_id is not None and built is not None and built.id == image_id
    assert built.labels["ps.test"] == side.app
    assert not [c for c in chunks if "error" in c]
    side.fail_build(f"{side.repo}:broken", "The command '/bin/sh -c exit 3' returned a non-zero code: 3")
    chunks, _ = _built(side, tmp_path, f"{side.repo}:broken", "RUN exit 3")
    errors = [str(c["error"]) for c in chunks if "error" in c]
    assert errors and "non-zero code: 3" in errors[-1]
    assert side.engine.image(f"{side.repo}:broken") is None


def test_prune_untags_the_old_unused_images_of_a_repo_and_keeps_the_used_and_other_repos(
        side: Side, tmp_path: Path) -> None:
    used = side.engine.image(side.image)
    assert used is not None
    side.engine.tag(used.id, side.repo, "used")
    _, old_id = _built(side, tmp_path, f"{side.repo}:old", f"LABEL ps.old={side.app}")
    assert old_id is not None
    side.engine.tag(old_id, side.repo + "-other", "old")  # the same image in another repository
    side.engine.create(f"{side.app}-user", f"{side.repo}:used", labels={slots.LABEL_APP: side.app},
                       environment={}, ports={}, **RUN)
    assert used.id in side.engine.images_in_use() and old_id not in side.engine.images_in_use()
    assert prune_repo(side.engine, side.repo, keep=0) == [f"{side.repo}:old"]
    assert side.engine.image(f"{side.repo}:used") is not None  # a container uses it
    assert side.engine.image(f"{side.repo}:old") is None
    left = side.engine.image(f"{side.repo}-other:old")
    assert left is not None and left.id == old_id  # untagged, not removed by ID


def test_the_last_tag_of_an_image_a_stopped_container_uses_is_not_untagged(side: Side,
                                                                           tmp_path: Path) -> None:
    _, only = _built(side, tmp_path, f"{side.repo}:only", f"LABEL ps.only={side.app}")
    assert only is not None
    made = side.engine.create(f"{side.app}-only", f"{side.repo}:only", labels={slots.LABEL_APP: side.app},
                              environment={}, ports={}, **RUN)
    with pytest.raises(EngineError, match="must force"):
        side.engine.untag(f"{side.repo}:only")
    side.engine.remove(made.id)
    side.engine.untag(f"{side.repo}:only")
    assert side.engine.image(only) is None


# ---------------------------------------------------------------- containers: list, logs, exec, top


def _running(side: Side, slot: str) -> Any:
    (port,) = free_ports(1)
    made = side.engine.create(f"{side.app}-web-{slot}", side.image,
                              labels={slots.LABEL_APP: side.app, slots.LABEL_SLOT: slot},
                              environment={"APP_STATUS": "healthy"}, ports={"80/tcp": (address(), port)},
                              **RUN)
    return side.engine.start(made.id)


def test_containers_are_listed_by_every_label_given_and_by_state(side: Side) -> None:
    canary = _running(side, "canary")
    stable = _running(side, "stable")
    side.engine.stop(stable.id, timeout=0)
    app = {slots.LABEL_APP: side.app}
    assert {c.id for c in side.engine.list_containers(app)} == {canary.id, stable.id}
    assert [c.id for c in side.engine.list_containers({**app, slots.LABEL_SLOT: "stable"})] == [stable.id]
    assert [c.id for c in side.engine.list_containers(app, running_only=True)] == [canary.id]
    assert side.engine.list_containers({slots.LABEL_APP: side.app + "-none"}) == []


def test_logs_since_a_time_hold_only_the_lines_written_after_it(side: Side) -> None:
    c = _running(side, "canary")
    side.say(c.name, f"first-{side.app}")
    assert until(lambda: f"first-{side.app}" in side.engine.logs(c.id), 20)
    mark = time.time()
    side.say(c.name, f"second-{side.app}")
    assert until(lambda: f"second-{side.app}" in side.engine.logs(c.id, since=mark), 20)
    later = side.engine.logs(c.id, since=mark)
    assert f"first-{side.app}" not in later
    last = side.engine.logs(c.id, timestamps=True, tail=1).strip()
    assert last.endswith(f"second-{side.app}") and last[:4].isdigit() and last[10] == "T"
    with pytest.raises(NotFoundError):
        side.engine.logs(f"{side.app}-none")


def test_exec_runs_in_a_running_container_only(side: Side) -> None:
    c = _running(side, "canary")
    side.script_exec(["echo", "hi"], 0, "hi\n")
    side.script_exec(["sh", "-c", "exit 3"], 3, "")
    assert side.engine.exec(c.id, ["echo", "hi"]) == (0, "hi\n")
    assert side.engine.exec(c.id, ["sh", "-c", "exit 3"]) == (3, "")
    side.engine.stop(c.id, timeout=0)
    with pytest.raises(EngineError, match="is not running"):
        side.engine.exec(c.id, ["echo", "hi"])
    with pytest.raises(NotFoundError):
        side.engine.exec(f"{side.app}-none", ["echo", "hi"])


def test_files_in_a_container_are_read_written_and_read_by_offset(side: Side) -> None:
    c = _running(side, "canary")
    if isinstance(side.engine, FakeDockerHost):
        side.engine.containers[c.id].dirs.add("/tmp")  # the image's directory the real one has
    assert side.engine.get_file(c.id, "/tmp/ps-x.conf") is None
    assert side.engine.read_file(c.id, "/tmp/ps-x.conf") is None
    side.engine.put_file(c.id, "/tmp/ps-x.conf", b"one\ntwo\n")
    assert side.engine.get_file(c.id, "/tmp/ps-x.conf") == b"one\ntwo\n"
    whole = side.engine.read_file(c.id, "/tmp/ps-x.conf")
    assert whole is not None and whole.size == 8 and whole.data == b"one\ntwo\n"
    part = side.engine.read_file(c.id, "/tmp/ps-x.conf", 4)
    assert part is not None and part.data == b"two\n" and part.ident == whole.ident
    past = side.engine.read_file(c.id, "/tmp/ps-x.conf", 100)
    assert past is not None and past.data == b"" and past.size == 8
    # a rename inside one directory (how ps replaces an include) keeps the file, under the new name
    assert side.engine.exec(c.id, ["mv", "-f", "/tmp/ps-x.conf", "/tmp/ps-y.conf"])[0] == 0
    assert side.engine.get_file(c.id, "/tmp/ps-x.conf") is None
    assert side.engine.get_file(c.id, "/tmp/ps-y.conf") == b"one\ntwo\n"
    with pytest.raises(NotFoundError):
        side.engine.put_file(c.id, "/tmp/no-such-dir/x.conf", b"x")
    with pytest.raises(NotFoundError):
        side.engine.get_file(f"{side.app}-none", "/tmp/ps-y.conf")


def test_a_directory_is_listed_from_the_engines_archive(side: Side) -> None:
    c = _running(side, "canary")
    if isinstance(side.engine, FakeDockerHost):
        side.engine.containers[c.id].dirs.add("/tmp")
    assert side.engine.exec(c.id, ["mkdir", "-p", "/tmp/ps-l/sub"])[0] == 0
    names = [f"b{n}.bak" for n in range(40)]  # more than one exec output frame would carry
    for name in names:
        side.engine.put_file(c.id, f"/tmp/ps-l/{name}", b"x" * 512)
    side.engine.put_file(c.id, "/tmp/ps-l/sub/inner", b"y")
    assert side.engine.list_dir(c.id, "/tmp/ps-l") == sorted([*names, "sub"])
    assert side.engine.list_dir(c.id, "/tmp/ps-l/") == sorted([*names, "sub"])
    assert side.engine.list_dir(c.id, "/tmp/ps-none") is None
    with pytest.raises(NotFoundError):
        side.engine.list_dir(f"{side.app}-none", "/tmp")


def test_top_lists_the_processes_of_a_running_container_only(side: Side) -> None:
    c = _running(side, "canary")
    top = side.engine.top(c.id)
    assert {"PID", "PPID", "CMD"} <= set(top.titles) and top.rows
    procs = parse_top({"Titles": list(top.titles), "Processes": [list(r) for r in top.rows]})
    assert procs and all(p.pid > 0 for p in procs)
    side.engine.stop(c.id, timeout=0)
    with pytest.raises(EngineError, match="is not running"):
        side.engine.top(c.id)
    with pytest.raises(NotFoundError):
        side.engine.top(f"{side.app}-none")


def test_a_missing_container_is_not_found_for_every_call_but_remove(side: Side) -> None:
    name = f"{side.app}-none"
    assert side.engine.container(name) is None
    for call in (lambda: side.engine.start(name), lambda: side.engine.stop(name),
                 lambda: side.engine.rename(name, name + "-x")):
        with pytest.raises(NotFoundError):
            call()
    side.engine.remove(name)
