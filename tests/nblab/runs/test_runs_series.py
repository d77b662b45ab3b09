"""Metric chunks (nblab.runs.series): what goes in comes back, in order, through merges,
rewinds and the migration of the one-row-per-value table."""

import math
import sqlite3

import numpy as np
import pytest

from nblab.runs import RunStore, series
from nblab.runs.schema import migrate

RECIPE = 'name = "a"\n'


@pytest.fixture
def rs(tmp_path):
    return RunStore(tmp_path)


def chunk_sizes(rs, run_id):
    return rs._read("SELECT key, n FROM metric_chunks WHERE run_id = ? ORDER BY rowid", [run_id])


def test_every_flush_writes_one_chunk_per_key_and_close_merges_them(rs):
    run_id = rs.create_run("a", RECIPE)
    w = rs.writer(run_id, flush_every=None)
    for step in range(1, 7):
        w.log_metrics(step, {"loss": 1.0 / step, "lr": 0.1})
        if step % 2 == 0:
            w.log_metrics(step, {"val_loss": 2.0 / step})
            w.flush()
    assert chunk_sizes(rs, run_id) == [("loss", 2), ("lr", 2), ("val_loss", 1)] * 3
    w.close()
    assert chunk_sizes(rs, run_id) == [("loss", 6), ("lr", 6), ("val_loss", 3)]
    df = rs.metrics(run_id)
    # by step, and a step's keys in the order they were logged
    assert df[["step", "key"]].values.tolist()[:5] == [
        [1, "loss"],
        [1, "lr"],
        [2, "loss"],
        [2, "lr"],
        [2, "val_loss"],
    ]
    assert df[df.key == "loss"].value.tolist() == [1.0 / s for s in range(1, 7)]


def test_small_chunks_merge_while_the_run_goes_on_and_nothing_is_lost(rs, monkeypatch):
    monkeypatch.setattr(series, "MERGE_AT", 6)
    monkeypatch.setattr(series, "BIG", 8)
    run_id = rs.create_run("a", RECIPE)
    w = rs.writer(run_id, flush_every=None)
    for step in range(40):
        w.log_metrics(step, {"loss": float(step), "lr": -float(step)})
        w.flush()
    sizes = [n for _, n in chunk_sizes(rs, run_id)]
    assert max(sizes) < 8 + 6 and sum(sizes) == 80
    assert sum(1 for n in sizes if n < 8) < 6  # merged before they piled up
    got = rs.series(run_id)
    assert got[run_id]["loss"].step.tolist() == list(range(40))
    assert got[run_id]["lr"].value.tolist() == [-float(s) for s in range(40)]
    assert rs.metrics(run_id).step.tolist() == sorted(list(range(40)) * 2)


def test_series_since_step_and_keys(rs):
    run_id = rs.create_run("a", RECIPE)
    with rs.writer(run_id, flush_every=None) as w:
        for step in range(10):
            w.log_metrics(step, {"loss": float(step), "lr": 0.5})
    late = rs.series(run_id, keys="loss", since_step=np.int64(6))
    assert list(late) == [run_id] and list(late[run_id]) == ["loss"]
    assert late[run_id]["loss"].step.tolist() == [7, 8, 9]
    assert late[run_id]["loss"].value.dtype == np.float64
    assert rs.series(run_id, since_step=9) == {}
    with pytest.raises(KeyError, match="nope"):
        rs.series([run_id, "nope"])


def test_values_logged_out_of_step_order_read_back_in_step_order(rs):
    run_id = rs.create_run("a", RECIPE)
    with rs.writer(run_id, flush_every=None) as w:
        for step in (3, 1, 2):
            w.log_metrics(step, {"loss": float(step)})
    assert rs.series(run_id)[run_id]["loss"].step.tolist() == [1, 2, 3]
    assert rs.metrics(run_id).value.tolist() == [1.0, 2.0, 3.0]


def test_rewind_cuts_a_chunk_that_straddles_the_step_and_drops_later_ones(rs):
    run_id = rs.create_run("a", RECIPE)
    w = rs.writer(run_id, flush_every=None)
    for step in range(1, 11):
        w.log_metrics(step, {"loss": float(step), "lr": 1.0})
        if step in (4, 8):
            w.flush()
    w.close()  # merged: one chunk per key, steps 1-10
    rs.rewind(run_id, 5)
    assert rs.metrics(run_id, keys="loss").step.tolist() == [1, 2, 3, 4, 5]
    with rs.writer(run_id, flush_every=None) as w:
        w.log_metrics(6, {"loss": 60.0, "lr": 2.0})
    df = rs.metrics(run_id)
    assert df.step.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert df[df.step == 6].value.tolist() == [60.0, 2.0]


def test_metrics_of_several_runs_are_ordered_by_run_id_then_step(rs):
    b, a = rs.create_run("b", RECIPE), rs.create_run("a", RECIPE)
    for run_id in (b, a):
        with rs.writer(run_id, flush_every=None) as w:
            for step in range(3):
                w.log_metrics(step, {"loss": float(step)})
    df = rs.metrics([b, a])
    first, second = sorted([a, b])
    assert df.run_id.tolist() == [first] * 3 + [second] * 3
    assert df.step.tolist() == [0, 1, 2, 0, 1, 2]


def test_the_one_row_per_value_table_of_version_5_becomes_chunks(tmp_path):
    path = tmp_path / "nblab.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=5)
    for run_id in ("r1", "r2"):
        conn.execute(
            "INSERT INTO runs (run_id, name, recipe, status, created) "
            f"VALUES ('{run_id}', 'old', 'x = 1', 'succeeded', 1.0)"
        )
    rows = [("r1", s, k, v, 10.0 + s) for s in range(4) for k, v in (("loss", s / 2), ("lr", 1.0))]
    rows += [("r2", 0, "loss", None, 3.0), ("r1", 1, "val_loss", 9.0, 99.0)]
    conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
    conn.close()

    rs = RunStore(tmp_path)
    tables = {r[0] for r in rs._read("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "metrics" not in tables and "metric_chunks" in tables
    df = rs.metrics(["r1", "r2"])
    assert len(df) == len(rows)
    r1 = df[df.run_id == "r1"]
    assert r1[r1.step == 1][["key", "value", "time"]].values.tolist() == [
        ["loss", 0.5, 11.0],
        ["lr", 1.0, 11.0],
        ["val_loss", 9.0, 99.0],
    ]
    assert math.isnan(df[df.run_id == "r2"].value.iloc[0])  # NULL was a NaN
