"""Errors every step raises; each carries the documented exit code.

0 done, 1 a check said no, 2 bad usage/config/input, 3 a needed system unreachable.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class PsError(Exception):
    """A failure reported as one line with an exit code."""

    exit_code = EXIT_CHECK_FAILED

    def __init__(self, message: str, *, result: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.result = result
        self.output: object | None = None  # the command's Output, set by the CLI for --json failures


class CheckFailed(PsError):
    """The step ran and its check said no (exit 1)."""

    exit_code = EXIT_CHECK_FAILED


class BadInput(PsError):
    """Bad usage, configuration or input (exit 2)."""

    exit_code = EXIT_USAGE


class Unreachable(PsError):
    """A system the step needs did not answer (exit 3); `host`: the configured host it is on, if any."""

    exit_code = EXIT_UNREACHABLE

    def __init__(self, message: str, *, result: dict[str, object] | None = None,
                 host: str | None = None) -> None:
        super().__init__(message, result=result)
        self.host = host


class ConfigError(BadInput):
    """ps.yaml has problems; every problem carries its path."""

    def __init__(self, problems: list[str], source: str = "ps.yaml") -> None:
        self.problems = problems
        self.source = source
        first = problems[0] if problems else "invalid configuration"
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{source}: {first}{more}")


def unreachable(system: str, reason: str | BaseException, *, context: str = "",
                result: dict[str, object] | None = None, host: str | None = None) -> Unreachable:
    """The one wording for a needed system that did not answer (exit 3):
    `<system> is unreachable[ <context>]: <reason>`; an exception as reason is named by its type
    (its text may carry URLs with credentials)."""
    why = type(reason).__name__ if isinstance(reason, BaseException) else reason
    where = f" {context}" if context else ""
    return Unreachable(f"{system} is unreachable{where}: {why}", result=result, host=host)
