"""The adapters' interfaces: what the steps need from systems outside ps, each a typing.Protocol with a
real implementation and an in-memory fake. A flat list of Protocols, one per adapter.

- Router: the ps-owned nginx include (adapters/nginx: NginxControl; adapters/nginx/fake.py: FakeRouter)
- Prober: health probes of HTTP, TCP and containers (adapters/prober.py: LiveProber;
  adapters/fake_prober.py: FakeProber)
- TrafficSender: the requests verify-weights sends through nginx (adapters/traffic_probe.py: send_probe)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pipeline_steps.adapters.nginx.control import ApplyResult, InstallResult
    from pipeline_steps.adapters.traffic_probe import ProbeRun
    from pipeline_steps.health import GatePolicy, HealthTarget, ProbeResult


@runtime_checkable
class Router(Protocol):
    """The nginx include ps owns, and the nginx that reads it.

    apply(): put a new include in place safely: back up the old one, write atomically, `nginx -t`,
    reload, confirm the reload took (new workers, no [emerg]); any failure puts the previous text back
    (and reloads back). NginxFailed (exit 1) when nginx refused, Unreachable (exit 3) when it cannot be
    driven, BadInput (exit 2) when the include's directory is missing.
    """

    path: Path

    def read_text(self) -> str | None:
        """The include's text (None when it does not exist yet)."""
        ...

    def apply(self, text: str, *, dry_run: bool = False) -> ApplyResult:
        """The safe change described above (nothing written when unchanged or `dry_run`)."""
        ...

    def install(self, text: str, *, force: bool = False) -> InstallResult:
        """A first include: the safe apply when nginx runs; else write it and test it when possible."""
        ...

    def test(self) -> str | None:
        """`nginx -t` of the whole config: None when it passes, else nginx's words."""
        ...

    def reload(self) -> tuple[list[int], list[int]]:
        """Reload and confirm: (workers before, new workers); NginxFailed when nginx gave up."""
        ...

    def verify(self, text: str) -> str | None:
        """None when the include says `text` and the running nginx accepts its config, else what is off."""
        ...

    def running(self) -> bool:
        """Whether an nginx master runs."""
        ...

    def close(self) -> None:
        """Release what the router holds (a Docker client)."""
        ...


@runtime_checkable
class Prober(Protocol):
    """Probes one health target once; holds its connections until close()."""

    def prepare(self) -> None:
        """Set up what the first probe needs (so its timing is the target's alone)."""
        ...

    def probe(self, target: HealthTarget, policy: GatePolicy) -> ProbeResult:
        """One target once, judged by `policy` (the logs fallback only when nothing answered)."""
        ...

    def close(self) -> None:
        """Close sessions and clients."""
        ...


class TrafficSender(Protocol):
    """Sends up to n GETs through nginx and records who answered (verify-weights --probe)."""

    def __call__(self, url: str, n: int, *, timeout: float = ..., deadline: float | None = None,
                 stop: threading.Event | None = None) -> ProbeRun:
        ...
