"""Work on every host at once: `each_host(hosts, fn, limit)`, the one bounded thread pool of ps.

Results come back in host order. A failure is raised only after every task that started has finished
(so a caller that undoes its work sees the whole picture: nothing is still changing a host); the tasks
not yet started when the first failure happened are not started. When several hosts failed, the one
raised is the first in host order (deterministic whatever the timing). With one host, or limit 1, the
work runs in the calling thread, one host after the other: exactly the sequential code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_LIMIT = 4  # hosts worked on at once (ps.yaml parallel_hosts)
MAX_LIMIT = 64


class _Skipped(Exception):
    """A task not started because another one had already failed."""


def each_host(hosts: Sequence[T], fn: Callable[[T], R], limit: int = DEFAULT_LIMIT) -> list[R]:
    """`[fn(h) for h in hosts]`, up to `limit` at once; see the module doc for failures."""
    items = list(hosts)
    width = max(1, min(int(limit), len(items), MAX_LIMIT))
    if width <= 1:
        return [fn(h) for h in items]
    failed = threading.Event()

    def task(item: T) -> R:
        if failed.is_set():
            raise _Skipped()
        try:
            return fn(item)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="ps-host") as pool:
        futures: list[Future[R]] = [pool.submit(task, h) for h in items]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # interrupted here (Ctrl-C): start nothing more, let the started ones end
            failed.set()
            raise
        finally:
            if failed.is_set():
                for f in futures:
                    f.cancel()  # not started yet: never starts
        wait(futures)  # every started task has finished
    for f in futures:
        error = None if f.cancelled() else f.exception()
        if error is not None and not isinstance(error, _Skipped):
            raise error
    return [f.result() for f in futures]
