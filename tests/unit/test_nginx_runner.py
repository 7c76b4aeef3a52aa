"""Pure parts of the nginx adapter: `docker top` rows, Docker log timestamps, nginx's messages, ldd."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_steps.adapters.nginx import (
    ContainerRunner,
    HostRunner,
    NginxControl,
    Proc,
    _nginx_message,
    log_lines_after,
    nginx_command,
    nginx_tree,
    parse_log_timestamp,
    parse_top,
    reload_failure,
)
from pipeline_steps.config import NginxRouter

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from testbed.nginx_image import parse_ldd  # noqa: E402

TITLES = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]


def _row(uid: str, pid: int, ppid: int, cmd: str) -> list[str]:
    return [uid, str(pid), str(ppid), "0", "01:26", "?", "00:00:00", cmd]


def test_parse_top_reads_the_columns_by_title() -> None:
    top = {"Titles": TITLES, "Processes": [
        _row("root", 20647, 20628, "nginx: master process nginx -c /etc/nginx/ps/nginx.conf -g daemon off;"),
        _row("nobody", 20661, 20647, "nginx: worker process"),
        ["garbage"],
        _row("nobody", -1, 1, "x")[:2] + ["notanumber"],
    ]}
    assert parse_top(top) == [
        Proc(20647, 20628, "nginx: master process nginx -c /etc/nginx/ps/nginx.conf -g daemon off;"),
        Proc(20661, 20647, "nginx: worker process"),
    ]


def test_parse_top_other_column_order_and_missing_titles() -> None:
    top = {"Titles": ["PID", "PPID", "COMMAND"], "Processes": [["7", "1", "nginx: worker process"]]}
    assert parse_top(top) == [Proc(7, 1, "nginx: worker process")]
    assert parse_top({"Titles": ["UID", "CMD"], "Processes": [["root", "sh"]]}) == []
    assert parse_top({}) == []


def test_nginx_tree_finds_master_and_shutting_down_workers() -> None:
    procs = [Proc(100, 90, "nginx: master process nginx -g daemon off;"),
             Proc(101, 100, "nginx: worker process is shutting down"),
             Proc(102, 100, "nginx: worker process"),
             Proc(103, 100, "nginx: cache manager process"),
             Proc(200, 102, "sh -c something")]
    assert nginx_tree(procs) == (100, {101: True, 102: False, 103: False})


def test_nginx_tree_without_titles_takes_the_first_process() -> None:
    # an nginx under another name (a wrapper as PID 1 of the container): its children are the workers
    procs = [Proc(5, 1, "/usr/local/bin/nginx-wrapper"), Proc(6, 5, "worker")]
    assert nginx_tree(procs) == (5, {6: False})
    assert nginx_tree([]) == (None, {})


def test_nginx_tree_prefers_the_master_at_the_root() -> None:
    # a wrapper shell runs nginx: the master is the titled process, not the wrapper
    procs = [Proc(5, 1, "sh /entrypoint.sh"), Proc(6, 5, "nginx: master process nginx"),
             Proc(7, 6, "nginx: worker process")]
    assert nginx_tree(procs) == (6, {7: False})


def test_parse_log_timestamp_examples() -> None:
    assert parse_log_timestamp("1970-01-01T00:00:01Z") == 1_000_000_000
    assert parse_log_timestamp("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert parse_log_timestamp("2024-05-01T10:00:00.123456789Z") == \
        int(datetime(2024, 5, 1, 10, tzinfo=UTC).timestamp()) * 10**9 + 123456789
    for bad in ("", "2024/05/01", "2024-05-01T10:00:00", "2024-05-01T10:00:00.12xZ", "nginx: [emerg]"):
        assert parse_log_timestamp(bad) is None


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
       st.integers(min_value=0, max_value=999_999_999))
def test_parse_log_timestamp_keeps_order_and_nanoseconds(when: datetime, nanos: int) -> None:
    whole = when.replace(microsecond=0)
    digits = f"{nanos:09d}".rstrip("0")  # Docker's RFC 3339 nano form drops trailing zeros
    stamp = whole.strftime("%Y-%m-%dT%H:%M:%S") + (f".{digits}" if digits else "") + "Z"
    expected = int(whole.replace(tzinfo=UTC).timestamp()) * 10**9 + nanos
    assert parse_log_timestamp(stamp) == expected
    later = (whole + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S") + "Z"
    assert (parse_log_timestamp(later) or 0) > expected


def test_log_lines_after_cuts_strictly_after_the_mark() -> None:
    lines = ["2024-05-01T10:00:00.1Z 2024/05/01 10:00:00 [emerg] 1#1: old failure",
             "2024-05-01T10:00:00.2Z 2024/05/01 10:00:00 [notice] 1#1: signal process started",
             "not a docker line",
             "2024-05-01T10:00:00.25Z 2024/05/01 10:00:00 [emerg] 1#1: bind() to 127.0.0.1:9 failed "
             "(98: Address already in use)"]
    mark = parse_log_timestamp("2024-05-01T10:00:00.2Z")
    after = log_lines_after(lines, mark)
    assert len(after) == 1
    assert reload_failure(log_lines_after(lines, None)) == "old failure"
    assert reload_failure(log_lines_after(lines[1:3], None)) is None
    assert reload_failure(after) is None  # nginx tries a busy port again: not over yet


BIND = "2024/05/01 10:00:00 [emerg] 1#1: bind() to 127.0.0.1:9 failed (98: Address already in use)"
RETRY = "2024/05/01 10:00:00 [notice] 1#1: try again to bind() after 500ms"


def test_reload_failure_waits_for_nginx_to_give_up_a_busy_port() -> None:
    assert reload_failure([BIND, RETRY, BIND, RETRY]) is None
    gave_up = [BIND, RETRY] * 5 + ["2024/05/01 10:00:02 [emerg] 1#1: still could not bind()"]
    assert reload_failure(gave_up) == "bind() to 127.0.0.1:9 failed (98: Address already in use)"
    # the port came free on a later try: workers start, no failure
    assert reload_failure([BIND, RETRY, "2024/05/01 10:00:01 [notice] 1#1: start worker processes"]) is None


def test_reload_failure_other_errors_are_final_at_once() -> None:
    assert reload_failure(['x [emerg] 1#1: unknown directive "bogus" in /etc/nginx/a.conf:3']) == \
        'unknown directive "bogus" in /etc/nginx/a.conf:3'
    denied = "x [emerg] 1#1: bind() to 0.0.0.0:80 failed (13: Permission denied)"
    assert reload_failure([denied]) == "bind() to 0.0.0.0:80 failed (13: Permission denied)"


def test_nginx_message_keeps_nginx_words() -> None:
    stderr = ('nginx: [emerg] duplicate upstream "legacy" in /etc/nginx/ps/ps-upstreams.conf:1\n'
              "nginx: configuration file /etc/nginx/ps/nginx.conf test failed\n")
    expected = '[emerg] duplicate upstream "legacy" in /etc/nginx/ps/ps-upstreams.conf:1'
    assert _nginx_message(stderr) == expected
    assert _nginx_message("plain failure\n") == "plain failure"


def test_command_and_runner_choice() -> None:
    host = NginxRouter(include="/x/ups.conf", prefix="/srv/nginx", conf="/srv/nginx/nginx.conf")
    assert nginx_command(host, "-t") == ["nginx", "-p", "/srv/nginx/", "-c", "/srv/nginx/nginx.conf",
                                         "-e", "stderr", "-t"]
    assert isinstance(NginxControl(host).runner, HostRunner)
    boxed = NginxRouter(include="/x/ups.conf", container="edge", binary="/usr/sbin/nginx",
                        conf="/etc/nginx/nginx.conf")
    control = NginxControl(boxed)
    assert isinstance(control.runner, ContainerRunner)
    assert control.command("-s", "reload") == ["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf", "-e",
                                               "stderr", "-s", "reload"]
    assert control.runner._client is None  # nothing connects before it is needed


@pytest.mark.parametrize(("listing", "paths"), [
    ("\tlinux-vdso.so.1 (0x00007f307dc43000)\n"
     "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f307d940000)\n"
     "\t/lib64/ld-linux-x86-64.so.2 (0x00007f307dc45000)\n",
     ["/lib/x86_64-linux-gnu/libz.so.1", "/lib64/ld-linux-x86-64.so.2"]),
    ("\tlibmissing.so => not found\n", []),
    ("\tstatically linked\n", []),
])
def test_parse_ldd(listing: str, paths: list[str]) -> None:
    assert parse_ldd(listing) == paths


def test_install_without_nginx_writes_0644_and_says_why_untested(tmp_path: Path) -> None:
    include = tmp_path / "ups.conf"
    router = NginxRouter(include=str(include), binary=str(tmp_path / "no-nginx"),
                         pid=str(tmp_path / "nginx.pid"))
    done = NginxControl(router).install("upstream a { server 127.0.0.1:1 max_fails=0; }\n")
    assert done.written and not done.running and not done.tested
    assert "nginx -t not run" in done.note and "router.nginx.binary" in done.note
    assert include.stat().st_mode & 0o777 == 0o644
    again = NginxControl(router).install("upstream b { server 127.0.0.1:2; }\n")
    assert not again.written and again.note == "already there"
    assert "upstream a" in include.read_text()
    forced = NginxControl(router).install("upstream b { server 127.0.0.1:2; }\n", force=True)
    assert forced.written and forced.backup and "upstream b" in include.read_text()
