"""The one wait-on-condition helper (tenacity underneath, like every retry in ps).

Use it for fast polling of a state that changes by itself (nginx replacing its workers, a process
exiting); use tenacity directly for retrying an action that failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(check: Callable[[], T | None], *, timeout: float, interval: float) -> T | None:
    """Call `check` every `interval` seconds until it returns something other than None (returned), or
    `timeout` seconds have passed (None). An exception from `check` ends the wait at once."""
    import tenacity

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda value: value is None),
        stop=tenacity.stop_after_delay(max(timeout, 0.0)),
        wait=tenacity.wait_fixed(max(interval, 0.0)),
        retry_error_callback=lambda _state: None,
        reraise=True,
    )
    return retrying(check)
