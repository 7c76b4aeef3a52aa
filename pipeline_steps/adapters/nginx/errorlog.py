"""Where nginx says why a reload failed: its error log file here, or the container's logs (DockerHost)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_steps.timestamps import log_lines_after, parse_log_timestamp

if TYPE_CHECKING:
    from pipeline_steps.adapters.interfaces import DockerHost

__all__ = ["ContainerLog", "FileLog", "LogWatch", "log_lines_after", "parse_log_timestamp", "reload_failure"]


class LogWatch:
    """Where nginx writes errors: `mark()` before a reload, `failure_since(mark)` says why nginx gave up."""

    def mark(self) -> object:
        return None

    def failure_since(self, mark: object) -> str | None:
        return None


class FileLog(LogWatch):
    """An error log file on this machine (host nginx, or a log directory bind-mounted from a container)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> object:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def failure_since(self, mark: object) -> str | None:
        offset = mark if isinstance(mark, int) else 0
        try:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                tail = fh.read(65536).decode(errors="replace")
        except OSError:
            return None
        return reload_failure(tail.splitlines())


class ContainerLog(LogWatch):
    """The container's stderr/stdout through DockerHost.logs, cut at the engine's own timestamps."""

    def __init__(self, engine: DockerHost, container: str) -> None:
        self.engine = engine
        self.container = container

    def _lines(self, **kw: Any) -> list[str]:
        from pipeline_steps.adapters.interfaces import EngineError

        try:
            text = self.engine.logs(self.container, timestamps=True, **kw)
        except EngineError:
            return []  # a logging driver that cannot be read back: the worker check still decides
        return text.splitlines()

    def mark(self) -> object:
        lines = self._lines(tail=1)
        return parse_log_timestamp(lines[-1].partition(" ")[0]) if lines else None

    def failure_since(self, mark: object) -> str | None:
        if isinstance(mark, int):
            lines = self._lines(since=max(mark // 1_000_000_000, 1))
        else:
            lines = self._lines()
        return reload_failure(log_lines_after(lines, mark if isinstance(mark, int) else None))


def _emerg_words(line: str) -> str:
    return line.partition("[emerg]")[2].strip().partition(": ")[2] or line.strip()


def reload_failure(lines: Sequence[str]) -> str | None:
    """Why nginx gave up a reload, in its own words, or None while it has not (yet) given up.

    A `bind() ... failed (98: Address already in use)` is not final: nginx tries again every 500 ms,
    five times, and only `still could not bind()` ends the attempt. Any other `[emerg]` ends it at once.
    """
    first_bind: str | None = None
    for line in lines:
        if "[emerg]" not in line:
            continue
        words = _emerg_words(line)
        if words.startswith("bind() to ") and "(98:" in words:
            first_bind = first_bind or words
        elif words.startswith("still could not bind()"):
            return first_bind or words
        else:
            return words
    return None

