"""The decision: canary against stable, from the samples of one hold, stated with its numbers.

A metric fails when the one-sided test is significant at the look's level AND the observed difference is
above its threshold; the judgement fails when a metric fails, is inconclusive while either side has fewer
than `min_requests`, and passes otherwise. The hold's alpha (1 - confidence) is split in two equal halves
between the metrics (Bonferroni) and each half is spread over the planned looks (stats.look_alpha); a look
spends alpha only when it tests, i.e. once both sides have `min_requests`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pipeline_steps.analysis.accesslog import AccessLogTail, SlotMap, Window
from pipeline_steps.analysis.policy import AnalysisPolicy
from pipeline_steps.analysis.stats import (
    Samples,
    error_p_value,
    latency_p_value,
    look_alpha,
    sorted_percentile,
)

METRICS = 2  # error rate and latency share the hold's alpha


@dataclass(frozen=True)
class SideStats:
    """One slot's numbers."""

    slot: str
    requests: int
    errors: int
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @classmethod
    def of(cls, slot: str, samples: Samples, policy: AnalysisPolicy) -> SideStats:
        n = len(samples)
        errors = sum(1 for s in samples.statuses if policy.is_error(s))

        ordered = sorted(samples.latencies)

        def ms(q: float) -> float | None:
            value = sorted_percentile(ordered, q)
            return None if value is None else round(value * 1000, 3)

        return cls(slot, n, errors, errors / n if n else None, ms(50), ms(95), ms(99))


@dataclass(frozen=True)
class MetricTest:
    """One metric's test: the observed values, the difference, its threshold and the p-value."""

    metric: str  # error_rate | latency
    canary: float  # error rate (fraction) or p99 (ms)
    stable: float
    difference: float
    threshold: float
    test: str
    p_value: float
    alpha: float
    decision: str  # pass | fail
    line: str


@dataclass(frozen=True)
class Judgement:
    """The judgement of one upstream at one look."""

    upstream: str
    decision: str  # pass | fail | inconclusive
    reason: str  # one line with the numbers
    look: int  # tests done in this hold so far (0: not tested yet)
    looks: int  # planned
    canary: SideStats
    stable: SideStats
    errors: MetricTest | None = None
    latency: MetricTest | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _p(value: float) -> str:
    return f"{value:.1e}" if value < 1e-4 else f"{value:.4f}"


def _error_test(c: SideStats, s: SideStats, policy: AnalysisPolicy, alpha: float) -> MetricTest:
    cr, sr = c.error_rate or 0.0, s.error_rate or 0.0
    diff = cr - sr
    p = error_p_value(c.errors, c.requests, s.errors, s.requests)
    over = diff > policy.max_error_rate_increase
    fail = over and p < alpha
    kind = "4xx+5xx" if policy.count_4xx else "5xx"
    size = (f"{diff * 100:+.1f} pp {'>' if over else '<='} {policy.max_error_rate_increase * 100:g} pp")
    test = f"p={_p(p)} {'<' if p < alpha else '>='} {_p(alpha)}"
    line = (f"canary {kind} {cr * 100:.1f} % vs stable {sr * 100:.1f} % "
            f"({size}{', ' if fail or not over else ' but '}{test}): {'fail' if fail else 'pass'}")
    return MetricTest("error_rate", cr, sr, diff, policy.max_error_rate_increase, "fisher-exact one-sided",
                      p, alpha, "fail" if fail else "pass", line)


def _latency_test(canary: Samples, stable: Samples, c: SideStats, s: SideStats, policy: AnalysisPolicy,
                  alpha: float) -> MetricTest:
    cp, sp = c.p99_ms or 0.0, s.p99_ms or 0.0
    diff = cp - sp
    threshold = policy.max_p99_increase * 1000
    p = latency_p_value(canary.latencies, stable.latencies)
    over = diff > threshold
    fail = over and p < alpha
    size = f"{diff:+.0f} ms {'>' if over else '<='} {threshold:g} ms"
    test = f"U p={_p(p)} {'<' if p < alpha else '>='} {_p(alpha)}"
    line = (f"canary p99 {cp:.0f} ms vs stable {sp:.0f} ms "
            f"({size}{', ' if fail or not over else ' but '}{test}): {'fail' if fail else 'pass'}")
    return MetricTest("latency", cp, sp, diff, threshold, "mann-whitney-u one-sided", p, alpha,
                      "fail" if fail else "pass", line)


def judge(canary: Samples, stable: Samples, policy: AnalysisPolicy, *, look: int = 1, looks: int = 1,
          alpha: float | None = None, upstream: str = "") -> Judgement:
    """Judge canary against stable at test `look` of `looks` planned, with the hold's `alpha`
    (default policy.alpha). Too little traffic on either side is "inconclusive" (no test is done)."""
    c, s = SideStats.of("canary", canary, policy), SideStats.of("stable", stable, policy)
    if c.requests < policy.min_requests or s.requests < policy.min_requests:
        return Judgement(upstream, "inconclusive",
                         f"too little traffic: canary {c.requests}, stable {s.requests} requests "
                         f"(min_requests {policy.min_requests} on each side): inconclusive",
                         look - 1, looks, c, s)
    level = look_alpha(look, looks, policy.alpha if alpha is None else alpha, policy.correction) / METRICS
    errors = _error_test(c, s, policy, level)
    latency = _latency_test(canary, stable, c, s, policy, level)
    failed = [t.line for t in (errors, latency) if t.decision == "fail"]
    decision = "fail" if failed else "pass"
    return Judgement(upstream, decision, "; ".join(failed or [errors.line, latency.line]), look, looks, c, s,
                     errors, latency)


def planned_looks(pause: float, interval: float, extend: float = 0.0) -> int:
    """Looks of a hold that judges every `interval` seconds for `pause`, then up to `extend` more."""
    if interval <= 0:
        return 1
    return max(1, math.ceil(pause / interval - 1e-9) + math.ceil(extend / interval - 1e-9))


class StepAnalysis:
    """The judgement of one canary step (one hold), from the access logs of one or more routers.

    Opened when the step's weight is live: only lines written from then on count. Each `look()` reads
    the new lines and judges every upstream on all samples of the step so far.
    """

    def __init__(self, logs: Sequence[str | os.PathLike[str]], slots: SlotMap, policy: AnalysisPolicy,
                 looks: int, *, upstreams: Iterable[str] | None = None, holds: int = 1,
                 from_start: bool = False, sources: Sequence[Any] | None = None) -> None:
        self.policy = policy
        self.looks = looks
        self.alpha = policy.alpha / max(1, holds)
        self.upstreams = list(upstreams) if upstreams is not None else list(slots.upstreams)
        self.window = Window(slots)
        self.tests = dict.fromkeys(self.upstreams, 0)
        # `sources`: readers with read() -> list[LogRecord] and close() (a deploy's DeployOps gives them)
        self.tails = list(sources) if sources is not None else [AccessLogTail(p, from_start=from_start)
                                                                for p in logs]

    def read(self) -> int:
        """Read every log's new lines into the window; the number attributed to a slot."""
        return sum(self.window.add(tail.read()) for tail in self.tails)

    def look(self) -> list[Judgement]:
        """Read, then judge each upstream (a look that tests uses one of the planned looks)."""
        self.read()
        out = []
        for upstream in self.upstreams:
            canary, stable = self.window.side(upstream, "canary"), self.window.side(upstream, "stable")
            tested = self.tests[upstream] + (1 if min(len(canary), len(stable)) >= self.policy.min_requests
                                             else 0)
            if tested > self.looks:
                raise ValueError(f"{upstream}: more than the {self.looks} planned looks")
            judgement = judge(canary, stable, self.policy, look=max(1, tested), looks=self.looks,
                              alpha=self.alpha, upstream=upstream)
            self.tests[upstream] = tested
            out.append(judgement)
        return out

    def close(self) -> None:
        for tail in self.tails:
            tail.close()

    def __enter__(self) -> StepAnalysis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class HoldAction:
    """What the hold does after a look: continue | extend | pass | rollback, and why."""

    action: str
    reason: str


def decide_hold(judgements: Sequence[Judgement], policy: AnalysisPolicy, *, final: bool,
                extended: float = 0.0) -> HoldAction:
    """The hold's next move: a failed judgement rolls back at once; at the end of the pause all passed
    promotes, an inconclusive one extends the hold up to `policy.extend` seconds, then policy decides."""
    failed = [j for j in judgements if j.decision == "fail"]
    if failed:
        return HoldAction("rollback", "; ".join(f"{j.upstream}: {j.reason}" for j in failed))
    if not final:
        return HoldAction("continue", "no judgement failed so far")
    unsure = [j for j in judgements if j.decision == "inconclusive"]
    if not unsure:
        return HoldAction("pass", "; ".join(f"{j.upstream}: {j.reason}" for j in judgements))
    why = "; ".join(f"{j.upstream}: {j.reason}" for j in unsure)
    if extended < policy.extend:
        return HoldAction("extend", why)
    verdict = "pass" if policy.inconclusive == "pass" else "rollback"
    return HoldAction(verdict, f"{why}, still after extending {extended:g}s: {policy.inconclusive} by policy")
