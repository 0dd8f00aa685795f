"""The workers of one instance, sharing state without Redis: a SQLite file only they use.

`server.state.backend: memory` kept everything per process, so `rvr-proxy serve --workers 4`
without Redis let a key spend four times its limit (each worker admitted up to it) and learned
four times apart (only the worker that ran a route's probes adapted its n). With more than one
worker, `rvr-proxy serve` now gives them one SQLite file in the instance's private directory
(removed on exit), and each worker's `memory` state is this: every check-and-add is one
`BEGIN IMMEDIATE` transaction, so the workers agree exactly, as one process would. Instances on
other hosts still need Redis.

The data lives only as long as the instance, so the file trades durability for speed (WAL,
`synchronous=OFF`): a transaction takes tens of microseconds, short enough to run on the event
loop, and a worker waits at most `BUSY_TIMEOUT_S` for another's.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from proxy.state.base import Counter, SharedState

LOCAL_STATE_ENV = "RVR_LOCAL_STATE"  # set by `rvr-proxy serve --workers N`: the file its workers share
BUSY_TIMEOUT_S = 2.0
SWEEP_EVERY = 1000  # counter writes between deletions of windows that ended

SCHEMA = """
CREATE TABLE IF NOT EXISTS json (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS totals (key TEXT, field TEXT, value REAL NOT NULL, PRIMARY KEY (key, field));
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires REAL NOT NULL);
"""


class LocalState(SharedState):
    """Shared by the processes that open the same file; see the module docstring."""

    shared = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._writes = 0

    async def start(self) -> None:
        await super().start()
        self._connection()

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            with _transaction(db):
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
            self._db = db
        return self._db

    async def get_json(self, key: str) -> Any:
        row = self._connection().execute("SELECT value FROM json WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    async def put_json(self, key: str, value: Any) -> None:
        db = self._connection()
        with _transaction(db):
            db.execute("INSERT INTO json VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                       (key, json.dumps(value)))

    async def add_totals(self, key: str, deltas: Mapping[str, float]) -> dict[str, float]:
        db = self._connection()
        with _transaction(db):
            db.executemany(
                "INSERT INTO totals VALUES (?, ?, ?) ON CONFLICT (key, field) DO UPDATE SET value = value + excluded.value",
                [(key, field, float(delta)) for field, delta in deltas.items()],
            )
            rows = db.execute("SELECT field, value FROM totals WHERE key = ?", (key,)).fetchall()
        return {field: value for field, value in rows}

    async def admit(self, counters: Sequence[Counter]) -> Counter | None:
        db = self._connection()
        with _transaction(db):
            now = time.time()
            for counter in counters:
                if _value(db, counter.key, now) + max(counter.amount, 1) > counter.limit:
                    return counter
            self._add(db, counters, now)
        return None

    async def add(self, counters: Sequence[Counter]) -> None:
        db = self._connection()
        with _transaction(db):
            self._add(db, counters, time.time())

    def _add(self, db: sqlite3.Connection, counters: Sequence[Counter], now: float) -> None:
        for counter in counters:
            if counter.amount:
                # A settled reservation gives back what it held; a window never counts below 0.
                value = max(0, _value(db, counter.key, now) + counter.amount)
                db.execute(
                    "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
                    "SET value = excluded.value, expires = excluded.expires",
                    (counter.key, value, now + counter.ttl_s),
                )
                self._writes += 1
        if self._writes >= SWEEP_EVERY:  # windows of keys that went quiet
            self._writes = 0
            db.execute("DELETE FROM counters WHERE expires <= ?", (now,))


def _value(db: sqlite3.Connection, key: str, now: float) -> int:
    row = db.execute("SELECT value, expires FROM counters WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row is not None and row[1] > now else 0


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: taken at once (`IMMEDIATE`), so a read-then-write is atomic."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
