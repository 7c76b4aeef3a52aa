"""Fixtures of the slot and traffic tests: a second Docker host, nginx in front of slot ports, nginx in a
container whose include only its engine reaches (a named volume), and a front balancer (haproxy)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed import images
from testbed.engine import Engine, private_bridge, start_dockerd
from testbed.front import Front, start_front
from testbed.many_routers import BedHost, ManyRouterBed, start_many_router_bed
from testbed.nginx import Nginx, SiteBed, server_block, site_plan
from testbed.nginx_image import VolumeNginx, start_volume_nginx
from testbed.ports import address, free_port, second_address, unique
from testbed.sshd import SshServer, start_sshd
from testbed.tls_engine import TlsEngine, start_tls_dockerd


@dataclass
class SecondHost:
    """A second dockerd with its own socket, data root and bridge; nginx reaches its slots on the run's
    second address."""

    engine: Engine
    address: str
    bridge: str
    tcp_url: str = ""  # the same dockerd on plain TCP, loopback only: tcp://<run address>:<port>

    @property
    def docker(self) -> str:
        return self.engine.base_url


@pytest.fixture(scope="session")
def second_host(docker_client: Any, sample_image: str) -> Iterator[SecondHost]:
    """A second Docker host (its own dockerd and bridge) holding the sample image."""
    with private_bridge() as bridge:
        yield from _second_host(docker_client, sample_image, bridge)


def _second_host(docker_client: Any, sample_image: str, bridge: str) -> Iterator[SecondHost]:
    engine: Engine | None = None
    try:
        root = Path(tempfile.mkdtemp(prefix="ps-bed-dockerd2-"))
        tcp_url = f"tcp://{address()}:{free_port()}"
        engine = start_dockerd(root, bridge=bridge,
                               extra_args=["--iptables=false", "--ip-masq=false", "-H", tcp_url])
        client = engine.client()
        try:
            # saved under this very tag: named=True takes the image's first tag, maybe a parallel run's
            data = b"".join(docker_client.images.get(sample_image).save(named=sample_image))
            client.images.load(data)
        finally:
            client.close()
        yield SecondHost(engine=engine, address=second_address(), bridge=bridge, tcp_url=tcp_url)
    finally:
        if engine is not None:
            try:
                c = engine.client()
                for container in c.containers.list(all=True):
                    container.remove(force=True)
                c.close()
            except Exception:
                pass
            engine.stop()


@pytest.fixture(scope="session")
def tcp_host(second_host: SecondHost) -> str:
    """The second host's dockerd as a tcp:// endpoint (plain TCP on the run's address)."""
    return second_host.tcp_url


@pytest.fixture(scope="session")
def tls_engine(docker_client: Any, sample_image: str) -> Iterator[TlsEngine]:
    """A dockerd answering tcp://<run address>:<port> only over TLS to a client certificate of its own CA
    (`--tlsverify`, testbed.tls_engine), holding the sample image; its slots go on the second address."""
    eng = start_tls_dockerd()
    try:
        client = eng.client()
        try:
            client.images.load(b"".join(docker_client.images.get(sample_image).save(named=sample_image)))
        finally:
            client.close()
        yield eng
    finally:
        eng.stop()


@pytest.fixture
def ssh_host(second_host: SecondHost) -> Iterator[SshServer]:
    """sshd on <run address>:<free port> whose sessions reach the second host's dockerd (an ssh:// host).

    Clients need `ssh_host.client_env` (a temp HOME with .ssh/config and known_hosts).
    """
    server = start_sshd(second_host.docker)
    yield server
    server.stop()


# ---------------------------------------------------------------- nginx in front of slots


TrafficBed = SiteBed  # host nginx in front of the slots (testbed.nginx.SiteBed)


@pytest.fixture
def traffic_bed(nginx_factory: Callable[..., Nginx], project: Callable[..., Path],
                workdir: Path) -> Callable[..., TrafficBed]:
    """`traffic_bed({"backend": "canary", "web": "blue-green"})`: nginx running with ps's first include."""

    def make(kinds: dict[str, str], *, app: str = "shop", hosts: list[dict[str, Any]] | None = None,
             extra_http: str = "", extra: dict[str, Any] | None = None) -> TrafficBed:
        # the hosts go in before the first include is rendered: it has a server line per host
        extra = {**(extra or {}), **({"hosts": hosts} if hosts else {})}
        raw, ports, upstreams = site_plan(kinds, app, workdir, extra)
        nginx = nginx_factory(extra_http + server_block(list(kinds), app), upstreams)
        raw["router"] = {"include": str(nginx.include), "url": nginx.url,
                         "nginx": {"prefix": str(nginx.prefix), "conf": str(nginx.conf),
                                   "error_log": str(nginx.error_log)}}
        path = project(raw)
        return TrafficBed(nginx=nginx, config_path=path, raw=raw, ports=ports)

    return make


@pytest.fixture
def app_name(docker_client: Any) -> Iterator[str]:
    """A unique app name; every image labelled with it is removed afterwards."""
    name = unique("pstapp")
    yield name
    images.remove_images(docker_client, label=f"pipeline-steps.app={name}")



# ---------------------------------------------------------------- routers reached only through an engine


@pytest.fixture
def volume_nginx(second_host: SecondHost) -> Iterator[Callable[..., VolumeNginx]]:
    """`volume_nginx(servers, upstreams)`: nginx in a container of the second host whose include
    directory is a named volume there (testbed.nginx_image.VolumeNginx); ps reaches it over tcp:// only.
    `engine=` (a testbed Engine) and `docker=` (its endpoint for ps) put it on another engine."""
    started: list[tuple[VolumeNginx, Any]] = []

    def start(servers: str, upstreams: str = "", *, engine: Engine | None = None, docker: str | None = None,
              **kw: Any) -> VolumeNginx:
        client = (engine or second_host.engine).client()
        bed = start_volume_nginx(client, docker or second_host.tcp_url, servers, upstreams, **kw)
        started.append((bed, client))
        return bed

    yield start
    for bed, client in started:
        bed.stop()
        client.close()


@pytest.fixture
def front_balancer() -> Iterator[Callable[..., Front]]:
    """`front_balancer([(address, port), ...])`: haproxy round-robin over the routers (testbed.front)."""
    started: list[Front] = []

    def start(backends: list[tuple[str, int]], **kw: Any) -> Front:
        front = start_front(backends, **kw)
        started.append(front)
        return front

    yield start
    for front in started:
        front.stop()


@pytest.fixture
def many_router_bed(engine: Engine, docker_client: Any, second_host: SecondHost, workdir: Path,
                    request: pytest.FixtureRequest) -> Iterator[Callable[..., ManyRouterBed]]:
    """`many_router_bed({"web": "canary"}, app=...)`: host1 (the bed's engine) and host2 (the second host
    over tcp://, or with `tls=True` the --tlsverify engine over tcp:// with client certificates), an nginx
    router container on each whose include is a named volume there, haproxy in front of both, and the
    ps.yaml with `routers:` and `routers_url:` (testbed.many_routers)."""
    beds: list[ManyRouterBed] = []
    clients: list[Any] = []

    def make(kinds: dict[str, str], *, app: str, tls: bool = False,
             extra: dict[str, Any] | None = None) -> ManyRouterBed:
        one = BedHost("host1", engine.base_url, address(), docker_client)
        if tls:
            eng: TlsEngine = request.getfixturevalue("tls_engine")
            client = eng.client()
            two = BedHost("host2", eng.tcp_url, second_address(), client,
                          tls={"ca": str(eng.pki.ca), "cert": str(eng.pki.cert), "key": str(eng.pki.key)})
        else:
            client = second_host.engine.client()
            two = BedHost("host2", second_host.tcp_url, second_host.address, client)
        clients.append(client)
        bed = start_many_router_bed([one, two], kinds, app, workdir, extra)
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        bed.close()
    for client in clients:
        client.close()
