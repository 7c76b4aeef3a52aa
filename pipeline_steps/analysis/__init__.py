"""Canary judgement from nginx's own access log (issue 14): the log format and reader, the statistics,
the decision; `canary.analysis` in ps.yaml turns it on in canary-auto's holds (deploy/judging.py).

A hold uses it like this::

    analysis = StepAnalysis([log_path], SlotMap.from_config(config), policy,
                            looks=planned_looks(pause, interval, policy.extend))
    ...every interval: action = decide_hold(analysis.look(), policy, final=..., extended=...)
"""

from pipeline_steps.analysis.accesslog import (
                                               FORMAT_NAME,
                                               AccessLogTail,
                                               LogRecord,
                                               SlotMap,
                                               Window,
                                               access_log_directive,
                                               log_format_directive,
                                               parse_line,
)
from pipeline_steps.analysis.judge import (
                                               HoldAction,
                                               Judgement,
                                               MetricTest,
                                               SideStats,
                                               StepAnalysis,
                                               decide_hold,
                                               judge,
                                               planned_looks,
)
from pipeline_steps.analysis.policy import AnalysisPolicy
from pipeline_steps.analysis.stats import Samples, percentile

__all__ = ["FORMAT_NAME", "AccessLogTail", "AnalysisPolicy", "HoldAction", "Judgement", "LogRecord",
           "MetricTest", "Samples", "SideStats", "SlotMap", "StepAnalysis", "Window", "access_log_directive",
           "decide_hold", "judge", "log_format_directive", "parse_line", "percentile", "planned_looks"]
