"""FakeProber: the Prober interface with scripted answers per target (no network, no Docker)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pipeline_steps.health import GatePolicy, HealthTarget, ProbeResult

Script = ProbeResult | Iterable[ProbeResult] | Callable[[int], ProbeResult]


def up(label: str = "fake", status: str = "200", detail: str = "") -> ProbeResult:
    """A passing answer."""
    return ProbeResult(label, True, status, 1.0, detail=detail)


def refused(label: str = "fake") -> ProbeResult:
    """Nothing listens yet (fast re-try, the logs fallback may apply)."""
    return ProbeResult(label, False, "refused", 1.0, "connection refused", not_listening=True, no_answer=True)


def not_ready(label: str = "fake", status: str = "503") -> ProbeResult:
    """An answer that is not the wanted one yet."""
    return ProbeResult(label, False, status, 1.0, f"HTTP {status} (want 2xx)", not_ready=True)


@dataclass
class FakeProber:
    """Answers from `script`: per target label (HealthTarget.label), a ProbeResult (always), a sequence
    (one per probe; the last one repeats) or a function of the probe number (0, 1, ...). A target
    without a script is refused. `calls` lists the labels probed, in order."""

    script: Mapping[str, Script] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    closed: bool = False
    _seen: dict[str, int] = field(default_factory=dict)

    def prepare(self) -> None:
        """Nothing to set up."""

    def probe(self, target: HealthTarget, policy: GatePolicy) -> ProbeResult:
        label = target.label
        n = self._seen.get(label, 0)
        self._seen[label] = n + 1
        self.calls.append(label)
        answer = self.script.get(label)
        if answer is None:
            return refused(label)
        if isinstance(answer, ProbeResult):
            return answer
        if callable(answer):
            return answer(n)
        answers = list(answer)
        return answers[min(n, len(answers) - 1)]

    def close(self) -> None:
        self.closed = True
