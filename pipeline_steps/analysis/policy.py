"""The knobs of a canary judgement (to be moved into ps.yaml's `canary.analysis` later)."""

from __future__ import annotations

from dataclasses import dataclass

INCONCLUSIVE = ("pass", "fail")
CORRECTIONS = ("bonferroni", "pocock")


@dataclass(frozen=True)
class AnalysisPolicy:
    """When a canary is judged worse than stable.

    A metric fails only when both hold: the one-sided test says canary > stable at the look's level
    (alpha = 1 - confidence, spread over the planned looks and the two metrics), and the observed
    difference is larger than its threshold (a practical, not just statistical, difference).
    """

    max_error_rate_increase: float = 0.02  # canary rate - stable rate, as a fraction (0.02 = 2 pp)
    max_p99_increase: float = 0.050  # seconds
    confidence: float = 0.99  # per judged hold (all its looks and both metrics together)
    min_requests: int = 50  # on each side, else "inconclusive"
    count_4xx: bool = False  # 4xx count as errors too
    inconclusive: str = "fail"  # after the extension: "pass" or "fail"
    extend: float = 30.0  # seconds a hold may be extended while inconclusive
    correction: str = "bonferroni"  # how alpha is spread over the looks: bonferroni | pocock

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), not {self.confidence}")
        if self.max_error_rate_increase < 0 or self.max_p99_increase < 0:
            raise ValueError("max_error_rate_increase and max_p99_increase must be >= 0")
        if self.min_requests < 1:
            raise ValueError("min_requests must be >= 1")
        if self.inconclusive not in INCONCLUSIVE:
            raise ValueError(f"inconclusive must be one of {', '.join(INCONCLUSIVE)}")
        if self.extend < 0:
            raise ValueError("extend must be >= 0")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}")

    @property
    def alpha(self) -> float:
        """The false-alarm budget of one judged hold."""
        return 1.0 - self.confidence

    def is_error(self, status: int) -> bool:
        """Whether an answer with this status counts as an error."""
        return status >= 500 or (self.count_4xx and 400 <= status < 500)
