"""`ps status` over two Docker hosts (the bed's engine and a second dockerd, on the run's addresses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from testbed.ports import address, free_ports, unique

SAMPLE_TAG = "pipeline-steps/sample-app"


def test_status_flags_a_host_with_another_build(second_host: Any, engine: Any, docker_client: Any,
                                                sample_image: str, docker_ps: Any, project: Any,
                                                workdir: Path) -> None:
    app = unique("st")
    stable, canary = free_ports(2)
    raw: dict[str, Any] = {
        "app": app, "registry": "127.0.0.1:5999", "state_dir": str(workdir / "state"),
        "hosts": [{"name": "one", "docker": engine.base_url, "address": address()},
                  {"name": "two", "docker": second_host.docker, "address": second_host.address}],
        "services": {"backend": {"context": ".", "slots": {"stable": stable, "canary": canary}}},
    }
    project(raw)
    repo = f"127.0.0.1:5999/{app}/backend"
    two = second_host.engine.client()
    clients = {"one": docker_client, "two": two}
    try:
        import docker.errors

        image = docker_client.images.get(sample_image)
        try:
            two.images.get(image.id)
        except docker.errors.ImageNotFound:  # the tag moved on the shared engine since the session began
            two.images.load(b"".join(image.save(named=sample_image)))
        for client in clients.values():  # by ID: the same image on both hosts, whatever the tag says now
            client.images.get(image.id).tag(repo, "b1")
            client.images.get(image.id).tag(repo, "b2")
        done = docker_ps("deploy-env", "--slot", "stable", "--build-id", "b1")
        assert done.returncode == 0, done.stderr
        # the slot answers on both hosts' addresses
        for host in (address(), second_host.address):
            answer = requests.get(f"http://{host}:{stable}/", timeout=5)
            assert answer.headers["X-Slot"] == "stable"
        ok = docker_ps("--json", "status")
        assert ok.returncode == 0, ok.stderr
        record = json.loads(ok.stdout.strip().splitlines()[-1])
        builds = {(s["host"], s["slot"]): s["build_id"] for s in record["slots"]}
        assert builds[("one", "stable")] == builds[("two", "stable")] == "b1"
        assert builds[("one", "canary")] is None
        # host two alone gets another build in the stable slot: the dual-server mismatch
        raw_two = {**raw, "hosts": [raw["hosts"][1]]}
        project(raw_two, name="two.yaml")
        done = docker_ps("--config", "two.yaml", "deploy-env", "--slot", "stable", "--build-id", "b2",
                         "--force")
        assert done.returncode == 0, done.stderr
        flagged = docker_ps("status")
        assert flagged.returncode == 1
        assert "MISMATCH backend stable" in flagged.stdout and "one=b1, two=b2" in flagged.stdout
        # a different image under the same tag on host two: deploy-env refuses
        other = two.images.get(sample_image)
        two.images.build(fileobj=_dockerfile(other.id), tag=f"{repo}:b3", rm=True)
        docker_client.images.get(sample_image).tag(repo, "b3")
        differ = docker_ps("deploy-env", "--slot", "canary", "--build-id", "b3")
        assert differ.returncode == 1 and "differs between hosts" in differ.stderr
    finally:
        for client in clients.values():
            for c in client.containers.list(all=True, filters={"label": f"pipeline-steps.app={app}"}):
                c.remove(force=True)
            for tag in ("b1", "b2", "b3"):
                try:
                    client.images.remove(f"{repo}:{tag}")
                except Exception:
                    pass
        two.close()


def _dockerfile(base: str) -> Any:
    import io

    return io.BytesIO(f"FROM {base}\nENV DIFFERENT=1\n".encode())


def test_status_names_a_container_ps_did_not_make(engine: Any, docker_client: Any, sample_image: str,
                                                  docker_ps: Any, project: Any, workdir: Path) -> None:
    app = unique("st")
    stable, canary = free_ports(2)
    project({"app": app, "registry": "127.0.0.1:5999", "state_dir": str(workdir / "state"),
             "services": {"backend": {"context": ".", "slots": {"stable": stable, "canary": canary}}}})
    foreign = docker_client.containers.create(sample_image, name=f"{app}-backend-canary")
    try:
        done = docker_ps("--json", "status")
        assert done.returncode == 0, done.stderr
        record = json.loads(done.stdout.strip().splitlines()[-1])
        states = {s["slot"]: (s["state"], s["image"]) for s in record["slots"]}
        assert states == {"stable": ("missing", None), "canary": ("foreign", sample_image)}
        assert f"{app}-backend-canary" in done.stdout and "foreign" in done.stdout
    finally:
        foreign.remove(force=True)
