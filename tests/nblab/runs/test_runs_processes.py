"""The run store across processes: concurrent writers, killed writers, atomic batches."""

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nblab.runs import RunStore

WORKER = Path(__file__).with_name("runs_worker.py")
RECIPE = 'name = "tiny"\n'


def start(rs: RunStore, run_id: str, batches: int, batch_size: int, mode: str):
    """Start a worker writing `batches` flushes of `batch_size` metric rows to `run_id`."""
    args = [sys.executable, str(WORKER), str(rs.home), run_id, str(batches), str(batch_size), mode]
    return subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # reap it, as a launcher holding the handle would


def go(procs) -> None:
    """Wait until every worker has its writer open, then release them all at once."""
    for proc in procs:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()


def test_eight_processes_write_concurrently_and_no_row_is_lost(tmp_path):
    rs = RunStore(tmp_path)
    run_ids = [rs.create_run(f"w{i}", RECIPE, sweep="load") for i in range(8)]
    procs = [start(rs, run_id, 100, 50, "close") for run_id in run_ids]  # 5,000 rows each
    go(procs)
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert err == ""
    df = rs.metrics(run_ids)
    assert len(df) == 40_000
    assert df.groupby("run_id").size().to_dict() == dict.fromkeys(run_ids, 5_000)
    assert not df.duplicated(["run_id", "step", "key"]).any()
    assert rs.runs(sweep="load").status.tolist() == ["succeeded"] * 8


def test_a_killed_writer_keeps_its_flushed_rows_and_its_run_turns_failed(tmp_path):
    rs = RunStore(tmp_path)
    run_id = rs.create_run("victim", RECIPE)
    proc = start(rs, run_id, 3, 10, "hang")
    assert proc.stdout.readline() == "flushed\n", proc.stderr.read()
    assert rs.run(run_id)["status"] == "running"  # alive and asleep
    kill(proc)
    run = rs.run(run_id)
    assert run["status"] == "failed"
    assert f"process {proc.pid}" in run["error"] and "exited without closing" in run["error"]
    df = rs.metrics(run_id)
    assert len(df) == 30
    assert sorted(set(df.step)) == [0, 1, 2]
    # The store is still writable by others.
    with rs.writer(rs.create_run("next", RECIPE)) as w:
        w.log_metrics(0, {"loss": 1.0})
    assert rs.runs().status.tolist() == ["failed", "succeeded"]


def test_a_writer_killed_mid_stream_leaves_whole_batches_and_a_sound_database(tmp_path):
    rs = RunStore(tmp_path)
    run_id = rs.create_run("victim", RECIPE)
    proc = start(rs, run_id, 100_000, 13, "close")
    go([proc])
    while len(rs.metrics(run_id)) < 13 * 20:
        assert proc.poll() is None, proc.stderr.read()
    kill(proc)
    assert len(rs.metrics(run_id)) % 13 == 0
    assert rs.run(run_id)["status"] == "failed"
    with sqlite3.connect(rs.db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_reader_never_sees_part_of_a_batch(tmp_path):
    rs = RunStore(tmp_path)
    run_id = rs.create_run("stream", RECIPE)
    batch = 7
    proc = start(rs, run_id, 600, batch, "close")
    go([proc])
    seen = []
    while proc.poll() is None:
        seen.append(len(rs.metrics(run_id)))
    assert proc.wait() == 0, proc.stderr.read()
    seen.append(len(rs.metrics(run_id)))
    assert [n for n in seen if n % batch] == []
    assert seen[-1] == 600 * batch
    # The reader really ran alongside the writer, between batches.
    assert len({n for n in seen if 0 < n < 600 * batch}) >= 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(tmp_path):
    rs = RunStore(tmp_path)
    parent_conn = rs._conn()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            own = rs._conn() is not parent_conn
            rs.create_run("from child", RECIPE)
            code = 0 if own else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert rs.runs().name.tolist() == ["from child"]
    assert rs._conn() is parent_conn
