"""One readiness rule for a container (health.container_readiness): the health gate's --container
targets, `requires` and the workers' replicas read Docker's State the same way."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline_steps.adapters.interfaces import ContainerInfo
from pipeline_steps.adapters.prober import LiveProber
from pipeline_steps.config import Host
from pipeline_steps.health import GatePolicy, HealthTarget, container_readiness
from pipeline_steps.operations.requires import _container_why

RUNNING = {"Status": "running", "Running": True}
CASES: list[tuple[dict[str, Any] | None, bool, bool]] = [  # state, ready, failed (no wait makes it ready)
    (None, False, True),
    (RUNNING, True, False),
    ({**RUNNING, "Health": {"Status": "healthy"}}, True, False),
    ({**RUNNING, "Health": {"Status": "starting"}}, False, False),
    ({**RUNNING, "Health": {"Status": "unhealthy"}}, False, True),
    ({"Status": "restarting", "Running": True, "Restarting": True}, False, True),
    ({"Status": "paused", "Running": True, "Paused": True}, False, True),  # Running, yet serves nothing
    ({"Status": "exited", "Running": False}, False, True),
    ({"Running": True}, True, False),  # an engine giving only the flags
    ({"Running": True, "Restarting": True}, False, True),
]


class OneContainer:
    """Just enough of a DockerHost: one container named `c` with the given State (None: no container)."""

    def __init__(self, state: dict[str, Any] | None) -> None:
        self.state = state
        self.host = Host("a")

    def container(self, name: str) -> ContainerInfo | None:
        if self.state is None:
            return None
        return ContainerInfo("id-c", name, str(self.state.get("Status", "")), {}, {"State": self.state})

    def close(self) -> None:
        """Nothing to release."""


@pytest.mark.parametrize(("state", "ready", "failed"), CASES)
def test_the_rule_and_every_reader_of_it_agree(state: dict[str, Any] | None, ready: bool,
                                               failed: bool) -> None:
    verdict = container_readiness(state)
    assert (verdict.ready, verdict.failed) == (ready, failed)
    engine = OneContainer(state)
    assert (_container_why(engine, "c") is None) == ready  # type: ignore[arg-type]
    prober = LiveProber()
    prober.docker = lambda host: engine  # type: ignore[method-assign,assignment,return-value]
    result = prober.probe(HealthTarget.container("c", docker=Host("a")), GatePolicy())
    assert result.ok == ready, result
