"""The knobs of a canary judgement: ps.yaml's `canary.analysis` (defined once, in config.objects)."""

from __future__ import annotations

from pipeline_steps.config.objects import CORRECTIONS, INCONCLUSIVE, AnalysisPolicy

__all__ = ["CORRECTIONS", "INCONCLUSIVE", "AnalysisPolicy"]
