"""A router nginx in a container of a REMOTE Docker host (the second host over tcp://) whose include
directory is a named volume there: ps reads, writes, backs up and restores the include, and reads the
access log, through that host's engine alone (adapters/nginx/files.py). The contract's own assertions
run against it too (test_router_contract.py, case "remote-container")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.adapters.nginx import NginxControl, NginxFailed, nginx_tree, parse_top
from pipeline_steps.adapters.nginx.files import EngineFiles, access_log_tail
from pipeline_steps.analysis.accesslog import SourceLogTail, log_format_directive
from pipeline_steps.config import Host, NginxRouter
from testbed.nginx import last_json, server_block, site_plan
from testbed.nginx_image import CONTAINER_DIR, VolumeNginx
from testbed.ports import second_address
from testbed.wait import until

SERVERS = "    server {\n        listen {address}:{port};\n        location / { return 204; }\n    }\n"
FIRST = "upstream remote_u { server 127.0.0.1:1 max_fails=0; }\n"
SECOND = "upstream remote_u { server 127.0.0.1:2 max_fails=0; }\n"
BAD = "upstream remote_u { no_such_directive; }\n"


def _control(bed: VolumeNginx, tcp_url: str, tmp_path: Path, **kw: Any) -> NginxControl:
    router = NginxRouter(include=bed.include, container=bed.name, conf=bed.conf, **kw)
    return NginxControl(router, confirm_timeout=10.0, docker_host=Host(name="h2", docker=tcp_url),
                        lock_dir=tmp_path / "locks")


def _workers(bed: VolumeNginx) -> list[int]:
    def first() -> list[int] | None:
        master, workers = nginx_tree(parse_top(bed.container.top()))
        return sorted(workers) if master and workers else None

    return until(first, 5, 0.02) or []


def _listing(bed: VolumeNginx, directory: str = CONTAINER_DIR) -> list[str]:
    code, out = bed.container.exec_run(["ls", "-1a", directory])
    assert code == 0, out
    return bytes(out).decode().split()


def test_the_include_is_only_in_the_volume_and_changes_through_the_engine(
        volume_nginx: Callable[..., VolumeNginx], second_host: Any, tmp_path: Path) -> None:
    bed = volume_nginx(SERVERS, FIRST)
    mounts = bed.container.attrs["Mounts"]
    assert [(m["Type"], m["Name"], m["Destination"]) for m in mounts] == [
        ("volume", bed.volume, CONTAINER_DIR)]
    assert not Path(bed.include).exists()  # nothing of it on this machine: only the engine reaches it
    control = _control(bed, second_host.tcp_url, tmp_path, backups=2)
    assert isinstance(control.files, EngineFiles)
    assert control.read_text() == FIRST
    before = _workers(bed)
    done = control.apply(SECOND)
    assert done.changed and done.reloaded and done.backup
    assert not set(_workers(bed)) & set(before)  # nginx in the remote container took the new file
    assert bed.read() == SECOND and bed.read(done.backup) == FIRST
    assert done.backup.startswith(f"{CONTAINER_DIR}/ps-backups/ps-upstreams.conf.")
    assert not [n for n in _listing(bed) if ".ps-tmp-" in n]  # the temp file was renamed into place
    assert not Path(bed.include).exists()
    assert control.verify(SECOND) is None and bed.nginx_t()[0] == 0
    assert list((tmp_path / "locks").glob(f"{bed.name}-*.lock"))  # the per-router lock is on this agent
    made = [done.backup]
    for text in (FIRST, SECOND, FIRST):
        again = control.apply(text)
        assert again.reloaded and again.backup
        made.append(again.backup)
    kept = control.backups()
    listed = _listing(bed, f"{CONTAINER_DIR}/ps-backups")
    assert [str(k) for k in kept] == made[-2:] and len([n for n in listed if n.endswith(".bak")]) == 2, \
        (made, listed)
    assert bed.read(str(kept[-1])) == SECOND  # the newest backup: the text before the last change


def test_a_change_nginx_t_rejects_leaves_the_old_file_in_the_volume(
        volume_nginx: Callable[..., VolumeNginx], second_host: Any, tmp_path: Path) -> None:
    bed = volume_nginx(SERVERS, FIRST)
    control = _control(bed, second_host.tcp_url, tmp_path)
    workers = _workers(bed)
    with pytest.raises(NginxFailed, match="nginx -t rejected the change, previous file restored") as failed:
        control.apply(BAD)
    assert "no_such_directive" in failed.value.message and f"{CONTAINER_DIR}/" in failed.value.message
    assert bed.read() == FIRST and bed.nginx_t()[0] == 0
    assert _workers(bed) == workers  # never reloaded
    assert not [n for n in _listing(bed) if ".ps-tmp-" in n]


def test_set_weights_and_verify_through_a_remote_container_router(
        volume_nginx: Callable[..., VolumeNginx], second_host: Any, sample_image: str, project: Any,
        workdir: Path, ps: Any) -> None:
    hosts = [{"name": "h2", "docker": second_host.tcp_url, "address": second_address()}]
    raw, ports, upstreams = site_plan({"backend": "canary"}, "shop", workdir, {"hosts": hosts})
    bed = volume_nginx(server_block(["backend"], "shop"), upstreams)
    raw["router"] = {"include": bed.include, "container": bed.name, "url": bed.url,
                     "nginx": {"conf": bed.conf}}
    project(raw)
    client = second_host.engine.client()
    try:
        for slot, port in ports["backend"].items():
            client.containers.run(sample_image, detach=True, name=f"{bed.name}-{slot}",
                                  environment={"PS_SLOT": slot}, ports={"80/tcp": (second_address(), port)},
                                  labels={"pipeline-steps.test": "1"})
        # ps reaches that engine over tcp:// only (DOCKER_HOST too: the one-router form's engine)
        env = {"DOCKER_HOST": second_host.tcp_url}
        done = ps("--json", "set-weights", "--canary", "30", env=env)
        assert done.returncode == 0, done.stderr
        assert last_json(done.stdout)["reloaded"]
        text = bed.read() or ""
        assert "weight=700;" in text and "weight=300;" in text
        probe = ps("--json", "verify-weights", "--expect-canary", "30", "--probe", "1000", "--url",
                   f"{bed.url}/backend/", env=env)
        assert probe.returncode == 0, probe.stderr
        measured = last_json(probe.stdout)["services"][0]["measured"]
        assert measured["counts"] == {"stable": 700, "canary": 300}  # one worker: smooth WRR, exact
        status = ps("traffic", "status", env=env)
        assert status.returncode == 0 and "canary 30 %, stable 70 %" in status.stdout, status.stdout
    finally:
        for slot in ports["backend"]:
            try:
                client.containers.get(f"{bed.name}-{slot}").remove(force=True)
            except Exception:
                pass
        client.close()


def test_the_access_log_is_read_through_the_engine_by_offset(
        volume_nginx: Callable[..., VolumeNginx], second_host: Any) -> None:
    import crossplane
    import requests

    log = f"{CONTAINER_DIR}/ps-access.json"
    servers = ("    server {\n        listen {address}:{port};\n"
               f"        access_log {log} ps_json;\n        location / {{ return 204; }}\n    }}\n")
    bed = volume_nginx(servers, crossplane.build([log_format_directive()]) + "\n" + FIRST)
    for _ in range(3):  # before the tail opens: not counted
        assert requests.get(f"{bed.url}/old", timeout=5).status_code == 204
    router = NginxRouter(include=bed.include, container=bed.name, conf=bed.conf)
    tail = access_log_tail(router, Host(name="h2", docker=second_host.tcp_url))
    assert isinstance(tail, SourceLogTail)
    try:
        for i in range(5):
            requests.get(f"{bed.url}/new{i}", timeout=5)
        got: list[Any] = []
        assert until(lambda: (got.extend(tail.read()) or len(got) >= 5), 10, 0.1)
        assert len(got) == 5 and {r.status for r in got} == {204} and tail.malformed == 0
        # logrotate's way: rename, then nginx reopens (USR1) and writes a new file
        assert bed.container.exec_run(["mv", log, log + ".1"]).exit_code == 0
        assert bed.container.exec_run(["nginx", "-c", bed.conf, "-s", "reopen"]).exit_code == 0
        assert until(lambda: bed.read(log) is not None, 10, 0.05)
        for i in range(3):
            requests.get(f"{bed.url}/after{i}", timeout=5)
        more: list[Any] = []
        assert until(lambda: (more.extend(tail.read()) or len(more) >= 3), 10, 0.1)
        assert len(more) == 3 and tail.rotations == 1
    finally:
        tail.close()
