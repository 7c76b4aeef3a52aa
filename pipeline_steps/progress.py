"""How operations and orchestration report progress without printing: an observer they are handed.

Operations and deploy plans never print (see docs/ARCHITECTURE.md, the layers). A long step that has
something to tell while it runs (a build's log, a retry, the deploy's decisions) calls the observer it
was given; the CLI hands in its `Output` (cli/output.py), which prints, masks and routes lines to
stdout or stderr; a test hands in an object that only keeps them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Say = Callable[[str], None]


class Reporter(Protocol):
    """Human lines while something runs: `say` a line, `warn` about something that goes on anyway."""

    def say(self, line: str) -> None: ...
    def warn(self, line: str) -> None: ...


class Progress(Reporter, Protocol):
    """A Reporter that also takes `-v` detail lines and raw streamed text (a build's log)."""

    def debug(self, line: str) -> None: ...
    def stream(self, chunk: str) -> None: ...

