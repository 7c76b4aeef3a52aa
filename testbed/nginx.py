"""Debian's nginx under a temporary prefix on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.ports import address, free_port, wait_port
from testbed.wait import until

PROXY_DEFAULTS = """\
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_connect_timeout 2s;
    proxy_next_upstream error timeout http_502 http_503 http_504;
    proxy_next_upstream_tries 3;
    add_header X-Upstream $upstream_addr always;
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def server_block(services: Iterable[str], app: str) -> str:
    """A server on the front port sending /<service>/ to upstream <app>_<service>, ps's default name."""
    def upstream(service: str) -> str:
        return f"{app}_{service}".replace("-", "_").replace(".", "_")

    locations = "".join(f"        location /{s}/ {{ proxy_pass http://{upstream(s)}; }}\n" for s in services)
    return ("    server {\n        listen " + address() + ":{port};\n{proxy_defaults}" + locations
            + "    }\n")


@dataclass
class Nginx:
    """A running nginx: prefix dir, main conf, the include file ps owns, and its front port."""

    prefix: Path
    conf: Path
    include: Path
    port: int
    extra_ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{address()}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.prefix / "logs" / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    def master_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def command(self, *args: str) -> list[str]:
        return ["nginx", "-p", str(self.prefix), "-c", str(self.conf), "-e", "stderr", *args]

    def reload(self) -> None:
        subprocess.run(self.command("-s", "reload"), check=True, capture_output=True)

    def stop(self) -> None:
        pid = self.master_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGQUIT)
            except ProcessLookupError:
                pass
            if not until(lambda: not _alive(pid), 10):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.prefix, ignore_errors=True)


def start_nginx(servers: str, upstreams: str = "", *, port: int | None = None,
                access_log: bool = False) -> Nginx:
    """Start nginx with one worker; `servers` is the server block text (use {port} for the front port),
    `upstreams` the initial content of the include file ps owns (`upstreams.conf`). `access_log`: leave
    nginx's http-level logging on, so the include's `access_log` (canary.analysis) applies; off by
    default to spare the disk under load."""
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    prefix = Path(tempfile.mkdtemp(prefix="ps-bed-nginx-"))
    for d in ("logs", "tmp", "conf.d"):
        (prefix / d).mkdir()
    port = port or free_port()
    include = prefix / "conf.d" / "ps-upstreams.conf"
    include.write_text(upstreams)
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {k}_temp_path {prefix / 'tmp' / k};"
                     for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\n"
        f"error_log {prefix / 'logs' / 'error.log'} notice;\n"
        f"pid {prefix / 'logs' / 'nginx.pid'};\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        + ("" if access_log else "    access_log off;\n")  # on: the include's ps_json log applies
        + f"{temp}\n"
        f"    include {include};\n"
        + servers.replace("{port}", str(port)).replace("{address}", address())
        .replace("{proxy_defaults}", PROXY_DEFAULTS)
        + "\n}\n"
    )
    nginx = Nginx(prefix=prefix, conf=conf, include=include, port=port)
    done = subprocess.run(nginx.command(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(prefix, ignore_errors=True)
        raise RuntimeError(f"nginx did not start: {done.stderr.strip()}")
    if not wait_port(port):
        nginx.stop()
        raise RuntimeError("nginx did not listen in time")
    return nginx


@dataclass
class SiteBed:
    """nginx (on the host, or in a container) with the include ps owns, a ps.yaml for it, and the slot
    ports of each service."""

    nginx: Any  # Nginx or testbed.nginx_image.NginxContainer: both have .url and .include
    config_path: Path
    raw: dict[str, Any]
    ports: dict[str, dict[str, int]] = field(default_factory=dict)

    def config(self) -> Any:
        from pipeline_steps.config import load_config

        return load_config(self.config_path)

    def url(self, service: str) -> str:
        return f"{self.nginx.url}/{service}/"

    def include_text(self) -> str:
        return str(self.nginx.include.read_text())

    def for_deploys(self, registry: str, service: str = "web") -> dict[str, Any]:
        """`raw` set up for real deploys of `service`: the registry, a 200 ms health check with 40 tries,
        and its URL through this nginx (the caller adds its policy and saves)."""
        self.raw["registry"] = registry
        self.raw["services"][service]["health"] = {"path": "/health", "interval": "200ms", "timeout": "2s",
                                                   "retries": 40}
        self.raw["services"][service]["url"] = self.url(service)
        return self.raw

    def save(self) -> None:
        """Write `raw` back to the ps.yaml."""
        import yaml

        self.config_path.write_text(yaml.safe_dump(self.raw, sort_keys=False))

    def start_slots(self, run_sample: Callable[..., Any], service: str) -> dict[str, Any]:
        """A sample-app container on each of the service's slot ports; the containers by slot."""
        return {slot: run_sample(port=port, PS_SLOT=slot)[0] for slot, port in self.ports[service].items()}

    def set_and_measure(self, ps: Callable[..., Any], pct: int, service: str = "backend",
                        probes: int = 1000) -> tuple[dict[str, Any], dict[str, Any]]:
        """`ps set-weights --canary pct`, then `ps verify-weights --probe` through nginx: the set-weights
        record and the measured split (both runs asserted to exit 0)."""
        done = ps("--json", "set-weights", "--canary", str(pct))
        assert done.returncode == 0, done.stderr
        probe = ps("--json", "verify-weights", "--expect-canary", str(pct), "--probe", str(probes),
                   "--url", self.url(service))
        assert probe.returncode == 0, probe.stderr
        return last_json(done.stdout), last_json(probe.stdout)["services"][0]["measured"]


def json_deploy(ps: Callable[..., Any], *args: str) -> Any:
    """`ps --json deploy ARGS --no-notify` through a test's `ps` runner (4 minutes at most)."""
    return ps("--json", "deploy", *args, "--no-notify", timeout=240)


def last_json(stdout: str) -> dict[str, Any]:
    """The last line of a `ps --json` run's stdout (the step's record)."""
    import json

    return dict(json.loads(stdout.strip().splitlines()[-1]))


def site_plan(kinds: dict[str, str], app: str, workdir: Path,
              extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, dict[str, int]], str]:
    """ps.yaml data (without `router`) for services of `kinds` ("canary" or "blue-green") on free slot
    ports, those ports, and the first include file ps would write for them."""
    from pipeline_steps.config import parse_config
    from pipeline_steps.upstreams import initial_file
    from testbed.ports import free_ports

    ports: dict[str, dict[str, int]] = {}
    services: dict[str, Any] = {}
    for name, kind in kinds.items():
        a, b = free_ports(2)
        slots = ("stable", "canary") if kind == "canary" else ("blue", "green")
        ports[name] = {slots[0]: a, slots[1]: b}
        services[name] = {"context": ".", "slots": ports[name]}
    raw: dict[str, Any] = {"app": app, "registry": "127.0.0.1:5999", "services": services,
                           "hosts": [{"name": "local", "address": address()}],
                           "state_dir": str(workdir / "state"), **(extra or {})}
    first = parse_config({**raw, "router": {"include": "ups.conf"}}, base_dir=workdir)
    return raw, ports, initial_file(first, workdir / "ups.conf").render()

