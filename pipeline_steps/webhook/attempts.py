"""One delivery's attempts, retried with backoff (tenacity) until done, failed, dead or superseded.

Each attempt is recorded (`running`) before the action is called; a failed attempt is retried up to
`attempts`, then the delivery is `dead`. Before any repeat, and for a delivery found `running` at start (the
receiver died mid-call), the action's `resume()` asks the far side whether it already has the delivery key
(Jenkins queue and builds, GitLab pipelines, the local deploy's process group): only when it has not is the
action run again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from pipeline_steps.errors import BadInput, PsError
from pipeline_steps.secrets import mask
from pipeline_steps.webhook.actions import Action, FinalFailure
from pipeline_steps.webhook.store import DEAD, DONE, FAILED, RETRY, SUPERSEDED, Delivery, DeliveryStore

Log = Callable[[str], None]


class RetryPolicy(Protocol):
    """How often and how patiently a delivery is attempted (ReceiverSettings has these)."""

    @property
    def coalesce(self) -> bool: ...
    @property
    def attempts(self) -> int: ...
    @property
    def retry_wait(self) -> float: ...
    @property
    def retry_max_wait(self) -> float: ...


class _Stopped(Exception):
    """The receiver stops: leave the delivery waiting (resumed at the next start)."""


class _Superseded(Exception):
    """A newer push of the same branch waits: this one is not retried."""


def _sleep_or_give_way(store: DeliveryStore, coalesce: bool, stop: threading.Event,
                       current: Delivery) -> Callable[[float], None]:
    """tenacity's sleep: ends early when the receiver stops or (coalescing) a newer push waits."""
    def sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if stop.is_set():
                raise _Stopped
            if coalesce and store.has_newer(current):
                raise _Superseded
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stop.wait(min(0.2, left))
    return sleep


def run_delivery(store: DeliveryStore, action: Action, policy: RetryPolicy, delivery: Delivery,
                 resumed: bool, stop: threading.Event, log: Log) -> None:
    """Attempts with backoff until done, failed (said no), dead (retries used up) or superseded; returns
    early, leaving the delivery waiting, when `stop` is set."""
    key = delivery.key
    resume = getattr(action, "resume", None)
    calls = {"n": 0}
    current = delivery

    def attempt() -> str:
        nonlocal current
        calls["n"] += 1
        # a repeat: of an attempt made in this run, of one left in flight (resumed) or of one that
        # failed before a restart (claimed again with attempts > 1): ask the far side first
        if resumed or calls["n"] > 1 or current.attempts > 1:
            if callable(resume):
                try:
                    found = resume(current)
                except FinalFailure:
                    raise  # it had run to its end meanwhile, and said no
                except PsError as exc:  # cannot ask (no read access, far side down): act again, with
                    found = None        # the same PS_DELIVERY for the far side to recognise
                    log(f"delivery {key}: could not check the far side ({mask(exc.message)}); "
                             "acting again with the same delivery key")
                if found:
                    return str(found)
        if resumed or calls["n"] > 1:  # (a claim already counted its own attempt)
            current = store.begin_attempt(key)
        log(f"delivery {key}: {action.name} for {current.branch} {(current.sha or '')[:12]} "
                 f"(attempt {current.attempts})")
        return action(current)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        why = mask(_reason(exc))
        store.finish(key, RETRY, f"attempt {current.attempts} failed: {why}; next in {wait:.1f}s")
        log(f"delivery {key}: attempt {current.attempts} failed: {why}; retry in {wait:.1f}s")

    budget = policy.attempts - delivery.attempts + (0 if resumed else 1)
    retrying = Retrying(
        stop=stop_after_attempt(max(1, budget)),
        wait=wait_exponential(multiplier=policy.retry_wait, max=policy.retry_max_wait),
        retry=retry_if_exception(lambda e: not isinstance(e, FinalFailure | BadInput | _Stopped
                                                          | _Superseded)),
        sleep=_sleep_or_give_way(store, policy.coalesce, stop, delivery), before_sleep=before_sleep,
        reraise=True)
    try:
        outcome, status = retrying(attempt), DONE
    except _Stopped:
        return  # left `retry`: the next start takes it up again
    except _Superseded:
        outcome, status = "superseded by a newer push of the same branch (not retried)", SUPERSEDED
    except FinalFailure as exc:
        outcome, status = exc.message, FAILED
    except PsError as exc:
        outcome, status = f"{exc.message} (gave up after {current.attempts} attempt(s))", DEAD
    except Exception as exc:  # the worker must survive any single action
        outcome = f"internal error: {_reason(exc)} (gave up after {current.attempts} attempt(s))"
        status = DEAD
    outcome = mask(outcome)
    store.finish(key, status, outcome)
    log(f"delivery {key}: {status}: {outcome}")


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, PsError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if exc else "unknown"
