"""Group commit from the event loop: the deliveries that arrive while a transaction is being fsync'd are
written together in the next one, on one thread of their own.

Each request awaits its own transaction, so none is answered before it is durable; the event loop hands
over to the store's thread once per transaction, not once per delivery (each hand-off costs a GIL switch:
with a thread per request those switches, not the disk, were most of a burst's time to the 200).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from pipeline_steps.webhook.store import DeliveryStore, Recording


class GroupCommit:
    """`await record(...)` = DeliveryStore.record, batched across the requests of one event loop."""

    def __init__(self, store: DeliveryStore) -> None:
        self._store = store
        self._queue: list[tuple[Recording, asyncio.Future[str | None]]] = []
        self._draining: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ps-webhook-commit")

    async def record(self, recording: Recording) -> str | None:
        """None when recorded, else the key of the delivery it repeats; raises what the store raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        self._queue.append((recording, future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain(loop))
        return await future

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit what is queued, then what was queued meanwhile, until nothing is."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    found = await loop.run_in_executor(self._executor, self._store.record_many,
                                                       [recording for recording, _ in batch])
                except Exception as exc:  # every delivery of the transaction gets it: none was recorded
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), key in zip(batch, found, strict=True):
                        if not future.done():
                            future.set_result(key)
        finally:
            self._draining = None

    def close(self) -> None:
        """Wait for a transaction under way, then end the thread."""
        self._executor.shutdown(wait=True)
