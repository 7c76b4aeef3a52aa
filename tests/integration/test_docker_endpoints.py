"""The three Docker endpoint kinds of `hosts[].docker` for real: unix://, tcp:// and ssh:// (paramiko).

The first host is the bed's engine on its unix socket (slots on the run's address); the second is the
second dockerd (slots on the run's second address), reached over plain TCP on loopback or through a
real sshd running `docker system dial-stdio`. Both engines hold the same image, so the same digest goes
to every host.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from testbed.engine import run_port_holder, wait_answer
from testbed.ports import address, free_port, free_ports, second_address, unique
from testbed.sshd import SshServer

BUILD = "b1"


class TwoHosts:
    """A ps.yaml with host `one` (unix://, the bed's engine) and host `two` (the endpoint under test)."""

    def __init__(self, app: str, ports: dict[str, int], repo: str, clients: dict[str, Any]) -> None:
        self.app = app
        self.ports = ports
        self.repo = repo
        self.clients = clients

    def container(self, host: str, slot: str = "stable") -> Any:
        return self.clients[host].containers.get(f"{self.app}-backend-{slot}")


@pytest.fixture
def two_hosts(engine: Any, docker_client: Any, second_host: Any, sample_image: str, project: Any,
              workdir: Path) -> Iterator[Callable[[str], TwoHosts]]:
    """`two_hosts(endpoint)` writes ps.yaml with hosts [unix engine, endpoint] and tags the image on both.

    `two_hosts(endpoint, stable_port=P)` writes it again with the stable slot on port P.
    """
    app = unique("ep")
    stable, canary = free_ports(2)
    repo = f"127.0.0.1:5999/{app}/backend"
    two = second_host.engine.client()
    clients = {"one": docker_client, "two": two}

    import docker.errors

    def make(endpoint: str, stable_port: int | None = None) -> TwoHosts:
        ports = {"stable": stable_port or stable, "canary": canary}
        project({
            "app": app, "registry": "127.0.0.1:5999", "state_dir": str(workdir / "state"),
            "hosts": [{"name": "one", "docker": engine.base_url, "address": address()},
                      {"name": "two", "docker": endpoint, "address": second_host.address}],
            "services": {"backend": {"context": ".", "slots": ports}},
        })
        image = docker_client.images.get(sample_image)
        try:
            two.images.get(image.id)
        except docker.errors.ImageNotFound:  # the tag moved on the shared engine since the session began
            two.images.load(b"".join(image.save(named=sample_image)))
        for client in clients.values():
            client.images.get(image.id).tag(repo, BUILD)
        return TwoHosts(app, ports, repo, clients)

    yield make
    for client in clients.values():
        for c in client.containers.list(all=True, filters={"label": f"pipeline-steps.app={app}"}):
            c.remove(force=True)
        try:
            client.images.remove(f"{repo}:{BUILD}")
        except Exception:
            pass
    two.close()


def _deploy_everywhere(bed: TwoHosts, ps: Any, env: dict[str, str] | None = None) -> None:
    """deploy-env stable on both hosts: same image on each, answering on each host's address."""
    done = ps("deploy-env", "--slot", "stable", "--build-id", BUILD, env=env)
    assert done.returncode == 0, done.stderr
    assert "host one:" in done.stdout and "host two:" in done.stdout
    one, two = bed.container("one"), bed.container("two")
    assert one.image.id == two.image.id  # the same digest went to both hosts
    assert one.labels["pipeline-steps.image-digest"] == two.labels["pipeline-steps.image-digest"]
    assert two.labels["pipeline-steps.build-id"] == BUILD
    for host in (address(), second_address()):
        answer = requests.get(f"http://{host}:{bed.ports['stable']}/", timeout=5)
        assert answer.status_code == 200 and answer.headers["X-Slot"] == "stable"
    again = ps("deploy-env", "--slot", "stable", "--build-id", BUILD, env=env)
    assert again.returncode == 0, again.stderr
    assert "no change" in again.stdout and "host two:" in again.stdout
    assert bed.container("two").id == two.id
    status = ps("--json", "status", env=env)
    assert status.returncode == 0, status.stderr
    record = json.loads(status.stdout.strip().splitlines()[-1])
    builds = {(s["host"], s["slot"]): (s["build_id"], s["state"]) for s in record["slots"]}
    assert builds[("one", "stable")] == builds[("two", "stable")] == (BUILD, "running")
    assert builds[("two", "canary")] == (None, "missing")


def _one_line_exit_3(done: Any, *needles: str) -> str:
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_tcp_host_runs_the_same_image(two_hosts: Callable[[str], TwoHosts], tcp_host: str,
                                      docker_ps: Any) -> None:
    assert tcp_host.startswith(f"tcp://{address()}:")
    bed = two_hosts(tcp_host)
    _deploy_everywhere(bed, docker_ps)


def test_ssh_host_runs_the_same_image(two_hosts: Callable[[str], TwoHosts], ssh_host: SshServer,
                                      docker_ps: Any) -> None:
    bed = two_hosts(ssh_host.url)
    _deploy_everywhere(bed, docker_ps, env=ssh_host.client_env)
    log = ssh_host.log()
    assert "Accepted publickey for root from 127.0.0.1" in log  # it really went through sshd
    assert "Starting session: command for root" in log


def test_ssh_host_down_is_unreachable(two_hosts: Callable[[str], TwoHosts], ssh_host: SshServer,
                                      docker_ps: Any) -> None:
    bed = two_hosts(ssh_host.url)
    ssh_host.stop(remove=False)  # keep the client HOME: only the server is gone
    done = docker_ps("deploy-env", "--slot", "stable", "--build-id", BUILD, env=ssh_host.client_env)
    _one_line_exit_3(done, "host two", ssh_host.url, "sshd")
    import docker.errors

    with pytest.raises(docker.errors.NotFound):  # nothing was started on the reachable host either
        bed.container("one")
    status = docker_ps("status", env=ssh_host.client_env)
    assert status.returncode == 3 and "Traceback" not in status.stderr
    assert "host two" in status.stderr and ssh_host.url in status.stderr
    assert any(line.startswith("one ") for line in status.stdout.splitlines())  # host one still listed


def _forget_host_key(server: SshServer) -> None:
    (server.home / ".ssh" / "known_hosts").write_text("")


def _another_host_key(server: SshServer) -> None:
    other = server.root / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True,
                   capture_output=True)
    key_type, key_data = other.with_name("other_host_key.pub").read_text().split()[:2]
    (server.home / ".ssh" / "known_hosts").write_text(f"[{address()}]:{server.port} {key_type} {key_data}\n")


def _revoke_client_key(server: SshServer) -> None:
    (server.root / "authorized_keys").write_text("")


def _no_identity_file(server: SshServer) -> None:
    config = server.home / ".ssh" / "config"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if "IdentityFile" not in line))


@pytest.mark.parametrize(("breakage", "needles"), [
    (_forget_host_key, ("known_hosts", "ssh-keyscan -p")),
    (_another_host_key, ("host key differs",)),
    (_revoke_client_key, ("login refused", "IdentityFile")),
    (_no_identity_file, ("no SSH key", "IdentityFile")),
], ids=["host-key-unknown", "host-key-changed", "key-not-authorized", "no-key"])
def test_ssh_problem_is_unreachable_with_the_fix(two_hosts: Callable[[str], TwoHosts], ssh_host: SshServer,
                                                 docker_ps: Any, breakage: Callable[[SshServer], None],
                                                 needles: tuple[str, ...]) -> None:
    two_hosts(ssh_host.url)
    breakage(ssh_host)
    done = docker_ps("deploy-env", "--slot", "stable", "--build-id", BUILD, env=ssh_host.client_env)
    _one_line_exit_3(done, "host two", ssh_host.url, *needles)
    assert "Accepted publickey" not in ssh_host.log()  # refused before any session


def test_tcp_port_nobody_listens_on_is_unreachable(two_hosts: Callable[[str], TwoHosts],
                                                   docker_ps: Any) -> None:
    dead = f"tcp://{address()}:{free_port()}"
    two_hosts(dead)
    done = docker_ps("deploy-env", "--slot", "stable", "--build-id", BUILD)
    _one_line_exit_3(done, "host two", dead)
    status = docker_ps("status")
    assert status.returncode == 3 and "host two" in status.stderr and dead in status.stderr


def test_ssh_host_whose_docker_cannot_reach_its_engine_is_unreachable(
        two_hosts: Callable[[str], TwoHosts], tmp_path: Path, docker_ps: Any) -> None:
    from testbed.sshd import start_sshd

    server = start_sshd(f"unix://{tmp_path / 'no-such-docker.sock'}")
    try:
        two_hosts(server.url)
        done = docker_ps("deploy-env", "--slot", "stable", "--build-id", BUILD, env=server.client_env)
        _one_line_exit_3(done, "host two", server.url, "dial-stdio")
        assert "Accepted publickey" in server.log()  # the login worked; the remote docker did not
    finally:
        server.stop()


# ---------------------------------------------------------------- busy ports on a remote engine


def _stable_untouched(bed: TwoHosts, before: dict[str, Any]) -> None:
    """Both stable containers are the same ones, never stopped, and still answer on their old port."""
    for host, old in before.items():
        now = bed.container(host)
        assert now.id == old.id and now.status == "running", host
        assert now.attrs["State"]["StartedAt"] == old.attrs["State"]["StartedAt"], host
    for host in (address(), second_address()):
        assert wait_answer(f"http://{host}:{bed.ports['stable']}/", X_Slot="stable") is not None


def _no_canary(bed: TwoHosts) -> None:
    import docker.errors

    for host in ("one", "two"):
        with pytest.raises(docker.errors.NotFound):
            bed.container(host, "canary")


def test_tcp_port_held_by_a_container_there_is_named_before_anything_stops(
        two_hosts: Callable[[str, int | None], TwoHosts], tcp_host: str, docker_ps: Any,
        second_host: Any, sample_image: str) -> None:
    bed = two_hosts(tcp_host, None)
    _deploy_everywhere(bed, docker_ps)
    before = {host: bed.container(host) for host in ("one", "two")}
    held = free_port()
    holder = run_port_holder(bed.clients["two"], sample_image, second_host.address, held,
                             unique("pst-holder-"))
    try:
        two_hosts(tcp_host, held)  # the running stable slot is moved onto the held port
        done = docker_ps("deploy-env", "--slot", "stable", "--build-id", BUILD)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        assert f"host two: port {second_host.address}:{held}" in done.stderr
        assert f"container {holder.name} (image {sample_image})" in done.stderr
        _stable_untouched(bed, before)  # on the old port
    finally:
        holder.remove(force=True)


@pytest.mark.parametrize("kind", ["tcp", "ssh"])
def test_remote_port_held_by_a_host_process_is_named(two_hosts: Callable[[str, int | None], TwoHosts],
                                                     tcp_host: str, second_host: Any, docker_ps: Any,
                                                     request: pytest.FixtureRequest, kind: str) -> None:
    """A process (not a container) listens on host two's address: only the engine there can tell."""
    endpoint, env = tcp_host, None
    if kind == "ssh":
        server = request.getfixturevalue("ssh_host")
        endpoint, env = server.url, server.client_env
    bed = two_hosts(endpoint, None)
    _deploy_everywhere(bed, docker_ps, env=env)
    before = {host: bed.container(host) for host in ("one", "two")}
    holder = socket.socket()
    holder.bind((second_host.address, 0))
    holder.listen(1)
    held = holder.getsockname()[1]
    try:
        two_hosts(endpoint, held)
        done = docker_ps("deploy-env", "--slot", "stable", "--build-id", BUILD, env=env)
        assert done.returncode == 1, (done.stdout, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in done.stderr, lines
        assert f"host two: port {second_host.address}:{held} of slot stable is held by a process" in lines[0]
        assert "address already in use" in lines[0]
        _stable_untouched(bed, before)  # on the old port
        _no_canary(bed)
        names = {c.name for c in bed.clients["two"].containers.list(all=True)}
        assert not [n for n in names if n.endswith("-ps-portcheck")]  # the bind test cleaned up
    finally:
        holder.close()
    # a first deploy onto a held port: refused on every host before any container is made
    two_hosts(endpoint, None)
    canary_holder = socket.socket()
    canary_holder.bind((second_host.address, bed.ports["canary"]))
    canary_holder.listen(1)
    try:
        done = docker_ps("deploy-env", "--slot", "canary", "--build-id", BUILD, env=env)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert f"host two: port {second_host.address}:{bed.ports['canary']} of slot canary" in done.stderr
        _no_canary(bed)
    finally:
        canary_holder.close()
