"""The deliveries store: durable, deduplicated, each delivery claimed once, crashes requeued."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

from pipeline_steps.webhook.store import DONE, FAILED, IGNORED, PENDING, RUNNING, Delivery, DeliveryStore


def make(key: str, at: float = 1.0, status: str = PENDING) -> Delivery:
    return Delivery(key=key, received_at=at, event="push", ref="refs/heads/develop", branch="develop",
                    sha="a" * 40, project="p", user="u", status=status)


def test_a_key_is_recorded_once(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "d.sqlite3")
    assert store.add(make("k1")) is True
    assert store.add(make("k1", at=2.0)) is False
    assert [d.key for d in store.recent()] == ["k1"]


def test_database_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "d.sqlite3"
    store = DeliveryStore(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    sync = store._db.execute("PRAGMA synchronous").fetchone()[0]
    assert (mode, sync) == ("wal", 2)  # 2 = FULL


def test_claims_oldest_first_and_never_twice(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "d.sqlite3")
    store.add(make("late", at=5.0))
    store.add(make("early", at=1.0))
    store.add(make("skip", at=0.5, status=IGNORED))
    first = store.claim_next()
    second = store.claim_next()
    assert first is not None and second is not None
    assert (first.key, first.status, first.attempts) == ("early", RUNNING, 1)
    assert second.key == "late"
    assert store.claim_next() is None


def test_concurrent_claims_hand_out_each_delivery_once(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "d.sqlite3")
    for i in range(50):
        store.add(make(f"k{i}", at=float(i)))
    claimed: list[str] = []
    lock = threading.Lock()

    def claim() -> None:
        while (d := store.claim_next()) is not None:
            with lock:
                claimed.append(d.key)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(claimed) == sorted(f"k{i}" for i in range(50))


def test_outcomes_and_restart_recovery_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite3"
    store = DeliveryStore(path)
    for key in ("a", "b", "c"):
        store.add(make(key, at=ord(key)))
    a = store.claim_next()
    b = store.claim_next()
    assert a is not None and b is not None
    store.finish(a.key, DONE, "ok")
    store.close()  # "crash" while b runs and c waits

    again = DeliveryStore(path)
    assert again.requeue_interrupted() == 1
    assert {d.key: d.status for d in again.recent()} == {"a": DONE, "b": PENDING, "c": PENDING}
    b2 = again.claim_next()
    assert b2 is not None and (b2.key, b2.attempts) == ("b", 2)
    again.finish("b", FAILED, "no")
    got = again.get("b")
    assert got is not None and (got.status, got.outcome) == (FAILED, "no")
    assert again.count(PENDING) == 1
