"""SdkDockerHost's execs (exec, read_file) wait for the exit code the engine records a moment after the
command's output ends (inspect first says Running, ExitCode None) and never take a missing one for
success; read_file asks again for an output the engine lost."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pipeline_steps.adapters import docker_sdk
from pipeline_steps.adapters.docker_sdk import SdkDockerHost
from pipeline_steps.adapters.interfaces import EngineError
from pipeline_steps.config import Host


class FakeExecApi:
    """The low-level exec API of an engine that records each exit code `lag` inspects late and loses the
    output of the first `lose` execs of each command (no bytes), as an engine under load now and then
    does. A file read finds `content` (None: no such file); any other command prints `out` and exits
    `code`."""

    def __init__(self, content: bytes | None = b"", lose: int = 0, lag: int = 0, code: int = 0) -> None:
        self.content, self.lose, self.lag, self.code = content, lose, lag, code
        self.calls: dict[str, int] = {}
        self.execs: dict[str, tuple[list[str], int]] = {}
        self.inspects: dict[str, int] = {}

    def exec_create(self, container: str, cmd: list[str]) -> dict[str, str]:
        assert container == "c0ffee"
        exec_id = f"e{len(self.execs)}"
        self.execs[exec_id] = (cmd, 0 if cmd[0] in ("stat", "tail") else self.code)
        return {"Id": exec_id}

    def exec_start(self, exec_id: str, demux: bool) -> Any:
        argv = self.execs[exec_id][0]
        if argv[0] not in ("stat", "tail"):
            assert not demux
            return b"out\n"
        assert demux
        n = self.calls[argv[0]] = self.calls.get(argv[0], 0) + 1
        if self.content is None:
            self.execs[exec_id] = (argv, 1)
            return None, f"{argv[0]}: {argv[-1]}: No such file or directory\n".encode()
        if n <= self.lose:
            return None, None
        if argv[0] == "stat":
            return f"52:77 {len(self.content)}\n".encode(), None
        assert argv[:2] == ["tail", "-c"]
        return self.content[int(argv[2][1:]) - 1:], None

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        n = self.inspects[exec_id] = self.inspects.get(exec_id, 0) + 1
        if n <= self.lag:
            return {"Running": True, "ExitCode": None}
        return {"Running": False, "ExitCode": self.execs[exec_id][1]}


def _host(api: FakeExecApi) -> SdkDockerHost:
    containers = SimpleNamespace(get=lambda name: SimpleNamespace(id="c0ffee"))
    client = SimpleNamespace(api=api, containers=containers)
    return SdkDockerHost(Host(name="local"), client)  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [0, 1, 3])
def test_the_exit_code_is_waited_for_not_taken_as_zero(code: int) -> None:
    api = FakeExecApi(code=code, lag=3)
    assert _host(api).exec("web", ["test", "-f", "/x"]) == (code, "out\n")
    assert api.inspects == {"e0": 4}


def test_an_exit_code_that_never_comes_is_an_engine_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_sdk, "EXEC_EXIT_WAIT", 0.05)
    with pytest.raises(EngineError, match="test in container web: no exit code"):
        _host(FakeExecApi(lag=10**9)).exec("web", ["test", "-f", "/x"])


@pytest.mark.parametrize("offset", [0, 4])
def test_a_file_read_whose_output_the_engine_lost_is_asked_again(offset: int) -> None:
    api = FakeExecApi(b"one\ntwo\n", lose=2)
    found = _host(api).read_file("web", "/var/log/x.log", offset)
    assert found is not None and (found.ident, found.size) == ("52:77", 8)
    assert found.data == b"one\ntwo\n"[offset:]
    assert api.calls == {"stat": 3, "tail": 3}


def test_output_lost_three_times_gives_what_came_and_the_reader_reads_it_later() -> None:
    """After 3 tries the short read is returned as it is (a log reader goes on from offset + what it got);
    it is never an error."""
    lossy = FakeExecApi(b"one\ntwo\n", lose=3)
    lossy.calls["stat"] = 3  # stat answers; every tail comes back empty
    short = _host(lossy).read_file("web", "/var/log/x.log", 0)
    assert short is not None and (short.size, short.data) == (8, b"") and lossy.calls["tail"] == 3


def test_a_missing_file_whose_exit_code_comes_late_is_none_not_an_empty_success() -> None:
    """stat's exit code 1 is recorded a few inspects after its output: read as 0, the read would have
    been retried and then failed on stat's empty answer instead of saying "no such file"."""
    api = FakeExecApi(None, lose=0, lag=3)
    assert _host(api).read_file("web", "/var/log/gone.log", 0) is None
    assert api.calls == {"stat": 1}


def test_a_file_read_waits_for_each_exit_code() -> None:
    api = FakeExecApi(b"line\n", lose=0, lag=2)
    found = _host(api).read_file("web", "/var/log/x.log", 0)
    assert found is not None and found.data == b"line\n"
    assert api.calls == {"stat": 1, "tail": 1} and set(api.inspects.values()) == {3}
