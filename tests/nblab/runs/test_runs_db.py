"""Lock contention: writers wait for the lock or retry, and never drop a batch."""

import sqlite3
import threading
import time

import pytest

from nblab.runs import RunStore, db


def locked_error() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = sqlite3.SQLITE_BUSY
    return error


def test_retry_repeats_busy_errors_until_the_attempt_succeeds():
    failures = [locked_error(), locked_error()]

    def attempt():
        if failures:
            raise failures.pop()
        return "done"

    assert db.retry(attempt) == "done"
    assert failures == []


def test_retry_passes_other_errors_through_at_once():
    calls = []

    def attempt():
        calls.append(1)
        raise sqlite3.OperationalError("no such table: nope")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        db.retry(attempt)
    assert len(calls) == 1


def test_a_flush_waits_for_another_connection_holding_the_write_lock(tmp_path):
    rs = RunStore(tmp_path)
    run_id = rs.create_run("a", "x = 1")
    w = rs.writer(run_id, flush_every=None)
    w.log_metrics(0, {"loss": 1.0})
    holder = sqlite3.connect(rs.db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    w.flush()
    assert time.monotonic() - started >= 0.25
    release.join()
    assert rs.metrics(run_id).value.tolist() == [1.0]
