"""Docker's log timestamps: the one parser for `2024-05-01T10:00:00.123456789Z` and timestamped log lines."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

UNSET_PREFIX = "0001-"  # Docker's zero time (a container that never started / never finished)


def parse_log_timestamp(stamp: str) -> int | None:
    """Docker's RFC 3339 log timestamp (`2024-05-01T10:00:00.123456789Z`) as nanoseconds since the epoch."""
    stamp = stamp.strip()
    if not stamp.endswith("Z") or "T" not in stamp:
        return None
    whole, _, fraction = stamp[:-1].partition(".")
    if fraction and not fraction.isdigit():
        return None
    try:
        seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    epoch = int((seconds - datetime(1970, 1, 1)).total_seconds())
    nanos = int((fraction + "000000000")[:9]) if fraction else 0
    return epoch * 1_000_000_000 + nanos


def parse_state_time(value: object) -> int | None:
    """A State.StartedAt / FinishedAt of `docker inspect` in ns (None when unset or unreadable)."""
    text = str(value or "")
    if not text or text.startswith(UNSET_PREFIX):
        return None
    return parse_log_timestamp(text)


def log_lines_after(lines: Sequence[str], mark: int | None) -> list[str]:
    """The messages of timestamped log lines written strictly after `mark` (all when mark is None)."""
    found: list[str] = []
    for line in lines:
        stamp, _, message = line.partition(" ")
        at = parse_log_timestamp(stamp)
        if at is None:
            continue
        if mark is None or at > mark:
            found.append(message)
    return found
