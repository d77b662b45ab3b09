"""SQLite connections for the run store: WAL, busy timeout, retry on lock contention.

Many processes write the same database at once (one per training job), so every
write is a short IMMEDIATE transaction: it takes the write lock up front, which makes
SQLite's busy handler wait for it instead of failing mid-transaction. What still comes
back as "database is locked" is retried here with jittered exponential backoff.
"""

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from nblab.runs.schema import migrate

BUSY_TIMEOUT_S = 30.0  # how long SQLite itself waits for a lock
RETRY_FOR_S = 120.0  # how long we keep retrying after SQLite gave up

T = TypeVar("T")

_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


# A write the disk had no room for: SQLITE_FULL (ENOSPC, a write cut short by a file size
# limit), or SQLITE_IOERR_WRITE (a write refused outright, e.g. EFBIG at the limit).
_FULL_NAMES = ("SQLITE_FULL", "SQLITE_IOERR_WRITE")


class StoreFullError(OSError):
    """The run store could not be written because the disk (or a file size limit) had
    no room. The transaction rolled back: the database holds what it held before."""


def _full(conn: sqlite3.Connection, error: sqlite3.OperationalError) -> StoreFullError:
    try:
        path = conn.execute("PRAGMA database_list").fetchone()[2]
    except sqlite3.Error:
        path = "the run store's database"
    name = getattr(error, "sqlite_errorname", "")
    return StoreFullError(
        f"the run store {path} could not be written: the disk is full or a file size "
        f"limit was reached ({name}: {error}). The write was rolled back and the database "
        "is intact; free space, then resume the run (nblab run --resume RUN_ID)"
    )


def _is_busy(error: sqlite3.OperationalError) -> bool:
    # Extended result codes keep the primary code in the low byte.
    return (getattr(error, "sqlite_errorcode", 0) & 0xFF) in _BUSY_CODES


def retry(attempt: Callable[[], T]) -> T:
    """Call `attempt` until it does not fail with a busy/locked error, or time runs out."""
    deadline = time.monotonic() + RETRY_FOR_S
    delay = 0.005
    while True:
        try:
            return attempt()
        except sqlite3.OperationalError as error:
            if not _is_busy(error) or time.monotonic() > deadline:
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: writers must not retry in step
        delay = min(delay * 2, 0.5)


def connect(path: Path) -> sqlite3.Connection:
    """Open `path` in autocommit mode with WAL on and the schema migrated."""

    def attempt() -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            # WAL lets readers read while one writer writes. synchronous=NORMAL keeps
            # every committed batch across a process crash (only power loss can drop
            # the last few), at a fraction of FULL's fsyncs.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    return retry(attempt)


def write(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """Run `body(conn)` in one IMMEDIATE transaction: all of it commits, or none of it."""

    def attempt() -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    try:
        return retry(attempt)
    except sqlite3.OperationalError as error:
        if getattr(error, "sqlite_errorname", "") in _FULL_NAMES:
            raise _full(conn, error) from error
        raise
