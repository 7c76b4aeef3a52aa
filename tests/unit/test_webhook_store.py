"""The deliveries store: durable, deduplicated, each delivery claimed once, crashes requeued."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from pipeline_steps.webhook.store import (
    DEAD,
    DONE,
    FAILED,
    IGNORED,
    PENDING,
    RUNNING,
    SUPERSEDED,
    Delivery,
    DeliveryStore,
)


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


def test_every_store_file_is_private_from_birth(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite3"
    store = DeliveryStore(path)
    store.add(make("k"))
    files = [p for p in tmp_path.iterdir() if p.name.startswith("p.sqlite3")]
    assert {p.name for p in files} >= {"p.sqlite3", "p.sqlite3-wal", "p.sqlite3-shm"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}


def test_any_known_id_makes_a_duplicate_and_adds_its_ids(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "d.sqlite3")
    assert store.record(make("idem-a"), ["idem:a", "body:1"]) is None
    assert store.record(make("uuid-u"), ["uuid:u", "body:1"]) == "idem-a"  # same body
    assert store.record(make("other"), ["uuid:u", "body:2"]) == "idem-a"   # the UUID learnt just now
    assert store.record(make("new"), ["body:3"]) is None
    assert [d.key for d in store.recent()] == ["new", "idem-a"]


def test_one_group_commit_dedups_within_its_batch_too(tmp_path: Path) -> None:
    """The receiver's group commit (commits.py) hands the store a batch: one transaction, decided in order."""
    store = DeliveryStore(tmp_path / "d.sqlite3")
    assert store.record(make("old"), ["body:old"]) is None
    calls = [("a", ["uuid:a", "body:1"]), ("b", ["uuid:b", "body:1"]), ("c", ["uuid:b", "body:2"]),
             ("d", ["body:old"]), ("e", ["body:3"]), ("a", ["body:4"])]
    commits = store.transactions
    found = dict(enumerate(store.record_many([(make(key), ids, [], []) for key, ids in calls])))
    assert store.transactions == commits + 1
    assert found == {0: None, 1: "a", 2: "a", 3: "old", 4: None, 5: "a"}  # c: b's UUID, learnt just now
    assert sorted(d.key for d in store.recent()) == ["a", "e", "old"]


def test_cross_ids_match_only_within_the_merge_window(tmp_path: Path, monkeypatch: object) -> None:
    import pipeline_steps.webhook.store as store_module

    store = DeliveryStore(tmp_path / "d.sqlite3")
    assert store.record(make("merge"), ["body:m"], ["merge:develop:s"], ["push:develop:s"]) is None
    assert store.record(make("push"), ["body:p"], ["push:develop:s"], ["merge:develop:s"]) == "merge"
    # two pushes of one commit are not merged by this (a later re-push of an old commit deploys again)
    assert store.record(make("push2"), ["body:p2"], ["push:develop:t"], ["merge:develop:t"]) is None
    assert store.record(make("push3"), ["body:p3"], ["push:develop:t"], ["merge:develop:t"]) is None
    setattr(store_module, "MERGE_WINDOW", -1.0)  # noqa: B010 - everything is now outside the window
    try:
        assert store.record(make("late"), ["body:l"], ["merge:develop:t"], ["push:develop:t"]) is None
    finally:
        setattr(store_module, "MERGE_WINDOW", 3600.0)  # noqa: B010


def test_coalescing_claims_the_newest_of_a_branch_and_supersedes_the_rest(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "d.sqlite3")
    for i, key in enumerate(("a", "b", "c")):
        store.add(make(key, at=float(i)))
    other = Delivery(**{**make("x", at=1.5).as_dict(), "branch": "release"})
    store.add(other)
    claimed = store.claim_next(coalesce=True)
    assert claimed is not None and claimed.key == "c"
    assert {d.key: d.status for d in store.recent()} == {"a": SUPERSEDED, "b": SUPERSEDED, "c": RUNNING,
                                                         "x": PENDING}
    nxt = store.claim_next(coalesce=True)
    assert nxt is not None and nxt.key == "x"


def test_requeue_by_hand_only_from_dead_failed_or_superseded(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "d.sqlite3")
    store.add(make("k"))
    claimed = store.claim_next()
    assert claimed is not None
    with pytest.raises(ValueError):
        store.requeue("k")  # running
    store.finish("k", DEAD, "gave up")
    again = store.requeue("k")
    assert (again.status, again.attempts) == (PENDING, 0) and "was dead" in (again.outcome or "")
    with pytest.raises(KeyError):
        store.requeue("missing")


def test_an_old_database_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE deliveries (key TEXT PRIMARY KEY, received_at REAL NOT NULL, "
                     "event TEXT NOT NULL, ref TEXT, branch TEXT, sha TEXT, project TEXT, user TEXT, "
                     "status TEXT NOT NULL, "
                     "outcome TEXT, attempts INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL)")
        conn.execute("INSERT INTO deliveries VALUES ('k', 1, 'push', NULL, 'develop', NULL, NULL, NULL, "
                     "'done', 'ok', 1, 1)")
    store = DeliveryStore(path)
    got = store.get("k")
    assert got is not None and (got.status, got.pid) == (DONE, None)


def _record_in_child(path: Path, proc: int, shared: bool, start: int, out: Path) -> None:
    import os

    store = DeliveryStore(path, shared=shared)
    os.read(start, 1)  # all start together
    found: list[tuple[int, str | None]] = []

    def one(n: int) -> None:
        found.append((n, store.record(make(f"p{proc}-{n}"), [f"uuid-{n}"])))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.write_text(repr(sorted(found)))
    store.close()


@pytest.mark.parametrize("shared", [True, False])
def test_processes_recording_at_once_keep_one_owner_per_id(tmp_path: Path, shared: bool) -> None:
    """`serve --workers N`: several processes (forked, each its own store) record the same deliveries and
    ids at the same moment; each delivery is recorded once, every other call sees it as a duplicate."""
    import os

    path = tmp_path / "d.sqlite3"
    DeliveryStore(path).close()
    start_r, start_w = os.pipe()
    pids = []
    for proc in range(3):
        pid = os.fork()
        if pid == 0:  # a child: record, write what it found, exit without unwinding pytest
            code = 1
            try:
                _record_in_child(path, proc, shared, start_r, tmp_path / f"out{proc}")
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.write(start_w, b"xxx")
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    os.close(start_r)
    os.close(start_w)
    store = DeliveryStore(path)
    rows = store.recent(1000)
    assert len(rows) == 20  # one delivery per uuid, whichever process was first
    owner = {f"uuid-{n}": next(d.key for d in rows if d.key.endswith(f"-{n}")) for n in range(20)}
    for proc in range(3):
        for n, found in eval((tmp_path / f"out{proc}").read_text()):  # noqa: S307 - our own repr
            assert found in (None, owner[f"uuid-{n}"])
            assert (found is None) == (owner[f"uuid-{n}"] == f"p{proc}-{n}")
    if shared:
        assert stat.S_IMODE(Path(f"{path}-writer").stat().st_mode) == 0o600
    store.close()
