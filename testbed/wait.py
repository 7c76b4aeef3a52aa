"""Waiting in the bed: on a condition until a deadline, never for a fixed time to order processes.

Every pause of tests and the bed goes through here: `until` (poll a condition), `pause_until` (pace a
loop to a monotonic deadline, e.g. load pacing or a random kill point) and `stall` (a stub that answers
slowly on purpose: the slowness is what the test is about, not an ordering).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(cond: Callable[[], T], timeout: float, interval: float = 0.05) -> T | None:
    """Poll `cond` until it returns something truthy (returned) or `timeout` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(interval, left))


def pause_until(deadline: float) -> None:
    """Sleep until time.monotonic() reaches `deadline` (at once when it has passed)."""
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)


def stall(seconds: float) -> None:
    """Answer late on purpose (a slow stub): `seconds` from now."""
    pause_until(time.monotonic() + seconds)
