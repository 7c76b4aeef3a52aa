"""The bed of issue 12: Docker hosts with an nginx router container each, behind a front balancer.

`start_many_router_bed(hosts, kinds, ...)`: on every BedHost an nginx container (built from Debian's
nginx, testbed.nginx_image) whose include directory is a NAMED VOLUME of that host (only the engine
reaches it), its first include listing that host's slots; haproxy (testbed.front) round-robin in front
of all routers; and a ps.yaml with `hosts:`, `routers:` (router<i> on host<i>, its url the first
service's path on that router) and `routers_url:` (the front, with that path). The slots are ps's to
deploy (images tagged on every host with `tag_everywhere`), or a test starts them by hand (`run_slot`).
`close()` removes every container, tag, volume and process it made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.front import Front, start_front
from testbed.nginx import server_block, site_plan
from testbed.nginx_image import CONTAINER_DIR, VolumeNginx, start_volume_nginx
from testbed.ports import address


@dataclass
class BedHost:
    """One Docker host of the bed: its ps.yaml name, endpoint (and TLS files), slot address, a client."""

    name: str
    docker: str  # what ps uses: unix:// of the bed engine, tcp:// of the second host or the TLS engine
    address: str  # where its slots publish (and the routers reach them)
    client: Any  # an SDK client for setting up and inspecting (the unix socket)
    tls: dict[str, str] | None = None  # hosts[].tls for a --tlsverify engine

    def entry(self) -> dict[str, Any]:
        """The `hosts:` entry."""
        return {"name": self.name, "docker": self.docker, "address": self.address,
                **({"tls": self.tls} if self.tls else {})}


@dataclass
class ManyRouterBed:
    """Hosts, a router per host, the front, and the ps.yaml that drives them all."""

    hosts: list[BedHost]
    routers: list[VolumeNginx]
    front: Front
    app: str
    raw: dict[str, Any]
    config_path: Path
    ports: dict[str, dict[str, int]] = field(default_factory=dict)
    tags: list[tuple[BedHost, str]] = field(default_factory=list)

    def url(self, service: str) -> str:
        """The service through the front balancer (what the ALB's clients see)."""
        return f"{self.front.url}/{service}/"

    def save(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.raw, sort_keys=False))

    def includes(self) -> list[str | None]:
        """Every router's live include, read through its engine."""
        return [r.read() for r in self.routers]

    def nginx_t(self) -> list[tuple[int, str]]:
        """`nginx -t` in every router container."""
        return [r.nginx_t() for r in self.routers]

    def tag_everywhere(self, image_id: str, repo: str, tag: str, source: Any) -> None:
        """Tag the image `image_id` of the `source` client as repo:tag on every host (loaded if missing)."""
        import docker.errors

        for host in self.hosts:
            try:
                image = host.client.images.get(image_id)
            except docker.errors.ImageNotFound:
                host.client.images.load(b"".join(source.images.get(image_id).save(named=f"{repo}:{tag}")))
                image = host.client.images.get(image_id)
            image.tag(repo, tag)
            self.tags.append((host, f"{repo}:{tag}"))

    def run_slot(self, host: BedHost, image: str, service: str, slot: str, **env: str) -> Any:
        """A slot container started by hand (not by ps) on `host`, labelled as this bed's."""
        port = self.ports[service][slot]
        return host.client.containers.run(
            image, detach=True, name=f"{self.app}-{host.name}-{service}-{slot}-manual",
            environment={"PS_SLOT": slot, **env}, ports={"80/tcp": (host.address, port)},
            labels={"pipeline-steps.test": "1", "pipeline-steps.app": self.app})

    def close(self) -> None:
        """Remove the slots (ps's and manual ones), the tags, the routers and the front."""
        self.front.stop()
        for host in self.hosts:
            try:
                for c in host.client.containers.list(all=True,
                                                     filters={"label": f"pipeline-steps.app={self.app}"}):
                    c.remove(force=True)
            except Exception:
                pass
        for host, ref in self.tags:
            try:
                host.client.images.remove(ref)
            except Exception:
                pass
        for router in self.routers:
            router.stop()


def first_include(raw: dict[str, Any], host: BedHost, workdir: Path) -> str:
    """The include ps would write first for a router listing `host`'s slots only (stable / blue)."""
    from pipeline_steps.config import parse_config
    from pipeline_steps.upstreams import initial_file

    one = {k: v for k, v in raw.items() if k not in ("routers", "routers_url")}
    config = parse_config({**one, "hosts": [host.entry()], "router": {"include": "ups.conf"}},
                          base_dir=workdir)
    return initial_file(config, workdir / "ups.conf").render()


def start_many_router_bed(hosts: list[BedHost], kinds: dict[str, str], app: str, workdir: Path,
                          extra: dict[str, Any] | None = None) -> ManyRouterBed:
    """The bed described in the module doc; `kinds`: service -> "canary" | "blue-green"."""
    raw, ports, _ = site_plan(kinds, app, workdir, {"hosts": [h.entry() for h in hosts], **(extra or {})})
    routers: list[VolumeNginx] = []
    # the server, and the host's own extra config beside ps's include (none yet: a glob matching nothing)
    servers = server_block(list(kinds), app) + f"    include {CONTAINER_DIR}/extra*.conf;\n"
    try:
        for i, host in enumerate(hosts, 1):
            routers.append(start_volume_nginx(host.client, host.docker, servers,
                                              first_include(raw, host, workdir), name=f"{app}-router{i}"))
        front = start_front([(address(), r.port) for r in routers])
    except BaseException:
        for r in routers:
            r.stop()
        raise
    # the probes go to each router's url and to routers_url as they are: the first service's path
    path = f"/{next(iter(kinds))}/"
    raw["routers"] = [{**r.router(f"router{i}", h.name), "url": r.url + path}
                      for i, (r, h) in enumerate(zip(routers, hosts, strict=True), 1)]
    raw["routers_url"] = front.url + path
    for name in raw["services"]:
        raw["services"][name]["url"] = f"{front.url}/{name}/"
    bed = ManyRouterBed(hosts=hosts, routers=routers, front=front, app=app, raw=raw,
                        config_path=workdir / "ps.yaml", ports=ports)
    bed.save()
    return bed
