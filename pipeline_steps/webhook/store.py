"""Deliveries kept durably in SQLite (WAL, synchronous=FULL: a commit is fsync'd before we answer).

States: `pending` (accepted, not run yet) -> `running` -> `done` | `failed`; `ignored` for events we do not
act on. A delivery key is unique, so a replay is recognised and never acted on twice. A delivery found
`running` at start was interrupted by a crash and goes back to `pending` (the actions are idempotent).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, fields
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
"""

PENDING, RUNNING, DONE, FAILED, IGNORED = "pending", "running", "done", "failed", "ignored"


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS = tuple(f.name for f in fields(Delivery))  # the SELECT order Delivery(*row) reads back


class DeliveryStore:
    """Thread-safe access to the deliveries database (one connection guarded by a lock)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                   timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        os.chmod(self.path, 0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, delivery: Delivery) -> bool:
        """Record a delivery durably; False when its key was already recorded (a replay)."""
        now = time.time()
        row = {**delivery.as_dict(), "updated_at": now}
        with self._lock:
            cursor = self._db.execute(
                f"INSERT OR IGNORE INTO deliveries ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _COLUMNS)})", [row[c] for c in _COLUMNS])
            return cursor.rowcount == 1

    def get(self, key: str) -> Delivery | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM deliveries WHERE key = ?",
                                   (key,)).fetchone()
        return Delivery(*row) if row else None

    def claim_next(self) -> Delivery | None:
        """The oldest pending delivery, marked running (attempts + 1); None when nothing waits."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    f"SELECT {', '.join(_COLUMNS)} FROM deliveries WHERE status = ? "
                    "ORDER BY received_at, rowid LIMIT 1", (PENDING,)).fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return None
                claimed = Delivery(*row)
                now = time.time()
                self._db.execute("UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ? "
                                 "WHERE key = ?", (RUNNING, now, claimed.key))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Delivery(**{**claimed.as_dict(), "status": RUNNING, "attempts": claimed.attempts + 1,
                           "updated_at": now})

    def finish(self, key: str, status: str, outcome: str) -> None:
        """Record the outcome of a delivery that ran."""
        with self._lock:
            self._db.execute("UPDATE deliveries SET status = ?, outcome = ?, updated_at = ? WHERE key = ?",
                             (status, outcome, time.time(), key))

    def requeue_interrupted(self) -> int:
        """Deliveries left `running` by a crash go back to `pending`; returns how many."""
        with self._lock:
            cursor = self._db.execute("UPDATE deliveries SET status = ?, outcome = ?, updated_at = ? "
                                      "WHERE status = ?",
                                      (PENDING, "interrupted by a restart; run again", time.time(), RUNNING))
            return cursor.rowcount

    def count(self, status: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM deliveries WHERE status = ?", (status,)).fetchone()
        return int(row[0])

    def recent(self, limit: int = 100) -> list[Delivery]:
        """The newest deliveries first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM deliveries "
                                    "ORDER BY received_at DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
        return [Delivery(*row) for row in rows]


def default_db_path() -> Path:
    """$XDG_STATE_HOME/pipeline-steps/webhook/deliveries.sqlite3 (~/.local/state by default)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pipeline-steps" / "webhook" / "deliveries.sqlite3"
