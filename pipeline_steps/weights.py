"""Weight math for nginx upstreams: percent <-> weights on a fixed scale, measured shares, and the
binomial interval a probe's count must fall into.

Pure functions only (no I/O), so they are unit- and property-tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline_steps.errors import BadInput

DEFAULT_SCALE = 1000
DEFAULT_MIN_WEIGHT = 1


@dataclass(frozen=True)
class Weights:
    """The stable and canary weights of one upstream; they always add up to `scale`.

    Every slot keeps at least `min_weight` (default 1), so 0 % is 999:1 and 100 % is 1:999 on the
    default scale of 1000: both slots stay in the upstream and a rollback is only a reload.
    """

    stable: int
    canary: int
    scale: int = DEFAULT_SCALE
    min_weight: int = DEFAULT_MIN_WEIGHT

    @classmethod
    def from_percent(cls, percent: float, scale: int = DEFAULT_SCALE,
                     min_weight: int = DEFAULT_MIN_WEIGHT) -> Weights:
        """Weights giving the canary `percent` % of the traffic (clamped to keep min_weight on each)."""
        check_percent(percent)
        if scale < 2 or min_weight < 0 or 2 * min_weight >= scale:
            raise BadInput(f"weight scale {scale} with minimum weight {min_weight} is not usable")
        canary = math.floor(percent * scale / 100 + 0.5)
        canary = max(min_weight, min(scale - min_weight, canary))
        return cls(stable=scale - canary, canary=canary, scale=scale, min_weight=min_weight)

    @property
    def canary_share(self) -> float:
        """The canary's share of the traffic, 0..1."""
        total = self.stable + self.canary
        return self.canary / total if total else 0.0

    @property
    def canary_percent(self) -> float:
        """The canary's share in percent."""
        return 100.0 * self.canary_share

    def describe(self) -> str:
        """`stable 900 : canary 100 (10.0 %)`."""
        return f"stable {self.stable} : canary {self.canary} ({self.canary_percent:.1f} %)"


def check_percent(percent: float) -> float:
    """`percent` if it lies in 0..100; BadInput otherwise."""
    if isinstance(percent, bool) or not isinstance(percent, int | float) or math.isnan(percent) \
            or not 0 <= percent <= 100:
        raise BadInput(f"canary weight must be a percentage from 0 to 100, got {percent!r}")
    return float(percent)



def share(counts: dict[str, int], slot: str) -> float:
    """The measured share of `slot` among all counted answers (0 when nothing was counted)."""
    total = sum(counts.values())
    return counts.get(slot, 0) / total if total else 0.0


def _log_pmf(k: int, n: int, p: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def binomial_interval(n: int, p: float, confidence: float = 0.99) -> tuple[int, int]:
    """The central `confidence` interval [low, high] of a Binomial(n, p) count (exact quantiles).

    A probe of n requests whose target share is p passes when its count lies inside.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if not 0.0 <= p <= 1.0:
        raise ValueError("p must lie in 0..1")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must lie strictly between 0 and 1")
    if n == 0:
        return 0, 0
    if p == 0.0:
        return 0, 0
    if p == 1.0:
        return n, n
    tail = (1.0 - confidence) / 2.0
    cumulative = 0.0
    low: int | None = None
    high = n
    for k in range(n + 1):
        cumulative += math.exp(_log_pmf(k, n, p))
        if low is None and cumulative > tail:
            low = k
        if cumulative >= 1.0 - tail:
            high = k
            break
    return (low if low is not None else 0), high


def within_interval(count: int, n: int, p: float, confidence: float = 0.99) -> bool:
    """True when `count` of `n` is a plausible outcome of share `p` at the given confidence."""
    low, high = binomial_interval(n, p, confidence)
    return low <= count <= high
