"""The post-deploy watch's judgement (pure): container CPU and memory against limits, and the rate of
error lines in the logs, the new version's against the old one's (issue 14, the guides' monitor script).

`SlotFigures` are one slot container's figures on one host over a window (collected by
operations/watch.py); `judge_watch` compares the new side (the canary, or the version just promoted
or switched to) with the old side (stable in the same window, or the previous version's figures from
before the change; none: the absolute limits alone) under `config.objects.WatchPolicy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline_steps.config.objects import WatchPolicy

MIN_MINUTES = 1.0  # error lines are counted per minute over at least this: one early line is 1/min


@dataclass(frozen=True)
class SlotFigures:
    """One slot container's figures on one host: CPU and memory now, error lines over `minutes`."""

    slot: str
    host: str
    container: str
    cpu_percent: float | None  # of its CPU limit (None: not known yet, a first one-shot sample)
    memory_percent: float | None  # of its memory limit (None: no limit)
    memory_bytes: int | None
    error_lines: int | None  # lines matching watch.error_pattern in the window (None: not counted)
    minutes: float  # the window the lines were counted over (from the later of its start and the mark)


@dataclass(frozen=True)
class Side:
    """A slot's figures over its hosts: the worst CPU and memory, the error lines per minute summed."""

    slot: str
    cpu_percent: float | None
    memory_percent: float | None
    memory_bytes: int | None
    error_lines: int | None
    per_minute: float | None
    containers: int

    @classmethod
    def of(cls, slot: str, figures: Sequence[SlotFigures]) -> Side:
        def worst(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return max(known) if known else None

        counted = [f for f in figures if f.error_lines is not None]
        memory = [f.memory_bytes for f in figures if f.memory_bytes is not None]
        return cls(slot, worst([f.cpu_percent for f in figures]), worst([f.memory_percent for f in figures]),
                   max(memory) if memory else None,
                   sum(int(f.error_lines or 0) for f in counted) if counted else None,
                   round(sum(int(f.error_lines or 0) / max(f.minutes, MIN_MINUTES) for f in counted), 2)
                   if counted else None, len(figures))

    def as_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "cpu_percent": self.cpu_percent, "memory_percent": self.memory_percent,
                "memory_bytes": self.memory_bytes, "error_lines": self.error_lines,
                "error_lines_per_minute": self.per_minute, "containers": self.containers}


@dataclass(frozen=True)
class WatchVerdict:
    """One look of the watch at one service: pass or fail, one line with the numbers, the figures."""

    service: str
    decision: str  # pass | fail
    reason: str
    new: Side
    old: Side | None

    def as_dict(self) -> dict[str, Any]:
        """As the outcome, history and report carry it (`kind: watch`)."""
        return {"kind": "watch", "upstream": self.service, "service": self.service,
                "decision": self.decision, "reason": self.reason, "new": self.new.as_dict(),
                "old": self.old.as_dict() if self.old else None}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} %"


def judge_watch(policy: WatchPolicy, service: str, new: Side, old: Side | None) -> WatchVerdict:
    """The new side against the limits and the old side: every failed check named with its numbers."""
    failed: list[str] = []
    shown: list[str] = []
    beside = f" ({old.slot} " if old else ""
    if policy.cpu_max_percent is not None:
        text = f"{new.slot} CPU {_pct(new.cpu_percent)} of its limit" + (
            f"{beside}{_pct(old.cpu_percent)})" if old else "")
        if new.cpu_percent is not None and new.cpu_percent > policy.cpu_max_percent:
            failed.append(f"{text} > {policy.cpu_max_percent:g} %")
        shown.append(text)
    if policy.memory_max_percent is not None:
        text = f"{new.slot} memory {_pct(new.memory_percent)} of its limit" + (
            f"{beside}{_pct(old.memory_percent)})" if old else "")
        if new.memory_percent is None and new.containers:
            text += " (no memory limit: not checked)"
        if new.memory_percent is not None and new.memory_percent > policy.memory_max_percent:
            failed.append(f"{text} > {policy.memory_max_percent:g} %")
        shown.append(text)
    if policy.error_pattern is not None and new.per_minute is not None:
        base = old.per_minute if old is not None and old.per_minute is not None else 0.0
        increase = new.per_minute - base
        text = (f"{new.slot} {new.error_lines} error lines ({new.per_minute:.1f}/min)"
                + (f" vs {old.slot} {old.error_lines} ({base:.1f}/min)" if old is not None
                   and old.per_minute is not None else ""))
        if increase > policy.max_error_lines_increase:
            failed.append(f"{text}: +{increase:.1f}/min > +{policy.max_error_lines_increase:g}/min")
        shown.append(text)
    if not new.containers:
        shown = [f"no running {new.slot} container to watch"]
    if failed:
        return WatchVerdict(service, "fail", "watch: " + "; ".join(failed) + ": fail", new, old)
    return WatchVerdict(service, "pass", "watch: " + ", ".join(shown) + ": pass", new, old)
