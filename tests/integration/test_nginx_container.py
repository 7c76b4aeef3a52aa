"""set-weights and switch through nginx running in a container (router.container), real slots behind it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline_steps.adapters.nginx import nginx_tree, parse_top
from testbed.load import slots_answering
from testbed.nginx import PROXY_DEFAULTS, SiteBed, last_json, server_block, site_plan
from testbed.nginx_image import NginxContainer, start_nginx_container
from testbed.ports import address, held_port, unique
from testbed.wait import until


class ContainerBed(SiteBed):
    """An nginx container with ps's include bind-mounted, a ps.yaml for it and each service's slot ports."""

    nginx: NginxContainer

    def backups(self) -> list[Path]:
        return sorted((self.nginx.include.parent / "ps-backups").glob("*.bak"))

    def workers(self) -> list[int]:
        """The container's nginx worker PIDs as `docker top` shows them (waits for a first worker)."""
        def first_worker() -> list[int] | None:
            master, workers = nginx_tree(parse_top(self.nginx.container.top()))
            return sorted(workers) if master and workers else None

        return until(first_worker, 4, 0.02) or []


@pytest.fixture
def container_bed(docker_client: Any, project: Callable[..., Path],
                  workdir: Path) -> Iterator[Callable[..., ContainerBed]]:
    """`container_bed({"backend": "canary"})`: nginx in a container running ps's first include."""
    started: list[NginxContainer] = []

    def make(kinds: dict[str, str], *, app: str = "shop", extra_http: str = "",
             log_on_host: bool = False) -> ContainerBed:
        raw, ports, upstreams = site_plan(kinds, app, workdir)
        nginx = start_nginx_container(docker_client, extra_http + server_block(list(kinds), app),
                                      upstreams, log_on_host=log_on_host)
        started.append(nginx)
        raw["router"] = nginx.router()
        return ContainerBed(nginx=nginx, config_path=project(raw), raw=raw, ports=ports)

    yield make
    for n in started:
        n.stop()


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith(("ps:", "Error:"))]
    assert len(errors) == 1, stderr
    return errors[0]


def test_weights_through_container_measured_exactly(container_bed: Callable[..., ContainerBed],
                                                     run_sample: Any, docker_ps: Any) -> None:
    bed = container_bed({"backend": "canary"})
    bed.start_slots(run_sample, "backend")
    for pct in (10, 40, 70):
        workers = bed.workers()
        result, measured = bed.set_and_measure(docker_ps, pct)
        assert result["changed"] and result["reloaded"]
        text = bed.include_text()
        assert f"weight={1000 - pct * 10};" in text and f"weight={pct * 10};" in text
        assert not set(bed.workers()) & set(workers)  # the container's nginx replaced its worker
        # one worker, smooth weighted round robin: 1000 requests split exactly by the weights
        assert measured["counts"] == {"stable": 1000 - pct * 10, "canary": pct * 10}
    assert len(bed.backups()) == 3
    again = docker_ps("set-weights", "--canary", "70")
    assert again.returncode == 0 and "no change" in again.stdout


def test_switch_through_container(container_bed: Callable[..., ContainerBed], run_sample: Any,
                                  docker_ps: Any) -> None:
    bed = container_bed({"web": "blue-green"})
    containers = bed.start_slots(run_sample, "web")
    url = bed.url("web")
    assert slots_answering(url, 20) == {"blue": 20}
    done = docker_ps("--json", "switch", "--to", "green")
    assert done.returncode == 0, done.stderr
    assert last_json(done.stdout)["services"][0]["after"] == "green active, blue backup"
    assert slots_answering(url, 20) == {"green": 20}
    probe = docker_ps("verify-weights", "--expect-active", "green", "--probe", "50", "--url", url)
    assert probe.returncode == 0, probe.stderr
    containers["green"].kill()  # the active slot dies: nginx's backup (blue) answers
    assert slots_answering(url, 20) == {"blue": 20}
    back = docker_ps("switch", "--to", "blue")
    assert back.returncode == 0, back.stderr
    assert slots_answering(url, 10) == {"blue": 10}


def test_change_failing_nginx_t_in_container_is_restored(container_bed: Callable[..., ContainerBed],
                                                        docker_ps: Any) -> None:
    # the service's upstream clashes with one the container's nginx.conf defines: nginx -t says duplicate
    bed = container_bed({"backend": "canary"}, extra_http="    upstream legacy { server 127.0.0.1:9; }\n")
    bed.raw["services"]["backend"]["upstream"] = "legacy"
    bed.save()
    before = bed.include_text()
    workers = bed.workers()
    done = docker_ps("set-weights", "--canary", "10")
    assert done.returncode == 1, done.stderr
    line = _one_error_line(done.stderr)
    assert 'duplicate upstream "legacy"' in line and "restored" in line
    assert "/etc/nginx/ps/" in line  # nginx's own words, with the path as the container sees it
    assert bed.include_text() == before
    assert bed.workers() == workers  # never reloaded


@pytest.mark.parametrize("log_on_host", [False, True], ids=["logs-stderr", "logs-bind-mounted"])
def test_reload_that_cannot_apply_in_container_is_detected(
        container_bed: Callable[..., ContainerBed], run_sample: Any, docker_ps: Any,
        log_on_host: bool) -> None:
    bed = container_bed({"backend": "canary"}, log_on_host=log_on_host)
    bed.start_slots(run_sample, "backend")
    assert docker_ps("set-weights", "--canary", "10").returncode == 0
    workers = bed.workers()
    with held_port() as port:
        # a server block on a port a host process holds: nginx -t passes, the reload cannot bind
        edited = bed.include_text() + f"server {{ listen {address()}:{port}; {PROXY_DEFAULTS} }}\n"
        bed.nginx.include.write_text(edited)
        started = time.monotonic()
        done = docker_ps("set-weights", "--canary", "40")
        assert done.returncode == 1, done.stderr
        line = _one_error_line(done.stderr)
        assert "Address already in use" in line and "restored" in line
        assert time.monotonic() - started < 30
        assert bed.include_text() == edited
        assert set(bed.workers()) <= set(workers)  # no new workers: the old one still serves
    if log_on_host:
        assert bed.nginx.error_log and "Address already in use" in bed.nginx.error_log.read_text()
    else:
        assert "Address already in use" in bed.nginx.log_text()
    bed.nginx.include.write_text(edited.split("server {")[0])
    probe = docker_ps("verify-weights", "--expect-canary", "10", "--probe", "200", "--url",
                      bed.url("backend"))
    assert probe.returncode == 0, probe.stderr
    # the next change reloads cleanly: the earlier [emerg] does not count against it
    again = docker_ps("set-weights", "--canary", "40")
    assert again.returncode == 0, again.stderr


def test_missing_container_exits_3_and_writes_nothing(container_bed: Callable[..., ContainerBed],
                                                       docker_ps: Any) -> None:
    bed = container_bed({"backend": "canary"})
    before = bed.include_text()
    missing = unique("pst-no-nginx-")
    bed.raw["router"]["container"] = missing
    bed.save()
    done = docker_ps("set-weights", "--canary", "10")
    assert done.returncode == 3, (done.stdout, done.stderr)
    line = _one_error_line(done.stderr)
    assert missing in line and "not found" in line
    assert bed.include_text() == before and not bed.backups()
    # a dry run needs no nginx at all
    assert docker_ps("--dry-run", "set-weights", "--canary", "10").returncode == 0


def test_stopped_container_and_unreachable_engine_exit_3(container_bed: Callable[..., ContainerBed],
                                                         docker_ps: Any, tmp_path: Path) -> None:
    bed = container_bed({"backend": "canary"})
    before = bed.include_text()
    dead = docker_ps("set-weights", "--canary", "10",
                     env={"DOCKER_HOST": f"unix://{tmp_path / 'no-docker.sock'}"})
    assert dead.returncode == 3, dead.stderr
    assert "unreachable" in _one_error_line(dead.stderr)
    bed.nginx.container.stop(timeout=2)
    done = docker_ps("set-weights", "--canary", "10")
    assert done.returncode == 3, done.stderr
    line = _one_error_line(done.stderr)
    assert bed.nginx.name in line and "not running" in line
    assert bed.include_text() == before and not bed.backups()


def test_container_bed_cleans_up(docker_client: Any) -> None:
    import docker.errors

    nginx = start_nginx_container(docker_client, "server { listen {address}:{port}; }\n",
                                  log_on_host=True)
    assert requests.get(nginx.url, timeout=5).status_code == 404
    nginx.stop()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(nginx.name)
    assert not nginx.dir.exists() and nginx.logs is not None and not nginx.logs.exists()


def test_router_init_with_the_container_stopped_then_nginx_starts(
        container_bed: Callable[..., ContainerBed], run_sample: Any, docker_ps: Any) -> None:
    bed = container_bed({"backend": "canary"})
    bed.start_slots(run_sample, "backend")
    bed.nginx.container.stop(timeout=2)
    bed.nginx.include.unlink()
    done = docker_ps("--json", "router", "init")
    assert done.returncode == 0, done.stderr
    record = last_json(done.stdout)
    assert record["written"] and not record["nginx_running"] and not record["tested"]
    assert bed.nginx.name in record["note"] and "not running" in record["note"]
    assert "weight=999;" in bed.include_text()
    bed.nginx.container.start()  # the container's nginx starts with the include router init wrote
    def answers() -> bool:
        try:
            return requests.get(bed.url("backend"), timeout=2).status_code == 200
        except requests.RequestException:
            return False

    until(answers, 30, 0.1)
    assert slots_answering(bed.url("backend"), 20) == {"stable": 20}
    assert "already there" in docker_ps("router", "init").stdout
    forced = docker_ps("--json", "router", "init", "--force")
    assert forced.returncode == 0, forced.stderr
    assert last_json(forced.stdout)["nginx_running"] is True
