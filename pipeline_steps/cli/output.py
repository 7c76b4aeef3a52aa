"""How steps speak: human lines, and with --json one JSON object per step on stdout."""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import click

from pipeline_steps.secrets import mask, mask_obj

_LOCK = threading.RLock()  # lines come from several threads (pipeline_steps.parallel): whole lines only


@dataclass
class Output:
    """Human lines go to stdout, or to stderr when --json owns stdout."""

    json_mode: bool = False
    verbose: bool = False
    dry_run: bool = False
    config_path: str = "ps.yaml"
    _emitted: list[dict[str, Any]] = field(default_factory=list)

    def say(self, line: str) -> None:
        """One human line (masked)."""
        with _LOCK:
            click.echo(mask(line), err=self.json_mode)

    def debug(self, line: str) -> None:
        """A line only shown with -v."""
        if self.verbose:
            with _LOCK:
                click.echo(mask(line), err=True)

    def warn(self, line: str) -> None:
        with _LOCK:
            click.echo(mask(f"warning: {line}"), err=True)

    def stream(self, chunk: str) -> None:
        """Raw streamed text (build logs) without an added newline."""
        out = sys.stderr if self.json_mode else sys.stdout
        with _LOCK:
            out.write(mask(chunk))
            out.flush()

    def result(self, step: str, data: dict[str, Any]) -> None:
        """The step's result object; printed only in --json mode."""
        record = mask_obj({"step": step, **data})
        with _LOCK:
            self._emitted.append(record)
            if self.json_mode:
                click.echo(json.dumps(record, sort_keys=False, default=str))

