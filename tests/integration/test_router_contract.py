"""The Router contract: the same assertions against the in-memory FakeRouter, a real host nginx
(Debian's nginx under a temporary prefix, from testbed/nginx.py) and nginx in a container of the second
Docker host reached over tcp:// whose include is in a named volume there (testbed.nginx_image.VolumeNginx):
that router's include is read, written, backed up and restored through the engine alone."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline_steps.adapters.interfaces import Router
from pipeline_steps.adapters.nginx import NginxControl, NginxFailed
from pipeline_steps.adapters.nginx.fake import FakeRouter
from pipeline_steps.config import Host, NginxRouter
from pipeline_steps.errors import Unreachable
from pipeline_steps.waiting import poll_until
from testbed.nginx import Nginx

SERVERS = "    server {\n        listen {address}:{port};\n        location / { return 204; }\n    }\n"
FIRST = "upstream contract_u { server 127.0.0.1:1 max_fails=0; }\n"
SECOND = "upstream contract_u { server 127.0.0.1:2 max_fails=0; }\n"
BAD = "upstream contract_u { no_such_directive; }\n"


@dataclass
class Case:
    """A router under test and how to make its next change fail at `nginx -t`, at the reload, or stop it."""

    router: Router
    rejected: Callable[[], str]  # the text to apply so that the test step fails
    unbindable: Callable[[socket.socket], str]  # the text to apply so that the reload fails
    stop: Callable[[], None]


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@pytest.fixture(params=["fake", "host-nginx", "remote-container"])
def case(request: pytest.FixtureRequest, nginx_factory: Callable[..., Nginx],
         tmp_path: Path) -> Iterator[Case]:
    if request.param == "fake":
        fake = FakeRouter(text=FIRST)

        def rejected() -> str:
            fake.fail_test = "unknown directive"
            return BAD

        def unbindable(_sock: socket.socket) -> str:
            fake.fail_reload = "bind() failed (98: Address already in use)"
            return SECOND

        def stop() -> None:
            fake.is_running = False

        yield Case(fake, rejected, unbindable, stop)
        return
    if request.param == "remote-container":
        yield _remote_case(request.getfixturevalue("volume_nginx"), request.getfixturevalue("second_host"),
                           tmp_path)
        return
    bed = nginx_factory(SERVERS, FIRST)
    real = NginxControl(NginxRouter(include=str(bed.include), prefix=str(bed.prefix), conf=str(bed.conf)),
                        confirm_timeout=10.0)

    def unbind(sock: socket.socket) -> str:
        return SECOND + f"server {{ listen 127.0.0.1:{sock.getsockname()[1]}; return 204; }}\n"

    def stop_real() -> None:
        pid = bed.master_pid()
        assert pid is not None
        os.kill(pid, signal.SIGQUIT)
        poll_until(lambda: not real.running() or None, timeout=10, interval=0.02)  # the master exited

    yield Case(real, lambda: BAD, unbind, stop_real)


def _remote_case(volume_nginx: Callable[..., Any], second_host: Any, tmp_path: Path) -> Case:
    bed = volume_nginx(SERVERS, FIRST)
    router = NginxRouter(include=bed.include, container=bed.name, conf=bed.conf)
    host = Host(name="h2", docker=second_host.tcp_url)
    remote = NginxControl(router, confirm_timeout=10.0, docker_host=host, lock_dir=tmp_path / "locks")

    def unbind(sock: socket.socket) -> str:  # the container shares the host's network: the port is held
        return SECOND + f"server {{ listen 127.0.0.1:{sock.getsockname()[1]}; return 204; }}\n"

    def stop() -> None:
        bed.container.stop(timeout=5)

    return Case(remote, lambda: BAD, unbind, stop)


def test_read_apply_verify(case: Case) -> None:
    router = case.router
    assert router.read_text() == FIRST and router.running()
    done = router.apply(SECOND)
    assert done.changed and done.reloaded and done.backup
    assert done.workers_after and not set(done.workers_after) & set(done.workers_before)
    assert router.read_text() == SECOND and router.verify(SECOND) is None
    assert router.verify(FIRST) is not None
    again = router.apply(SECOND)
    assert not again.changed and not again.reloaded


def test_a_change_killed_before_its_reload_is_reloaded_by_the_same_change(case: Case) -> None:
    """A kill between the write (phase 1) and the reload leaves the right file and the old config
    running: verify says so, and applying the same text again reloads instead of "no change"."""
    router = case.router
    with router.locked():  # type: ignore[attr-defined]
        staged = router.stage(SECOND)  # type: ignore[attr-defined]
    assert staged.written and router.read_text() == SECOND  # ... and then the process died
    assert router.verify(SECOND) is not None
    done = router.apply(SECOND)
    assert done.reloaded, done
    assert router.verify(SECOND) is None
    assert not router.apply(SECOND).reloaded


def test_dry_run_writes_nothing(case: Case) -> None:
    done = case.router.apply(SECOND, dry_run=True)
    assert done.changed and not done.reloaded and case.router.read_text() == FIRST


def test_rejected_change_restores_the_previous_text(case: Case) -> None:
    with pytest.raises(NginxFailed, match="previous file restored"):
        case.router.apply(case.rejected())
    assert case.router.read_text() == FIRST and case.router.test() in (None, "unknown directive")


def test_failed_reload_restores_the_previous_text(case: Case) -> None:
    with _listening() as sock:
        with pytest.raises(NginxFailed, match="previous file restored"):
            case.router.apply(case.unbindable(sock))
    assert case.router.read_text() == FIRST and case.router.running()


def test_stopped_nginx_changes_nothing(case: Case) -> None:
    case.stop()
    assert not case.router.running()
    with pytest.raises(Unreachable, match="not running"):
        case.router.apply(SECOND)
    assert case.router.read_text() == FIRST


def test_the_include_path_is_the_configured_one(case: Case, tmp_path: Path) -> None:
    assert isinstance(case.router.path, Path) and case.router.path.name.endswith(".conf")
