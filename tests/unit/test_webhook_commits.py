"""Group commit from the event loop: requests that arrive while a transaction is under way share the next
one; each learns its own outcome; a failed transaction fails all of its requests and none after it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from pipeline_steps.webhook.commits import GroupCommit
from pipeline_steps.webhook.store import PENDING, Delivery, DeliveryStore, Recording


def make(key: str) -> Delivery:
    return Delivery(key=key, received_at=1.0, event="push", ref="refs/heads/develop", branch="develop",
                    sha="a" * 40, project="p", user="u", status=PENDING)


class SlowStore(DeliveryStore):
    """Holds each transaction until released, and counts the batches it was given."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_next = False

    def record_many(self, recordings: list[Recording]) -> list[str | None]:  # type: ignore[override]
        recordings = list(recordings)
        self.batches.append(len(recordings))
        self.entered.set()
        assert self.release.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise OSError(28, "No space left on device")
        return super().record_many(recordings)


def test_requests_arriving_during_a_commit_share_the_next_and_each_gets_its_own_answer(
        tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "d.sqlite3")
    commits = GroupCommit(store)

    async def scenario() -> list[str | None]:
        first = asyncio.ensure_future(commits.record((make("k0"), ["uuid-0"], [], [])))
        await asyncio.get_running_loop().run_in_executor(None, store.entered.wait, 10)
        # 20 more while k0's transaction is held: k5 repeats k0's uuid, k7 and k8 share one of their own
        rest = [asyncio.ensure_future(commits.record(
            (make(f"k{n}"), ["uuid-0" if n == 5 else "uuid-78" if n in (7, 8) else f"uuid-{n}"], [], [])))
            for n in range(1, 21)]
        while len(commits._queue) < 20:
            await asyncio.sleep(0)  # a turn of the loop, until the 20 have queued behind k0's transaction
        store.release.set()
        return await asyncio.gather(first, *rest)

    found = asyncio.run(scenario())
    commits.close()
    assert store.batches == [1, 20]
    assert found[0] is None and found[5] == "k0" and found[7] is None and found[8] == "k7"
    assert [n for n, key in enumerate(found) if key is not None] == [5, 8]
    assert {d.key for d in store.recent(100)} == {f"k{n}" for n in range(21)} - {"k5", "k8"}


def test_a_failed_transaction_fails_each_of_its_requests_and_the_next_one_commits(tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "d.sqlite3")
    store.release.set()
    store.fail_next = True
    commits = GroupCommit(store)

    async def scenario() -> tuple[list[object], str | None]:
        failed = await asyncio.gather(*(commits.record((make(f"f{n}"), [], [], [])) for n in range(5)),
                                      return_exceptions=True)
        return failed, await commits.record((make("after"), [], [], []))

    failed, after = asyncio.run(scenario())
    commits.close()
    assert all(isinstance(e, OSError) and e.errno == 28 for e in failed)
    assert after is None and [d.key for d in store.recent()] == ["after"]


def test_a_store_error_reaches_the_caller_as_raised(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "d.sqlite3")
    commits = GroupCommit(store)
    store.close()  # a closed database: sqlite3.ProgrammingError

    async def one() -> str | None:
        return await commits.record((make("x"), [], [], []))

    with pytest.raises(Exception, match="closed"):
        asyncio.run(one())
    commits.close()
