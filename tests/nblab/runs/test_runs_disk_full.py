"""A store write the disk has no room for (issue 17 section 6).

The disk fills up under a training run: `nblab run` runs with a file size limit
(RLIMIT_FSIZE, SIGXFSZ ignored, so a write past it is cut short or refused as on a full
disk; no root or mount needed). The store's write-ahead log reaches the limit after a
few dozen steps. The run must end `failed` with a message that says the disk is full,
and the database must stay sound: it passes SQLite's integrity check, keeps every step
written before, and takes new writes once there is room. About 10 s on 2 cores.
"""

import os
import resource
import signal
import sqlite3
import subprocess
import sys

from nblab.runs import RunStore
from nblab.runs.db import StoreFullError

LIMIT = 512 * 1024  # bytes per file: the database and its WAL start well below it
SETS = ["train.steps=2000", "eval.interval=0", "metrics.log_interval=1"]


def limit_file_size() -> None:  # preexec_fn of the run's process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_a_full_disk_fails_the_run_clearly_and_the_database_stays_sound(tmp_path):
    home = tmp_path / "home"
    store = RunStore(home)
    other = store.create_run("other", 'name = "other"\n')  # a run the failure must not touch
    store.close()
    args = ["run", "gpt-debug", *(a for s in SETS for a in ("--set", s))]
    proc = subprocess.run(
        [sys.executable, "-m", "nblab.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NBLAB_HOME": str(home), "OMP_NUM_THREADS": "1"},
        preexec_fn=limit_file_size,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "disk is full" in output  # the user sees why

    with sqlite3.connect(home / "nblab.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    store = RunStore(home)
    runs = store.runs().set_index("name")
    run = runs.loc["gpt-debug"]
    assert run.status == "failed"
    assert run.error.startswith("StoreFullError: the run store ")
    assert "disk is full" in run.error and "nblab run --resume" in run.error
    # every step written before the disk filled up, each once, none after the last
    loss = store.metrics(run.run_id, keys=["loss"])
    steps = loss.step.tolist()
    assert len(steps) > 5 and steps == list(range(1, len(steps) + 1))
    assert run.step == steps[-1] < 2000
    assert runs.loc["other"].status == "queued" and runs.loc["other"].run_id == other
    # with room again the store takes writes
    writer = store.writer(store.create_run("after", 'name = "after"\n'), flush_every=None)
    writer.log_metrics(1, {"loss": 1.0})
    writer.close()
    assert store.run(writer.run_id)["status"] == "succeeded"


def test_the_error_names_the_database_and_rolls_back(tmp_path):
    """In this process: a write past the limit raises StoreFullError, naming the file,
    and leaves the run as it was; the run's end still fits (a one-row update)."""
    store = RunStore(tmp_path)
    run_id = store.create_run("r", 'name = "r"\n')
    writer = store.writer(run_id, flush_every=None)
    writer.log_metrics(1, {"loss": 2.0})
    writer.flush()
    size = (tmp_path / "nblab.db-wal").stat().st_size
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 16384, old[1]))  # room for 3 pages
    try:
        for step in range(2, 200):
            writer.log_metrics(step, {"loss": 1.0, "x" * 2000: 1.0})  # a page per row
        try:
            writer.flush()
            raise AssertionError("the write past the size limit succeeded")
        except StoreFullError as err:
            assert str(tmp_path / "nblab.db") in str(err) and "disk is full" in str(err)
        writer.close("failed", error="the disk is full")  # drops what did not fit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    assert store.run(run_id)["status"] == "failed"
    assert store.metrics(run_id).step.tolist() == [1]  # the failed write left nothing
