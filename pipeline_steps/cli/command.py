"""What every step's click command shares: the Output, the config, common options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from pipeline_steps.cli.output import Output
from pipeline_steps.config import Config, load_config

F = TypeVar("F", bound=Callable[..., Any])

pass_output = click.make_pass_decorator(Output, ensure=True)


def load(out: Output) -> Config:
    """The validated config named by --config / PS_CONFIG (its host warnings printed once)."""
    config = load_config(out.config_path)
    for line in config.warnings():
        out.warn(line)
    return config


def service_option(f: F) -> F:
    """`--service S` (one service; default all)."""
    return click.option("--service", "-s", "service", metavar="NAME",
                        help="Only this service (default: all).")(f)


def report(out: Output, step: str, data: dict[str, Any]) -> None:
    """Emit a step's result object (printed with --json)."""
    out.result(step, {"ok": True, **data})
