"""SdkDockerHost.exec waits for the exit code the engine records a moment after the command's output
ends (inspect first says Running, ExitCode None), and never takes a missing one for success."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pipeline_steps.adapters import docker_sdk
from pipeline_steps.adapters.docker_sdk import SdkDockerHost
from pipeline_steps.adapters.interfaces import EngineError
from pipeline_steps.config import Host


class SlowExitApi:
    """The low-level API of an engine whose exec inspect lags: `lag` inspects without an exit code."""

    def __init__(self, code: int, lag: int) -> None:
        self.code, self.lag, self.inspects = code, lag, 0

    def exec_create(self, container: str, cmd: list[str]) -> dict[str, str]:
        assert container == "c0ffee"
        return {"Id": "e1"}

    def exec_start(self, exec_id: str) -> bytes:
        return b"out\n"

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        self.inspects += 1
        if self.inspects <= self.lag:
            return {"Running": True, "ExitCode": None}
        return {"Running": False, "ExitCode": self.code}


def _host(api: SlowExitApi) -> SdkDockerHost:
    containers = SimpleNamespace(get=lambda name: SimpleNamespace(id="c0ffee"))
    client = SimpleNamespace(api=api, containers=containers)
    return SdkDockerHost(Host(name="local"), client)  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [0, 1, 3])
def test_the_exit_code_is_waited_for_not_taken_as_zero(code: int) -> None:
    api = SlowExitApi(code, lag=3)
    assert _host(api).exec("web", ["test", "-f", "/x"]) == (code, "out\n")
    assert api.inspects == 4


def test_an_exit_code_that_never_comes_is_an_engine_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_sdk, "EXEC_EXIT_WAIT", 0.05)
    with pytest.raises(EngineError, match="test in container web: no exit code"):
        _host(SlowExitApi(0, lag=10**9)).exec("web", ["test", "-f", "/x"])
