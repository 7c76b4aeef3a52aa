"""The statistics of a canary judgement: sample percentiles, the two one-sided tests, alpha per look.

scipy is imported inside the functions (keeps `ps --help` fast):
- error rate: Fisher's exact test, one-sided (canary's error odds > stable's). Exact at any count, so
  valid with 0 errors on a side and 50 requests, where a z-test's normal approximation is not; it is
  conservative (never more false alarms than alpha) and fast at 10^5 requests.
- latency: Mann-Whitney U, one-sided (canary stochastically greater than stable), as Kayenta does: no
  assumption on the latency distribution's shape.
- repeated looks: each look gets a share of alpha whose sum over the planned looks is alpha, so by the
  union bound the chance of any false alarm in a hold stays <= alpha whatever the looks' correlation.
  `bonferroni`: alpha / looks at every look; `pocock`: the increments of the Lan-DeMets Pocock-type
  spending function alpha * ln(1 + (e - 1) t), which spends more early (faster detection) and less late.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Samples:
    """The requests one slot answered: status codes and latencies (seconds), in the same order."""

    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def add(self, status: int, latency: float) -> None:
        self.statuses.append(status)
        self.latencies.append(latency)

    def extend(self, other: Samples) -> None:
        self.statuses.extend(other.statuses)
        self.latencies.extend(other.latencies)

    def __len__(self) -> int:
        return len(self.statuses)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by nearest rank: the smallest sample with at least q % of the samples
    at or below it (an observed value, never an average; numpy's method="inverted_cdf")."""
    return sorted_percentile(sorted(values), q)


def sorted_percentile(ordered: Sequence[float], q: float) -> float | None:
    """percentile() of values already sorted ascending."""
    if not ordered:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], not {q}")
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(len(ordered), max(1, rank)) - 1]


def error_p_value(canary_errors: int, canary_n: int, stable_errors: int, stable_n: int) -> float:
    """One-sided Fisher exact p-value for "canary's error rate is higher than stable's"."""
    from scipy.stats import fisher_exact

    if canary_n == 0 or stable_n == 0 or canary_errors == 0:
        return 1.0
    table = [[canary_errors, canary_n - canary_errors], [stable_errors, stable_n - stable_errors]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def latency_p_value(canary: Sequence[float], stable: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value for "canary's latencies are larger than stable's"."""
    from scipy.stats import mannwhitneyu

    if not canary or not stable:
        return 1.0
    if len(set(canary)) == 1 and set(canary) == set(stable):
        return 1.0  # all equal (e.g. every time 0.000): no evidence either way
    p = float(mannwhitneyu(canary, stable, alternative="greater").pvalue)
    return 1.0 if math.isnan(p) else p


def look_alpha(look: int, looks: int, alpha: float, correction: str = "bonferroni") -> float:
    """The level of look `look` (1-based) of `looks` planned ones; the levels of all looks sum to alpha."""
    if looks < 1 or not 1 <= look <= looks:
        raise ValueError(f"look {look} of {looks}: outside the planned looks")
    if correction == "bonferroni":
        return alpha / looks
    if correction == "pocock":
        def spent(t: float) -> float:
            return alpha * math.log(1 + (math.e - 1) * t)
        return spent(look / looks) - spent((look - 1) / looks)
    raise ValueError(f"unknown correction {correction!r}")
