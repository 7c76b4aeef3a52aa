"""First set-up: `ps router init` writes the include nginx needs to start; a missing include is told."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.load import slots_answering
from testbed.nginx import PROXY_DEFAULTS, Nginx, last_json, server_block, site_plan
from testbed.ports import free_port, wait_port
from testbed.wait import until

TrafficBed = Any  # the traffic_bed fixture of tests/integration/conftest.py


@pytest.fixture
def fresh_nginx(project: Callable[..., Path], workdir: Path) -> Iterator[tuple[Nginx, dict[str, Any]]]:
    """An nginx.conf including ps's file, which does not exist yet; nginx is not running."""
    prefix = Path(tempfile.mkdtemp(prefix="ps-bed-nginx-"))
    for d in ("logs", "tmp", "conf.d"):
        (prefix / d).mkdir()
    port = free_port()
    include = prefix / "conf.d" / "ps-upstreams.conf"
    temp = "".join(f"    {k}_temp_path {prefix / 'tmp' / k};\n"
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = prefix / "nginx.conf"
    conf.write_text(("user root;\n" if os.geteuid() == 0 else "") +
                    f"worker_processes 1;\nerror_log {prefix / 'logs' / 'error.log'} notice;\n"
                    f"pid {prefix / 'logs' / 'nginx.pid'};\nevents {{ worker_connections 64; }}\n"
                    f"http {{\n    access_log off;\n{temp}    include {include};\n"
                    + server_block(["backend", "web"], "shop").replace("{port}", str(port))
                    .replace("{proxy_defaults}", PROXY_DEFAULTS) + "}\n")
    nginx = Nginx(prefix=prefix, conf=conf, include=include, port=port)
    raw, ports, _ = site_plan({"backend": "canary", "web": "blue-green"}, "shop", workdir)
    raw["router"] = {"include": str(include), "url": nginx.url,
                     "nginx": {"prefix": str(prefix), "conf": str(conf), "error_log": str(nginx.error_log)}}
    project(raw)
    yield nginx, {"raw": raw, "ports": ports}
    nginx.stop()


def test_router_init_on_a_fresh_machine_then_nginx_starts(fresh_nginx: tuple[Nginx, dict[str, Any]],
                                                          run_sample: Any, ps: Any) -> None:
    nginx, plan = fresh_nginx
    # without the include nginx cannot start: the first-time problem router init solves
    assert subprocess.run(nginx.command("-t"), capture_output=True).returncode != 0
    dry = ps("--dry-run", "router", "init")
    assert dry.returncode == 0 and f"would create {nginx.include}" in dry.stdout
    assert not nginx.include.exists()
    done = ps("--json", "router", "init")
    assert done.returncode == 0, done.stderr
    record = last_json(done.stdout)
    assert record["written"] and not record["nginx_running"] and record["tested"]
    assert "nginx -t passed" in done.stdout + done.stderr  # human lines go to stderr with --json
    assert stat.S_IMODE(nginx.include.stat().st_mode) == 0o644
    text = nginx.include.read_text()
    assert "weight=999;" in text and "weight=1;" in text and "max_fails=0 backup;" in text
    started = subprocess.run(nginx.command(), capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    assert wait_port(nginx.port)
    for slot in ("stable", "blue"):
        service = "backend" if slot == "stable" else "web"
        run_sample(port=plan["ports"][service][slot], PS_SLOT=slot)
    assert slots_answering(f"{nginx.url}/backend/", 20) == {"stable": 20}  # stable 100 %
    assert slots_answering(f"{nginx.url}/web/", 20) == {"blue": 20}  # blue active
    # idempotent: an existing include is left alone
    again = ps("router", "init")
    assert again.returncode == 0 and "already there" in again.stdout
    assert nginx.include.read_text() == text
    # --force with nginx running: the usual safe apply and reload
    assert ps("set-weights", "--canary", "40").returncode == 0
    forced = ps("--json", "router", "init", "--force", "--service", "backend")
    assert forced.returncode == 0, forced.stderr
    assert last_json(forced.stdout)["reloaded"] is True
    assert "weight=999;" in nginx.include.read_text()


def test_router_init_that_nginx_t_rejects_is_removed_again(fresh_nginx: tuple[Nginx, dict[str, Any]],
                                                           ps: Any) -> None:
    nginx, plan = fresh_nginx
    nginx.conf.write_text(nginx.conf.read_text().replace("http {", "http {\n    upstream shop_web { server "
                                                         "127.0.0.1:9; }", 1))
    done = ps("router", "init")
    assert done.returncode == 1, done.stdout
    assert 'duplicate upstream "shop_web"' in done.stderr and "removed again" in done.stderr
    assert not nginx.include.exists()


def test_traffic_status_and_dry_runs_on_a_missing_include(traffic_bed: Callable[..., TrafficBed],
                                                          ps: Any) -> None:
    bed = traffic_bed({"backend": "canary", "web": "blue-green"})
    bed.nginx.include.unlink()
    status = ps("traffic", "status")
    assert status.returncode == 1
    assert str(bed.nginx.include) in status.stderr and "ps router init" in status.stderr
    for args in (("set-weights", "--canary", "10"), ("switch", "--to", "green")):
        dry = ps("--dry-run", *args)
        assert dry.returncode == 0, dry.stderr
        assert f"would create {bed.nginx.include}" in dry.stdout and "not changed" not in dry.stdout
        assert not bed.nginx.include.exists()
    assert ps("router", "init").returncode == 0
    dry = ps("--dry-run", "set-weights", "--canary", "10")
    assert f"would change {bed.nginx.include}" in dry.stdout
    same = ps("--dry-run", "set-weights", "--canary", "0")
    assert "already says so" in same.stdout
    assert ps("traffic", "status").returncode == 0


def test_set_weights_while_nginx_is_down_says_how_to_start(traffic_bed: Callable[..., TrafficBed],
                                                           ps: Any) -> None:
    bed = traffic_bed({"backend": "canary"})
    before = bed.include_text()
    pid = bed.nginx.master_pid()
    assert pid
    os.kill(pid, signal.SIGQUIT)
    until(lambda: not Path(f"/proc/{pid}").exists(), 20)
    assert not Path(f"/proc/{pid}").exists()
    done = ps("set-weights", "--canary", "10")
    assert done.returncode == 3, done.stderr
    assert "is not running" in done.stderr and "ps router init" in done.stderr
    assert len([ln for ln in done.stderr.splitlines() if ln.startswith("ps:")]) == 1
    assert bed.include_text() == before
    assert not list((bed.nginx.include.parent / "ps-backups").glob("*.bak"))
