"""Debian's nginx under a temporary prefix on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed.ports import free_port, wait_port

PROXY_DEFAULTS = """\
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_connect_timeout 2s;
    proxy_next_upstream error timeout http_502 http_503 http_504;
    proxy_next_upstream_tries 3;
    add_header X-Upstream $upstream_addr always;
"""


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
        return f"http://127.0.0.1:{self.port}"

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
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.prefix, ignore_errors=True)


def start_nginx(servers: str, upstreams: str = "", *, port: int | None = None) -> Nginx:
    """Start nginx with one worker; `servers` is the server block text (use {port} for the front port),
    `upstreams` the initial content of the include file ps owns (`upstreams.conf`)."""
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
        "    access_log off;\n"
        f"{temp}\n"
        f"    include {include};\n"
        + servers.replace("{port}", str(port)).replace("{proxy_defaults}", PROXY_DEFAULTS)
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
