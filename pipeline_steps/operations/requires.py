"""Start-up order: what a service `requires` is ready on every host before the service deploys.

A required service of ps.yaml is ready when its containers run (an HTTP service: one of its slots; a
worker: every replica), each healthy when it has a Docker HEALTHCHECK; a required container likewise.
`tcp:` adds a TCP connect to the host's address, `url:` an HTTP answer 2xx. Unlike compose's
`depends_on`, started is not ready: a container whose HEALTHCHECK still says `starting` is waited for,
up to the requiring service's health budget (start_period + retries x interval).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from pipeline_steps.adapters import slots as slot_names
from pipeline_steps.adapters.docker_host import open_host
from pipeline_steps.adapters.interfaces import DockerHost
from pipeline_steps.config import Config, Host, Service
from pipeline_steps.config.run_spec import Require
from pipeline_steps.errors import CheckFailed
from pipeline_steps.health import container_readiness
from pipeline_steps.parallel import each_host
from pipeline_steps.waiting import poll_until


def _containers(config: Config, r: Require) -> tuple[list[str], bool]:
    """The containers of a requirement, and whether all of them must be ready (else one is enough)."""
    if not r.service:
        return [r.name], True
    req = config.services[r.name]
    names = [slot_names.container_name(config.app, req.name, slot) for slot in req.members()]
    return names, req.is_worker


def _container_why(engine: DockerHost, name: str) -> str | None:
    """None when container `name` is ready by the health gate's rule (health.container_readiness)."""
    info = engine.container(name)
    if info is None:
        return f"no container {name}"
    verdict = container_readiness(info.attrs.get("State") or {})
    if not verdict.running:
        return f"{name} is {verdict.status}"
    if not verdict.ready:
        return f"{name}: Docker health {verdict.health}"
    return None


def _why(config: Config, engine: DockerHost, host: Host, r: Require) -> str | None:
    """None when `r` is ready on `host`, else why not."""
    names, every = _containers(config, r)
    if names:
        reasons = [_container_why(engine, n) for n in names]
        failing = [w for w in reasons if w]
        if (every and failing) or (not every and len(failing) == len(names)):
            return failing[0]
    if r.tcp is not None:
        try:
            socket.create_connection((host.address, r.tcp), timeout=2).close()
        except OSError as exc:
            return f"{host.address}:{r.tcp} refuses TCP ({exc.strerror or exc})"
    if r.url is not None:
        import requests

        try:
            status = requests.get(r.url, timeout=2, allow_redirects=False).status_code
        except requests.RequestException as exc:
            return f"{r.url}: {type(exc).__name__}"
        if not 200 <= status < 300:
            return f"{r.url} answers {status}"
    return None


def _wait_one(config: Config, engine: DockerHost, host: Host, service: Service, r: Require,
              said: Callable[[str], None], poll: float) -> None:
    spec = service.health
    budget = spec.start_period + spec.retries * spec.interval
    last = [_why(config, engine, host, r)]
    if last[0] is None:
        return
    said(f"{service.name} waits for {r.name} on host {host.name} ({last[0]})")

    def check() -> bool | None:
        last[0] = _why(config, engine, host, r)
        return True if last[0] is None else None

    if poll_until(check, timeout=budget, interval=poll) is None:
        raise CheckFailed(f"{service.name} requires {r.name}, not ready on host {host.name} after "
                          f"{budget:g}s: {last[0]}")


def wait_required(config: Config, services: Sequence[Service], *,
                  on_wait: Callable[[str], None] | None = None, poll: float = 0.5) -> list[str]:
    """Wait until every requirement of `services` is ready on every host (the hosts at once,
    config.parallel_hosts); a line per requirement, in host order.

    CheckFailed names the service, the requirement, the host and the last reason.
    """
    said = on_wait or (lambda line: None)

    def on_host(host: Host) -> list[str]:
        done: list[str] = []
        engine = open_host(host)
        try:
            for service in (s for s in services if host in config.hosts_of(s)):
                for r in service.requires:
                    _wait_one(config, engine, host, service, r, said, poll)
                    done.append(f"{service.name}: {r.name} ready on host {host.name}")
        finally:
            engine.close()
        return done

    return [line for lines in each_host(config.hosts, on_host, config.parallel_hosts) for line in lines]
