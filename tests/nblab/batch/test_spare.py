"""Spare jobs (nblab.batch.spare, LocalLauncher(spare=True)): a job process and its kernel
started before their run. Real processes, gpt-debug for 2 steps: a spare's warm-up
costs ~2.5 s of CPU, a run in it under 1 s."""

import os
import signal
import time

import psutil
import pytest
from test_batch import JOB_WAIT_S, executed_cells, group_gone, outputs_text
from waiting import wait_for

from nblab.batch import LocalLauncher, cancel
from nblab.batch.job import JOB_LOG, OUTPUT_NOTEBOOK, main, read_job_info
from nblab.batch.spare import SPARES, adopt_log, wait_for_run
from nblab.recipe import Recipe
from nblab.runs import RunStore

SPARE_WAIT_S = 120  # a spare's warm-up on 2 busy cores


def recipe(**overrides) -> Recipe:
    base = {"train.steps": 2, "eval.interval": 2, "eval.batches": 1}
    return Recipe.preset("gpt-debug").with_overrides(base | overrides)


def queue(store: RunStore, r: Recipe, name: str = "spare") -> str:
    return store.create_run(name, r.to_toml(), steps=r.train.steps)


def run_one(launcher: LocalLauncher, run_id: str) -> dict:
    launcher.submit([run_id])
    assert launcher.wait(JOB_WAIT_S)
    return launcher.store.run(run_id)


def warm_spare(launcher: LocalLauncher) -> psutil.Process:
    """The launcher's spare (started now if it has none) once it waits for a run."""
    with launcher._lock:
        launcher._keep_spare()
    wait_for(launcher._spare.ready, SPARE_WAIT_S, "the spare to warm up")
    return psutil.Process(launcher._spare.proc.pid)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path / "home"))
    return RunStore(tmp_path / "home")


def test_runs_start_in_the_spare_and_it_goes_when_closed(store):
    launcher = LocalLauncher(jobs=1, store=store, gpus=0, spare=True)
    first = run_one(launcher, queue(store, recipe()))
    assert first["status"] == "succeeded", first["error"]
    spare = warm_spare(launcher)  # started when the first job ended, for the next

    run_id = queue(store, recipe())
    run = run_one(launcher, run_id)
    assert run["status"] == "succeeded", run["error"]
    run_dir = store.run_dir(run_id)
    assert read_job_info(run_dir)["pid"] == spare.pid  # the spare ran it
    cells = executed_cells(run_dir / OUTPUT_NOTEBOOK)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))  # silent warm-up
    assert f"run {run_id} succeeded at step 2" in "\n".join(outputs_text(c) for c in cells)
    assert any("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))
    assert f"[nblab job] run {run_id} succeeded" in (run_dir / JOB_LOG).read_text()

    nxt = warm_spare(launcher)  # the next one, with its kernel
    kernel = nxt.children()[0]
    launcher.close()
    assert nxt.wait(30) == 0
    kernel.wait(30)  # psutil.TimeoutExpired if it outlived its spare
    assert list((store.home / SPARES).iterdir()) == []  # it removed its log


def test_a_failing_run_in_a_spare_fails_alone(store, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("tiny.")  # valid, but too short for one sequence: fails in the job
    launcher = LocalLauncher(jobs=1, store=store, gpus=0, spare=True)
    bad = queue(store, recipe(**{"data.name": "text", "data.path": str(short)}))
    warm_spare(launcher)

    run = run_one(launcher, bad)
    assert run["status"] == "failed" and run["error"].startswith("cell "), run["error"]
    assert f"[nblab job] run {bad} failed" in (store.run_dir(bad) / JOB_LOG).read_text()
    good, nxt = queue(store, recipe()), launcher._spare.proc.pid  # a new spare for it
    assert run_one(launcher, good)["status"] == "succeeded"
    assert read_job_info(store.run_dir(good))["pid"] == nxt
    assert (store.run_dir(good) / "checkpoints").is_dir()
    assert {r: store.run(r)["status"] for r in (bad, good)} == {bad: "failed", good: "succeeded"}
    launcher.close()


def test_a_dead_spare_leaves_the_run_to_an_ordinary_job(store):
    launcher = LocalLauncher(jobs=1, store=store, gpus=0, spare=True)
    with launcher._lock:
        launcher._keep_spare()
    spare = launcher._spare.proc
    os.killpg(spare.pid, signal.SIGKILL)
    spare.wait(10)
    run_id = queue(store, recipe())
    run = run_one(launcher, run_id)
    assert run["status"] == "succeeded", run["error"]
    assert read_job_info(store.run_dir(run_id))["pid"] != spare.pid
    launcher.close()


def test_cancel_reaches_a_run_in_a_spare(store):
    launcher = LocalLauncher(jobs=1, store=store, gpus=0, spare=True)
    warm_spare(launcher)
    run_id = queue(store, recipe(**{"train.steps": 100_000, "eval.interval": 0}))
    launcher.submit([run_id])
    wait_for(lambda: (store.run(run_id)["step"] or 0) >= 2, JOB_WAIT_S, "training to start")
    info = read_job_info(store.run_dir(run_id))
    started = time.monotonic()
    assert cancel(run_id, store=store) == {run_id: "cancelled"}
    assert time.monotonic() - started < 10
    wait_for(lambda: all(group_gone(info[k]) for k in ("pgid", "kernel_pgid")), 10, "exit")
    assert launcher.wait(10)
    launcher.close()


def test_a_job_needs_a_run_id_or_spare(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "give RUN_ID, or --spare LOG" in capsys.readouterr().err


def test_a_spare_waits_for_one_line_and_gives_up_on_silence_or_eof():
    read, write = os.pipe()
    with os.fdopen(read) as stream, os.fdopen(write, "w") as out:
        assert wait_for_run(stream, idle_s=0.05) is None  # nothing came
        out.write("20261206-101500-1234\n")
        out.flush()
        assert wait_for_run(stream, idle_s=5) == "20261206-101500-1234"
        out.close()
        assert wait_for_run(stream, idle_s=5) is None  # the launcher went


def test_the_spares_log_becomes_the_runs_job_log(tmp_path):
    log, run_dir = tmp_path / "spare.log", tmp_path / "run"
    run_dir.mkdir()
    log.write_text("warm\n")
    adopt_log(log, run_dir)
    assert (run_dir / JOB_LOG).read_text() == "warm\n" and not log.exists()


def test_cli_sweep_spare_starts_the_next_point_in_a_warm_job(store, capsys):
    from nblab.batch.spare import READY
    from nblab.cli import main as cli

    args = ["sweep", "gpt-debug", "--name", "cli-spare", "--jobs", "1", "--spare"]
    assert cli([*args, "--grid", "train.steps=2,3", "--grid", "eval.batches=1"]) == 0
    frame = store.runs(sweep="cli-spare").sort_values("name")
    assert frame.status.tolist() == ["succeeded", "succeeded"]
    logs = [(store.run_dir(r) / JOB_LOG).read_text() for r in frame.run_id]
    assert sum(READY in log for log in logs) == 1  # the second point ran in the spare


def test_cli_sweep_spare_is_for_local_jobs(store, capsys):
    from nblab.cli import main as cli

    assert cli(["sweep", "gpt-debug", "--launcher", "slurm", "--spare"]) == 2
    assert "--spare keeps a local job warm" in capsys.readouterr().err
    assert store.runs().empty  # refused before any run was made
