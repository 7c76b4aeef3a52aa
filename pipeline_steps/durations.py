"""Durations as written in ps.yaml and options: `500ms`, `2s`, `1m`, `1h` or plain seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|\.[0-9]+([eE][-+]?[0-9]+)?", re.ASCII)
# An option's duration beyond a year is a typo, and too long for the OS's waits (threading.TIMEOUT_MAX).
OPTION_MAX = 365 * 86400.0


def parse_duration(value: object) -> float:
    """Return seconds for a duration; raise ValueError with a readable reason."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"not a duration: {value!r} (too large)") from None
    elif isinstance(value, str):
        text = value.strip(" \t").lower()
        unit = next((u for u in ("ms", "s", "m", "h") if text.endswith(u)), "")
        number = text[: len(text) - len(unit)] if unit else text
        try:
            if not _NUMBER.fullmatch(number):  # ASCII only: no full-width digits, no '_', no 'nan'
                raise ValueError(number)
            seconds = float(number) * _UNITS.get(unit, 1.0)
        except ValueError:
            raise ValueError(f"not a duration: {value!r} (use 500ms, 2s, 1m or seconds)") from None
    else:
        raise ValueError(f"not a duration: {value!r}")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError(f"not a duration: {value!r} (must be a finite number >= 0)")
    return seconds


def format_duration(seconds: float) -> str:
    """Short human form: 850ms, 2.5s, 1m30s."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"
