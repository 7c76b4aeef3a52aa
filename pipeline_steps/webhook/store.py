"""Deliveries kept durably in SQLite (WAL, synchronous=FULL: a commit is fsync'd before we answer).

States: `pending` (accepted, not run yet) -> `running` (an attempt is in flight: recorded *before* the call)
-> `done` | `retry` (an attempt failed; the next one waits its backoff) -> ... -> `dead` (retries used up,
re-triggerable with `ps webhook retry ID`); `failed` when the action ran and said no (not retried);
`superseded` when a newer push of the same branch replaced it in the queue; `ignored` for events we do not
act on. A delivery is known by several ids (Idempotency-Key, X-Gitlab-Event-UUID, body hash, and for a
merge the branch + merge commit): when any of them was seen before, the delivery is a duplicate.
A delivery found `running` at start was interrupted by a crash: the worker resumes it (see server.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    key         TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    event       TEXT NOT NULL,
    ref         TEXT,
    branch      TEXT,
    sha         TEXT,
    project     TEXT,
    user        TEXT,
    status      TEXT NOT NULL,
    outcome     TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status, received_at);
CREATE TABLE IF NOT EXISTS delivery_ids (
    id          TEXT PRIMARY KEY,
    key         TEXT NOT NULL,
    at          REAL NOT NULL
);
"""
# columns added after the first release (an older database is migrated when opened)
ADDED_COLUMNS = {"pid": "INTEGER", "started_at": "REAL"}

PENDING, RUNNING, RETRY, DONE, FAILED, DEAD, SUPERSEDED, IGNORED = (
    "pending", "running", "retry", "done", "failed", "dead", "superseded", "ignored")
WAITING = (PENDING, RETRY)           # states the worker picks up
RETRIABLE_BY_HAND = (DEAD, FAILED, SUPERSEDED)
# SQLite's page cache per connection (default 2 MiB): look-ups touch a few index pages, the rest comes from
# the OS page cache; a small cap keeps the receiver's memory flat from its first deliveries on
CACHE_KIB = 256
MERGE_WINDOW = 3600.0                # a push and a merge event of one commit are one trigger within this


@dataclass(frozen=True)
class PushEvent:
    """What a GitLab delivery says: its event kind and, for a push, the ref, branch, commit, project, user."""

    event: str
    ref: str | None
    branch: str | None
    sha: str | None
    project: str | None
    user: str | None

    def push_fields(self) -> dict[str, Any]:
        """Just the PushEvent fields (of a subclass too)."""
        return {f.name: getattr(self, f.name) for f in fields(PushEvent)}


@dataclass(frozen=True)
class Delivery(PushEvent):
    """One received webhook delivery and what became of it."""

    key: str
    received_at: float
    status: str
    outcome: str | None = None
    attempts: int = 0
    updated_at: float = 0.0
    pid: int | None = None
    started_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _COLUMNS}


_COLUMNS = tuple(f.name for f in fields(Delivery))  # the SELECT order Delivery(*row) reads back
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM deliveries"
# a batch's values go in as one JSON array: the same four statements (prepared once) for any batch size
_FIND_IDS = "SELECT id, key, at FROM delivery_ids WHERE id IN (SELECT value FROM json_each(?))"
_FIND_KEYS = "SELECT key FROM deliveries WHERE key IN (SELECT value FROM json_each(?))"
_INSERT_ROWS = (f"INSERT INTO deliveries ({', '.join(_COLUMNS)}) SELECT "
                + ", ".join(f"json_extract(value, '$[{n}]')" for n in range(len(_COLUMNS)))
                + " FROM json_each(?) ORDER BY key")
_INSERT_IDS = ("INSERT OR IGNORE INTO delivery_ids (id, key, at) SELECT json_extract(value, '$[0]'), "
               "json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(?) ORDER BY key")


# what `record` takes: the delivery, its ids, the ids recorded and those looked up within MERGE_WINDOW
Recording = tuple[Delivery, Iterable[str], Iterable[str], Iterable[str]]


@dataclass
class _Pending:
    """A delivery of a transaction being written, and the key it repeats (None: new)."""

    delivery: Delivery
    ids: list[str]
    cross_ids: list[str]
    cross_lookup: list[str]
    found: str | None = None


@contextmanager
def _private_umask() -> Iterator[None]:
    """Files SQLite creates meanwhile (the db, -wal, -shm, journals) are 0600 from birth."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


class DeliveryStore:
    """Thread-safe access to the deliveries database.

    One writer connection guarded by a lock, one reader connection (WAL: reads never wait for a write's
    fsync), so `/healthz` and listings stay fast while deliveries are being recorded. With `shared`
    (several processes write: `serve --workers N`), a write also holds an flock on `<db>-writer`: SQLite's
    own busy handler would sleep 1, 2, 5, 10... ms between tries, the flock hands over at once.
    """

    def __init__(self, path: str | os.PathLike[str], *, shared: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self.transactions = 0  # those `record_many` made (deliveries per fsync = deliveries / this)
        with _private_umask():
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                       timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._db.executescript(SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(deliveries)")}
            for column, kind in ADDED_COLUMNS.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE deliveries ADD COLUMN {column} {kind}")
            self._reader = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                           timeout=10)
            self._reader.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._reader.execute("SELECT 1 FROM deliveries LIMIT 1").fetchall()  # opens -wal/-shm now
        self._writer_fd: int | None = None
        if shared:
            self._writer_fd = os.open(f"{self.path}-writer", os.O_RDWR | os.O_CREAT, 0o600)
        for suffix in ("", "-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                os.chmod(side, 0o600)

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()
            if self._writer_fd is not None:
                os.close(self._writer_fd)
                self._writer_fd = None

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The writer connection, this process's only (and with `shared`, all processes' only) writer."""
        with self._lock:
            fd = self._writer_fd
            if fd is None:
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    # ------------------------------------------------------------ recording

    def add(self, delivery: Delivery) -> bool:
        """Record a delivery known by its key only; False when that key was already recorded."""
        return self.record(delivery) is None

    def record(self, delivery: Delivery, ids: Iterable[str] = (), cross_ids: Iterable[str] = (),
               cross_lookup: Iterable[str] = ()) -> str | None:
        """Record a delivery durably, unless one of its ids was seen before.

        `ids` identify this delivery forever (keys, UUID, body hash); `cross_ids` are recorded for it and
        `cross_lookup` are looked up only within MERGE_WINDOW (a merge event and its merge commit's push).
        Returns None when recorded, else the key of the delivery it duplicates (its ids are added to it).
        """
        return self.record_many([(delivery, ids, cross_ids, cross_lookup)])[0]

    def record_many(self, recordings: Iterable[Recording]) -> list[str | None]:
        """`record` for each of `recordings` (in order), in one transaction: one fsync for all of them (the
        receiver's group commit, commits.py). An error (a disk full) is raised for all: none was recorded."""
        batch = [_Pending(delivery, [delivery.key, *ids], list(cross), list(lookup))
                 for delivery, ids, cross, lookup in recordings]
        with self._writing():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._record_batch(batch)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.transactions += 1
        return [item.found for item in batch]

    def _record_batch(self, batch: list[_Pending]) -> None:
        """Four statements however many deliveries the batch holds (each SQLite call hands the GIL over
        and waits to get it back): look up every id and key at once, decide in order (a delivery may
        repeat an earlier one of the same batch), insert the new rows, insert all the ids."""
        now = time.time()
        wanted = sorted({i for item in batch for i in item.ids + item.cross_lookup})
        found_ids = self._db.execute(_FIND_IDS, (json.dumps(wanted),))
        known: dict[str, tuple[str, float]] = {str(id_): (str(key), float(at)) for id_, key, at in found_ids}
        keys = sorted({item.delivery.key for item in batch})
        stored = {str(row[0]) for row in self._db.execute(_FIND_KEYS, (json.dumps(keys),))}
        rows: list[Any] = []
        id_rows: list[Any] = []
        for item in batch:
            key = item.delivery.key
            item.found = (next((known[i][0] for i in item.ids if i in known), None)
                          or next((known[i][0] for i in item.cross_lookup
                                   if i in known and known[i][1] >= now - MERGE_WINDOW), None)
                          or (key if key in stored else None))
            if item.found is None:
                row = {**item.delivery.as_dict(), "updated_at": now}
                rows.append([row[c] for c in _COLUMNS])
                stored.add(key)
            owner = item.found or key
            for i in item.ids + item.cross_ids:
                known.setdefault(i, (owner, now))  # INSERT OR IGNORE: an id keeps its first owner
                id_rows.append((i, owner, now))
        if rows:
            self._db.execute(_INSERT_ROWS, (json.dumps(rows),))
        self._db.execute(_INSERT_IDS, (json.dumps(id_rows),))

    # ------------------------------------------------------------ reading

    def get(self, key: str) -> Delivery | None:
        with self._read_lock:
            row = self._reader.execute(f"{_SELECT} WHERE key = ?", (key,)).fetchone()
        return Delivery(*row) if row else None

    def count(self, status: str) -> int:
        with self._read_lock:
            row = self._reader.execute("SELECT COUNT(*) FROM deliveries WHERE status = ?",
                                       (status,)).fetchone()
        return int(row[0])

    def recent(self, limit: int = 100) -> list[Delivery]:
        """The newest deliveries first."""
        with self._read_lock:
            rows = self._reader.execute(f"{_SELECT} ORDER BY received_at DESC, rowid DESC LIMIT ?",
                                        (limit,)).fetchall()
        return [Delivery(*row) for row in rows]

    def in_status(self, *statuses: str) -> list[Delivery]:
        """Deliveries in these states, oldest first."""
        with self._read_lock:
            rows = self._reader.execute(
                f"{_SELECT} WHERE status IN ({', '.join('?' for _ in statuses)}) ORDER BY received_at, rowid",
                statuses).fetchall()
        return [Delivery(*row) for row in rows]

    def has_newer(self, delivery: Delivery) -> bool:
        """Whether a newer delivery of the same branch waits (it will supersede this one)."""
        with self._read_lock:
            row = self._reader.execute(
                "SELECT 1 FROM deliveries WHERE branch IS ? AND status IN (?, ?) AND received_at > ? "
                "AND key != ? LIMIT 1",
                (delivery.branch, *WAITING, delivery.received_at, delivery.key)).fetchone()
        return row is not None

    # ------------------------------------------------------------ working

    def claim_next(self, coalesce: bool = False) -> Delivery | None:
        """The oldest waiting delivery, marked running (attempts + 1); None when nothing waits.

        With `coalesce`, the older waiting deliveries of that branch are marked superseded and the newest
        one is claimed instead.
        """
        with self._writing():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(f"{_SELECT} WHERE status IN (?, ?) ORDER BY received_at, rowid "
                                       "LIMIT 1", WAITING).fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return None
                claimed = Delivery(*row)
                now = time.time()
                if coalesce:
                    newest = Delivery(*self._db.execute(
                        f"{_SELECT} WHERE status IN (?, ?) AND branch IS ? ORDER BY received_at DESC, "
                        "rowid DESC LIMIT 1", (*WAITING, claimed.branch)).fetchone())
                    if newest.key != claimed.key:
                        self._db.execute(
                            "UPDATE deliveries SET status = ?, outcome = ?, updated_at = ? WHERE status IN "
                            "(?, ?) AND branch IS ? AND key != ?",
                            (SUPERSEDED, f"superseded by {newest.key} ({(newest.sha or '')[:12]})", now,
                             *WAITING, claimed.branch, newest.key))
                        claimed = newest
                self._db.execute("UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ?, "
                                 "started_at = ?, pid = NULL WHERE key = ?", (RUNNING, now, now, claimed.key))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Delivery(**{**claimed.as_dict(), "status": RUNNING, "attempts": claimed.attempts + 1,
                           "updated_at": now, "started_at": now, "pid": None})

    def begin_attempt(self, key: str) -> Delivery:
        """Record that another attempt is about to be made (in flight from now on)."""
        now = time.time()
        with self._writing():
            self._db.execute("UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ?, "
                             "started_at = ?, pid = NULL WHERE key = ?", (RUNNING, now, now, key))
        got = self.get(key)
        assert got is not None
        return got

    def requeue_interrupted(self) -> int:
        """Deliveries left `running` by a crash go back to `pending`; returns how many."""
        with self._writing():
            cursor = self._db.execute("UPDATE deliveries SET status = ?, outcome = ?, updated_at = ? "
                                      "WHERE status = ?",
                                      (PENDING, "interrupted by a restart; run again", time.time(), RUNNING))
            return cursor.rowcount

    def set_pid(self, key: str, pid: int | None) -> None:
        """Record the process (group) a local action runs in, so a restart can adopt it."""
        with self._writing():
            self._db.execute("UPDATE deliveries SET pid = ?, updated_at = ? WHERE key = ?",
                             (pid, time.time(), key))

    def finish(self, key: str, status: str, outcome: str) -> None:
        """Record the outcome of a delivery (or of its last attempt, for `retry`)."""
        with self._writing():
            self._db.execute("UPDATE deliveries SET status = ?, outcome = ?, updated_at = ? WHERE key = ?",
                             (status, outcome, time.time(), key))

    def requeue(self, key: str) -> Delivery:
        """`ps webhook retry`: a dead, failed or superseded delivery waits again with a fresh retry budget."""
        with self._writing():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(f"{_SELECT} WHERE key = ?", (key,)).fetchone()
                if row is None:
                    raise KeyError(key)
                delivery = Delivery(*row)
                if delivery.status not in RETRIABLE_BY_HAND:
                    raise ValueError(delivery.status)
                self._db.execute("UPDATE deliveries SET status = ?, attempts = 0, outcome = ?, "
                                 "updated_at = ? WHERE key = ?",
                                 (PENDING, f"re-triggered by hand (was {delivery.status})", time.time(), key))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        got = self.get(key)
        assert got is not None
        return got


def default_db_path() -> Path:
    """$XDG_STATE_HOME/pipeline-steps/webhook/deliveries.sqlite3 (~/.local/state by default)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pipeline-steps" / "webhook" / "deliveries.sqlite3"
