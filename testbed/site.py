"""A site as a user writes it: one hand-written nginx.conf with locations `/`, `/api`, `/py` whose
upstreams come from the include file ps owns (not the test bed's server-block template)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from testbed.nginx import Nginx
from testbed.ports import address, free_port, wait_port

# service -> the location nginx serves it at
LOCATIONS = {"frontend": "/", "backend": "/api", "python": "/py"}

NGINX_CONF = """\
{user}worker_processes 1;
error_log {prefix}/logs/error.log notice;
pid {prefix}/logs/nginx.pid;

events {{
    worker_connections 1024;
}}

http {{
    log_format upstreams '$msec "$request" $status $upstream_addr $upstream_status $request_time';
    access_log {prefix}/logs/access.log upstreams;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;

    # the upstream blocks: written by ps (ps set-weights / ps switch / ps deploy)
    include {include};

    server {{
        listen {address}:{port};
{locations}    }}
}}
"""

LOCATION = """\
        location {path} {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            add_header X-Upstream $upstream_addr always;
        }}
"""


def site_conf(prefix: Path, include: Path, port: int, upstreams: dict[str, str]) -> str:
    """The hand-written nginx.conf; `upstreams` maps a location path to its upstream name."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    locations = "".join(LOCATION.format(path=path, upstream=name) for path, name in upstreams.items())
    return NGINX_CONF.format(user=user, address=address(), prefix=prefix, include=include, port=port,
                             locations=locations)


def start_site(upstreams: dict[str, str], first_include: str) -> Nginx:
    """nginx with the hand-written conf on a free loopback port; `first_include` is what ps's include
    file holds before ps has run (the upstream blocks nginx needs to start)."""
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    prefix = Path(tempfile.mkdtemp(prefix="ps-site-nginx-"))
    for d in ("logs", "tmp", "conf.d"):
        (prefix / d).mkdir()
    port = free_port()
    include = prefix / "conf.d" / "ps-upstreams.conf"
    include.write_text(first_include)
    conf = prefix / "nginx.conf"
    conf.write_text(site_conf(prefix, include, port, upstreams))
    nginx = Nginx(prefix=prefix, conf=conf, include=include, port=port)
    done = subprocess.run(nginx.command(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(prefix, ignore_errors=True)
        raise RuntimeError(f"nginx did not start: {done.stderr.strip()}")
    if not wait_port(port):
        nginx.stop()
        raise RuntimeError("nginx did not listen in time")
    return nginx
