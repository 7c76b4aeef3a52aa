"""The include of a router nginx on a remote engine, over FakeDockerHost: which routers go through the
engine, the atomic write (temp file + mv), backups in the container, nginx -t's restore, and the access
log read by offset (SourceLogTail)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline_steps.adapters import factory
from pipeline_steps.adapters.fakes import FakeAdapters, FakeDockerHost
from pipeline_steps.adapters.nginx import NginxControl, NginxFailed
from pipeline_steps.adapters.nginx.files import EngineFiles, LocalFiles, access_log_tail, engine_backed
from pipeline_steps.analysis.accesslog import AccessLogTail, SourceLogTail
from pipeline_steps.config import Host, NginxRouter
from pipeline_steps.errors import BadInput, Unreachable

INCLUDE = "/etc/nginx/ps/ps-upstreams.conf"
HOST = Host(name="h2", docker="tcp://127.0.0.2:2375")
FIRST = "upstream u { server 127.0.0.1:1; }\n"
SECOND = "upstream u { server 127.0.0.1:2; }\n"


@pytest.fixture
def fake() -> Iterator[FakeDockerHost]:
    engine = FakeDockerHost(HOST)
    engine.add_container("rnginx", "pipeline-steps/nginx:bed2")
    engine.add_file("rnginx", INCLUDE, FIRST)
    engine.processes["rnginx"] = [("root", "10", "0", "nginx: master process nginx -g daemon off;"),
                                  ("nobody", "11", "10", "nginx: worker process")]
    with factory.installed(FakeAdapters({"h2": engine})):
        yield engine


def _control(tmp_path: Path, **kw: object) -> NginxControl:
    router = NginxRouter(include=INCLUDE, container="rnginx", **kw)  # type: ignore[arg-type]
    return NginxControl(router, docker_host=HOST, lock_dir=tmp_path / "locks")


def test_which_routers_go_through_the_engine(tmp_path: Path) -> None:
    here = str(tmp_path / "ps-upstreams.conf")
    assert not engine_backed(NginxRouter(include=INCLUDE), HOST)  # host nginx: always local
    assert not engine_backed(NginxRouter(include=here, container="n"), Host("a", docker="unix:///x.sock"))
    assert engine_backed(NginxRouter(include=here, container="n"), HOST)  # a remote engine
    assert engine_backed(NginxRouter(include=INCLUDE, container="n"), Host("a", docker="unix:///x.sock"))
    assert isinstance(NginxControl(NginxRouter(include=here)).files, LocalFiles)


def test_the_include_is_written_atomically_and_backed_up_in_the_container(
        fake: FakeDockerHost, tmp_path: Path) -> None:
    control = _control(tmp_path, backups=2)
    files = control.files
    assert isinstance(files, EngineFiles)
    assert control.read_text() == FIRST and files.directory_exists()
    with control.locked():
        saved = [files.backup(t, 2) for t in ("a\n", "b\n", "c\n")]
        files.write(SECOND)
    c = fake.named("rnginx")
    assert c is not None and c.files[INCLUDE] == SECOND.encode()
    assert not [p for p in c.files if ".ps-tmp-" in p]  # the temp file was moved into place
    assert [str(p) for p in control.backups()] == [str(s) for s in saved[1:]]  # the oldest pruned
    assert all(str(s).startswith("/etc/nginx/ps/ps-backups/ps-upstreams.conf.") for s in saved)
    assert list((tmp_path / "locks").glob("rnginx-*.lock"))
    files.remove()
    assert control.read_text() is None


def test_nginx_t_refusing_restores_the_previous_text(fake: FakeDockerHost, tmp_path: Path) -> None:
    control = _control(tmp_path)
    fake.exec_results[tuple(control.command("-t", "-q"))] = (1, "nginx: [emerg] unknown directive \"x\"")
    with pytest.raises(NginxFailed, match="previous file restored: \\[emerg\\] unknown directive"):
        control.apply(SECOND)
    assert control.read_text() == FIRST
    assert len(control.backups()) == 1


def test_a_missing_directory_and_a_stopped_container(fake: FakeDockerHost, tmp_path: Path) -> None:
    router = NginxRouter(include="/nowhere/ps.conf", container="rnginx")
    control = NginxControl(router, docker_host=HOST, lock_dir=tmp_path)
    with pytest.raises(BadInput, match="directory of router.include does not exist: /nowhere in container "
                                       "rnginx"):
        control.apply(SECOND)
    fake.stop("rnginx")
    stopped = _control(tmp_path)
    assert stopped.read_text() == FIRST  # a stopped container's file still reads
    with pytest.raises(Unreachable, match="is not running"):
        stopped.apply(SECOND)
    assert stopped.read_text() == FIRST


class Source:
    """An in-memory log file: its identity, its bytes."""

    def __init__(self) -> None:
        self.ident, self.data, self.closed = "1", b"", False

    def read_from(self, offset: int) -> tuple[str, int, bytes] | None:
        return (self.ident, len(self.data), self.data[offset:]) if self.ident else None

    def close(self) -> None:
        self.closed = True


def _line(n: int) -> bytes:
    return (f'{{"time":"{n}.0","status":"200","upstream":"u","upstream_addr":"127.0.0.1:{n}",'
            '"request_time":"0.001"}\n').encode()


def test_source_tail_reads_new_lines_by_offset_through_rotation_and_truncation() -> None:
    src = Source()
    src.data = _line(1) + _line(2)[:10]  # opened inside a line: that line is not ours
    tail = SourceLogTail(src)
    src.data += _line(2)[10:] + _line(3)[:5]
    assert tail.read() == []
    src.data += _line(3)[5:]
    assert [r.address for r in tail.read()] == ["127.0.0.1:3"]
    src.ident, src.data = "2", _line(4)  # rotated: the new file from its start
    assert [r.address for r in tail.read()] == ["127.0.0.1:4"] and tail.rotations == 1
    src.data = _line(5)[:3]  # truncated (copytruncate), then written again
    assert tail.read() == [] and tail.truncations == 1
    src.data += _line(5)[3:]
    assert [r.address for r in tail.read()] == ["127.0.0.1:5"]
    tail.close()
    assert src.closed


def test_the_access_log_of_an_engine_router_is_read_through_the_engine(fake: FakeDockerHost,
                                                                       tmp_path: Path) -> None:
    router = NginxRouter(include=INCLUDE, container="rnginx")
    fake.add_file("rnginx", router.access_log_path(), _line(1))
    tail = access_log_tail(router, HOST)
    assert isinstance(tail, SourceLogTail)
    c = fake.named("rnginx")
    assert c is not None
    c.files[router.access_log_path()] += _line(2)  # nginx appends (the same file)
    assert [r.address for r in tail.read()] == ["127.0.0.1:2"]
    tail.close()
    local = access_log_tail(NginxRouter(include=str(tmp_path / "ps-upstreams.conf")))
    assert type(local) is AccessLogTail
    local.close()
