"""RunStore and RunWriter in one process: round trips, filters, validation, liveness."""

import json
import math
import os
import pickle
import re
import sqlite3
import time

import numpy as np
import pandas as pd
import pytest
import torch

from nblab.runs import RunStore, store

RECIPE = 'name = "tiny"\n[precision]\npreset = "nvfp4"\n'


@pytest.fixture
def rs(tmp_path):
    return RunStore(tmp_path)


def raw(rs: RunStore, sql: str, params=()):
    """Read the database behind the store's back, to check what was persisted."""
    with sqlite3.connect(rs.db_path) as conn:
        return conn.execute(sql, params).fetchall()


def test_create_run_registers_a_queued_run_with_its_folder_and_recipe(rs):
    run_id = rs.create_run("tiny", RECIPE, sweep="s1", steps=100)
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run_id)
    run = rs.run(run_id)
    assert (run["name"], run["sweep"], run["status"], run["steps"]) == ("tiny", "s1", "queued", 100)
    assert run["recipe"] == RECIPE
    assert rs.run_dir(run_id).is_dir()
    assert (rs.run_dir(run_id) / "recipe.toml").read_text() == RECIPE


def test_home_defaults_to_the_NBLAB_HOME_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path / "lab"))
    assert RunStore().db_path == tmp_path / "lab" / "nblab.db"
    assert (tmp_path / "lab" / "nblab.db").exists()
    assert raw(RunStore(), "PRAGMA journal_mode") == [("wal",)]


def test_run_ids_are_unique_and_a_collision_draws_again(rs, monkeypatch):
    ids = [rs.create_run(f"r{i}", RECIPE) for i in range(50)]
    assert len(set(ids)) == 50
    drawn = iter(["20260101-000000-aaaa", "20260101-000000-aaaa", "20260101-000000-bbbb"])
    monkeypatch.setattr(store, "_new_run_id", lambda now: next(drawn))
    assert rs.create_run("a", RECIPE) == "20260101-000000-aaaa"
    assert rs.create_run("b", RECIPE) == "20260101-000000-bbbb"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "", "recipe": RECIPE}, "name must be a non-empty string"),
        ({"name": "a", "recipe": "x = = 1"}, "recipe is not valid TOML"),
        ({"name": "a", "recipe": RECIPE, "sweep": ""}, "sweep must be None or"),
        ({"name": "a", "recipe": RECIPE, "steps": -5}, "got -5"),
    ],
)
def test_create_run_names_the_bad_argument(rs, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        rs.create_run(**kwargs)
    assert rs.runs().empty


def test_run_dir_rejects_ids_that_would_leave_the_runs_folder(rs):
    with pytest.raises(ValueError, match=re.escape("'../etc'")):
        rs.run_dir("../etc")


def test_set_status_rejects_an_unknown_status_naming_the_allowed_ones(rs):
    run_id = rs.create_run("a", RECIPE)
    with pytest.raises(ValueError, match="'done'.*queued, running, succeeded, failed"):
        rs.set_status(run_id, "done")
    assert rs.run(run_id)["status"] == "queued"


def test_unknown_run_ids_raise_key_errors_naming_them(rs):
    known = rs.create_run("a", RECIPE)
    with pytest.raises(KeyError, match="nope"):
        rs.set_status("nope", "running")
    with pytest.raises(KeyError, match="nope"):
        rs.run("nope")
    with pytest.raises(KeyError, match="nope"):
        rs.writer("nope")
    with pytest.raises(KeyError, match="'nope2'") as info:
        rs.metrics([known, "nope2"])
    assert known not in str(info.value)


def test_set_status_records_pid_host_and_times(rs):
    run_id = rs.create_run("a", RECIPE)
    rs.set_status(run_id, "running", pid=os.getpid())
    running = rs.run(run_id)
    assert (running["pid"], running["status"], running["ended"]) == (os.getpid(), "running", None)
    assert running["started"] >= running["created"]
    rs.set_status(run_id, "diverged", error="loss is nan at step 3")
    ended = rs.run(run_id)
    assert (ended["status"], ended["error"]) == ("diverged", "loss is nan at step 3")
    assert ended["ended"] >= running["started"]


def test_metrics_round_trip_with_numpy_torch_and_nan_values(rs):
    run_id = rs.create_run("a", RECIPE)
    with rs.writer(run_id, flush_every=None) as w:
        w.log_metrics(0, {"loss": 2.5, "lr": np.float32(0.5)})
        w.log_metrics(np.int64(1), {"loss": torch.tensor(1.25), "grad_norm": float("nan")})
    df = rs.metrics(run_id)
    assert list(df.columns) == ["run_id", "step", "key", "value", "time"]
    assert df[["step", "key"]].values.tolist() == [
        [0, "loss"],
        [0, "lr"],
        [1, "loss"],
        [1, "grad_norm"],
    ]
    assert df.value.tolist()[:3] == [2.5, 0.5, 1.25]
    assert math.isnan(df.value.iloc[3])
    assert (df.run_id == run_id).all()
    assert rs.run(run_id)["step"] == 1  # progress follows the furthest flushed step


def test_stats_round_trip_and_filters(rs):
    run_id = rs.create_run("a", RECIPE)
    with rs.writer(run_id) as w:
        for step in (0, 10):
            w.log_stats(step, "layers.0.mlp", "weight", 31.5, 0.001, 0.0)
            w.log_stats(step, "layers.0.mlp", "grad", 12.0, 0.02, 0.25)
            w.log_stats(step, "layers.1.mlp", "weight", float("inf"), 0.0, 0.0)
    df = rs.stats(run_id)
    assert len(df) == 6
    assert df.iloc[1].tolist()[1:7] == [0, "layers.0.mlp", "grad", 12.0, 0.02, 0.25]
    assert df.sqnr.iloc[2] == float("inf")
    assert rs.stats(run_id, module="layers.1.mlp").role.tolist() == ["weight", "weight"]
    assert rs.stats(run_id, role="grad").step.tolist() == [0, 10]
    picked = rs.stats(run_id, module="layers.0.mlp", role=["weight"], since_step=0)
    assert picked[["step", "sqnr"]].values.tolist() == [[10, 31.5]]


def test_histograms_round_trip_as_lists_and_filters(rs):
    run_id = rs.create_run("a", RECIPE)
    with rs.writer(run_id) as w:
        w.log_histogram(0, "wq", [-1.0, 0.0, 1.0], [3, 4])
        w.log_histogram(5, "wq", torch.linspace(-2, 2, 5), torch.tensor([1, 2, 3, 4]))
        w.log_histogram(5, "wk", np.array([0.0, 0.5]), np.array([7.5]))
    df = rs.histograms(run_id)
    assert df.edges.tolist() == [[-1.0, 0.0, 1.0], [-2.0, -1.0, 0.0, 1.0, 2.0], [0.0, 0.5]]
    assert df.counts.tolist() == [[3, 4], [1, 2, 3, 4], [7.5]]
    assert rs.histograms(run_id, module="wq", step=np.int64(5)).counts.tolist() == [[1, 2, 3, 4]]
    assert rs.histograms(run_id, step=[0, 5], module=["wk"]).step.tolist() == [5]
    other = rs.create_run("b", RECIPE)
    with rs.writer(other) as w:
        w.log_histogram(1, "head", [0.0, 1.0], [2])
    assert rs.histogram_modules(run_id) == ["wk", "wq"]  # without reading the histograms
    assert rs.histogram_modules([run_id, other]) == ["head", "wk", "wq"]
    assert rs.histogram_modules(rs.create_run("c", RECIPE)) == []


def test_metric_filters_by_run_key_and_since_step(rs):
    a, b = rs.create_run("a", RECIPE), rs.create_run("b", RECIPE)
    for run_id, scale in ((a, 1.0), (b, 10.0)):
        with rs.writer(run_id) as w:
            for step in range(4):
                w.log_metrics(step, {"loss": scale * step, "lr": 0.1})
    assert len(rs.metrics([a, b])) == 16
    assert rs.metrics(b, keys="loss").value.tolist() == [0.0, 10.0, 20.0, 30.0]
    # since_step is exclusive: a poller passes the last step it already has
    late = rs.metrics([a, b], keys=["loss"], since_step=np.int64(2))
    expected = sorted([[a, 3, 3.0], [b, 3, 30.0]])  # rows come ordered by run_id, step
    assert late[["run_id", "step", "value"]].values.tolist() == expected
    assert rs.metrics(a, since_step=3).empty
    assert list(rs.metrics(a, since_step=3).columns) == ["run_id", "step", "key", "value", "time"]


def test_runs_filters_by_sweep_and_status(rs):
    a = rs.create_run("a", RECIPE, sweep="s1")
    b = rs.create_run("b", RECIPE, sweep="s1")
    c = rs.create_run("c", RECIPE)
    rs.set_status(b, "succeeded")
    rs.set_status(c, "cancelled")
    assert rs.runs().run_id.tolist() == [a, b, c]
    assert rs.runs(sweep="s1").run_id.tolist() == [a, b]
    assert rs.runs(status="queued").run_id.tolist() == [a]
    assert rs.runs(sweep="s1", status=["succeeded", "cancelled"]).run_id.tolist() == [b]
    assert "recipe" not in rs.runs().columns
    with pytest.raises(ValueError, match="'finished'"):
        rs.runs(status=["queued", "finished"])


def test_nothing_is_visible_before_flush_and_everything_after(rs):
    run_id = rs.create_run("a", RECIPE)
    w = rs.writer(run_id, flush_every=None)
    w.log_metrics(0, {"loss": 1.0})
    w.log_stats(0, "m", "weight", 1.0, 0.0, 0.0)
    w.log_histogram(0, "m", [0, 1], [1])
    assert rs.metrics(run_id).empty and rs.stats(run_id).empty and rs.histograms(run_id).empty
    assert w.buffered == 3
    w.flush()
    assert (len(rs.metrics(run_id)), len(rs.stats(run_id)), len(rs.histograms(run_id))) == (1, 1, 1)
    assert w.buffered == 0


def test_flush_every_zero_writes_at_each_log_call(rs):
    run_id = rs.create_run("a", RECIPE)
    w = rs.writer(run_id, flush_every=0)
    w.log_metrics(0, {"loss": 1.0})
    assert rs.metrics(run_id).value.tolist() == [1.0]


def test_writer_marks_running_then_closes_with_the_given_status(rs):
    run_id = rs.create_run("a", RECIPE)
    w = rs.writer(run_id)
    run = rs.run(run_id)
    assert (run["status"], run["pid"], run["host"]) == ("running", os.getpid(), store.HOST)
    before = run["heartbeat"]
    time.sleep(0.01)
    w.heartbeat()
    assert rs.run(run_id)["heartbeat"] > before
    w.log_metrics(0, {"loss": float("nan")})
    w.close("diverged", error="loss is nan")
    run = rs.run(run_id)
    assert (run["status"], run["error"]) == ("diverged", "loss is nan")
    assert len(rs.metrics(run_id)) == 1  # close flushed
    with pytest.raises(RuntimeError, match="closed"):
        w.log_metrics(1, {"loss": 1.0})


def test_close_rejects_a_status_that_is_not_terminal(rs):
    w = rs.writer(rs.create_run("a", RECIPE))
    with pytest.raises(ValueError, match="'running' is not one of succeeded, failed"):
        w.close("running")
    assert not w.closed


def test_writer_context_records_exceptions_and_interrupts(rs):
    failing, interrupted = rs.create_run("a", RECIPE), rs.create_run("b", RECIPE)
    with pytest.raises(ZeroDivisionError), rs.writer(failing):
        1 / 0  # noqa: B018
    run = rs.run(failing)
    assert run["status"] == "failed"
    assert "ZeroDivisionError" in run["error"] and "1 / 0" in run["error"]
    with pytest.raises(KeyboardInterrupt), rs.writer(interrupted):
        raise KeyboardInterrupt
    assert rs.run(interrupted)["status"] == "cancelled"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda w: w.log_metrics(-1, {"loss": 1.0}), "step must be a non-negative integer, got -1"),
        (lambda w: w.log_metrics(1.5, {"loss": 1.0}), "got 1.5"),
        (lambda w: w.log_metrics(0, {"loss": 1.0, "acc": "high"}), "metric 'acc' must be a number"),
        (lambda w: w.log_metrics(0, {"": 1.0}), "metric key must be a non-empty string"),
        (lambda w: w.log_stats(0, "m", "weight", None, 0, 0), "sqnr must be a number, got None"),
        (lambda w: w.log_stats(0, "m", "", 1, 0, 0), "role must be a non-empty string"),
        (lambda w: w.log_histogram(0, "m", [0, 1], [1, 2]), "got 2 edges and 2 counts"),
        (lambda w: w.log_histogram(0, "m", [0, "x"], [1]), "edges[1] must be a number"),
    ],
)
def test_bad_events_are_refused_whole_with_the_bad_field_named(rs, call, message):
    w = rs.writer(rs.create_run("a", RECIPE), flush_every=None)
    with pytest.raises(ValueError, match=re.escape(message)):
        call(w)
    assert w.buffered == 0


def test_a_running_run_whose_local_process_is_gone_turns_failed_and_stays_so(rs):
    run_id = rs.create_run("a", RECIPE)
    dead_pid = os.getpid() + 1
    while True:  # find a pid with no process behind it
        try:
            os.kill(dead_pid, 0)
            dead_pid += 1
        except ProcessLookupError:
            break
        except PermissionError:
            dead_pid += 1
    rs.set_status(run_id, "running", pid=dead_pid)
    run = rs.runs().iloc[0]
    assert run.status == "failed"
    assert f"process {dead_pid} on host {store.HOST} exited without closing" in run.error
    assert raw(rs, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("failed",)]


def test_a_remote_run_turns_failed_only_once_its_heartbeat_is_stale(tmp_path):
    rs = RunStore(tmp_path, stale_after=60)
    fresh, stale = rs.create_run("fresh", RECIPE), rs.create_run("stale", RECIPE)
    for run_id, age in ((fresh, 30), (stale, 90)):
        rs.set_status(run_id, "running", pid=1234)
        with sqlite3.connect(rs.db_path) as conn:  # as if a job on another machine wrote it
            conn.execute(
                "UPDATE runs SET host = 'gpu-node-7', heartbeat = ? WHERE run_id = ?",
                (time.time() - age, run_id),
            )
    assert rs.run(fresh)["status"] == "running"
    stale_run = rs.run(stale)
    assert stale_run["status"] == "failed"
    pattern = (
        r"no heartbeat from process 1234 on host gpu-node-7 for 9\d\.\d s \(stale_after=60 s\)"
    )
    assert re.search(pattern, stale_run["error"])
    assert raw(rs, "SELECT status FROM runs WHERE run_id = ?", [stale]) == [("failed",)]


def test_a_live_local_writer_stays_running(rs):
    run_id = rs.create_run("a", RECIPE)
    rs.writer(run_id)
    assert rs.runs().status.tolist() == ["running"]


def test_a_store_pickles_as_its_arguments(tmp_path):
    rs = RunStore(tmp_path, stale_after=7)
    run_id = rs.create_run("a", RECIPE)
    copy = pickle.loads(pickle.dumps(rs))
    assert (copy.home, copy.stale_after) == (tmp_path, 7.0)
    assert copy.run(run_id)["name"] == "a"


def test_eval_and_merge_runs_record_their_kind_and_sources(tmp_path):
    store = RunStore(tmp_path)
    a = store.create_run("a", RECIPE)
    b = store.create_run("b", RECIPE)
    merged = store.create_run(
        "soup", RECIPE, kind="merge", sources=[{"run_id": a, "step": 10}, {"run_id": b}]
    )
    frame = store.runs().set_index("run_id")
    assert frame.loc[a, "kind"] == "train" and pd.isna(frame.loc[a, "sources"])
    assert frame.loc[merged, "kind"] == "merge"
    assert json.loads(store.run(merged)["sources"]) == [{"run_id": a, "step": 10}, {"run_id": b}]
    with pytest.raises(ValueError, match="kind 'test' is not one of train, eval, merge"):
        store.create_run("x", RECIPE, kind="test")
    with pytest.raises(KeyError, match="unknown run_id 'nope'"):
        store.create_run("x", RECIPE, kind="eval", sources=[{"run_id": "nope"}])
    assert len(store.runs()) == 3  # the refused ones wrote nothing
