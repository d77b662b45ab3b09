"""Batch execution: papermill jobs, the local launcher, sweeps, cancel and timeouts.

Every job here is a real process (`python -m nblab.batch.job`) executing
notebooks/train.ipynb with a 2..4-step gpt-debug recipe; one job costs about 6-9 s on
2 cores (interpreter, papermill, kernel, torch import), training almost nothing.
"""

import os
import time
from pathlib import Path

import nbformat
import pytest
from waiting import wait_for

from nblab.batch import LocalLauncher, cancel, run_sweep
from nblab.batch.job import OUTPUT_NOTEBOOK, read_job_info
from nblab.batch.launcher import GpuPool, assign_gpus, gpus_needed, threads_per_job
from nblab.cli import main as cli
from nblab.recipe import Recipe
from nblab.runs import RunStore
from nblab.sweep import Sweep, SweepError

JOB_WAIT_S = 180  # generous: the CI box is 2 shared cores


def debug_recipe(steps: int = 3, **overrides) -> Recipe:
    base = {"train.steps": steps, "eval.interval": steps, "eval.batches": 1}
    return Recipe.preset("gpt-debug").with_overrides(base | overrides)


def queue(store: RunStore, recipe: Recipe, name: str = "job") -> str:
    return store.create_run(name, recipe.to_toml(), steps=recipe.train.steps)


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def executed_cells(path: Path) -> list:
    nb = nbformat.read(path, as_version=4)
    return [c for c in nb.cells if c.cell_type == "code"]


def outputs_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts += [out.get("ename", ""), out.get("evalue", "")]
    return "\n".join(parts)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path / "home"))
    return RunStore(tmp_path / "home")


# ---------------------------------------------------------------------------
# One job, end to end
# ---------------------------------------------------------------------------


def test_one_papermill_job_end_to_end(store):
    run_id = queue(store, debug_recipe(steps=3))
    launcher = LocalLauncher(jobs=1, store=store, gpus=0)
    launcher.submit([run_id])
    assert launcher.wait(JOB_WAIT_S)

    run = store.run(run_id)
    assert run["status"] == "succeeded", run["error"]
    assert run["step"] == 3
    run_dir = store.run_dir(run_id)
    cells = executed_cells(run_dir / OUTPUT_NOTEBOOK)
    assert all(c.execution_count is not None for c in cells)  # every cell ran
    injected = [c for c in cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and f'run_id = "{run_id}"' in injected[0].source
    text = "\n".join(outputs_text(c) for c in cells)
    assert f"run {run_id} succeeded at step 3" in text
    assert f"torch threads {launcher.threads}" in text  # the job's share of the cores
    assert any(  # the loss plot is in the notebook
        "image/png" in out.get("data", {}) for c in cells for out in c.get("outputs", [])
    )
    metrics = store.metrics(run_id)
    assert {"loss", "val_loss"} <= set(metrics.key)
    assert metrics[metrics.key == "loss"].step.max() == 3
    assert (run_dir / "job.log").stat().st_size > 0
    assert launcher.poll() == {run_id: "succeeded"}


# ---------------------------------------------------------------------------
# A 3-point sweep, jobs=2, one point fails at run time: its corpus passes validation
# (the file exists) but is too short for one sequence, which only the job finds out
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    home = root / "home"
    store = RunStore(home)
    paths = [root / "a.txt", root / "b.txt", root / "short.txt"]
    for p in paths[:2]:
        p.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    paths[2].write_text("tiny.")
    base = debug_recipe(steps=2, **{"data.name": "text", "data.path": str(paths[0])})
    sweep = Sweep(base, name="iso", grid={"data.path": [str(p) for p in paths]})
    started = time.monotonic()
    handle = run_sweep(sweep, jobs=2, store=store)
    return {
        "store": store,
        "sweep": sweep,
        "handle": handle,
        "paths": paths,
        "seconds": time.monotonic() - started,
    }


def test_a_failing_point_fails_alone_with_its_error(failing_sweep):
    store, handle = failing_sweep["store"], failing_sweep["handle"]
    frame = handle.status()
    assert len(frame) == 3 and set(frame.sweep) == {"iso"}
    by_name = dict(zip(frame.name, frame.status, strict=True))
    short = f"path={failing_sweep['paths'][2]}"
    assert by_name.pop(short) == "failed"
    assert set(by_name.values()) == {"succeeded"}

    bad = frame[frame.name == short].iloc[0]
    assert "needs 33 tokens" in bad.error and "short.txt" in bad.error
    assert bad.error.startswith("cell ")  # where: the cell index of the output notebook
    cells = executed_cells(store.run_dir(bad.run_id) / OUTPUT_NOTEBOOK)
    errors = [c for c in cells if any(o.output_type == "error" for o in c.outputs)]
    assert len(errors) == 1 and "launch(" in errors[0].source
    assert "needs 33 tokens" in outputs_text(errors[0])
    # the recipe of a point is named after its sweep and point
    assert Recipe.from_toml(store.run(bad.run_id)["recipe"]).name == f"iso/{short}"


def test_two_jobs_run_at_once(failing_sweep):
    frame = failing_sweep["handle"].status().sort_values("started")
    first, second = frame.iloc[0], frame.iloc[1]
    assert second.started < first.ended  # the second started before the first ended


def test_resume_reruns_only_the_point_that_did_not_succeed(failing_sweep, monkeypatch, capsys):
    store, sweep, paths = failing_sweep["store"], failing_sweep["sweep"], failing_sweep["paths"]
    before = store.runs(sweep="iso")
    paths[2].write_text("now the file is there. " * 400)

    handle = run_sweep(sweep, jobs=2, store=store, resume=True)

    short = f"path={paths[2]}"
    assert len(handle.run_ids) == 1
    assert handle.status().name.tolist() == [short]
    assert handle.status().status.tolist() == ["succeeded"]
    assert sorted(handle.skipped) == sorted(set(before.name) - {short})
    after = store.runs(sweep="iso")
    assert len(after) == 4
    old = after[after.run_id.isin(before.run_id)]  # untouched
    assert old.set_index("run_id").status.to_dict() == before.set_index("run_id").status.to_dict()

    monkeypatch.setenv("NBLAB_HOME", str(store.home))
    assert cli(["sweeps"]) == 0
    assert "iso  3 points: 3 succeeded  (4 runs in all)" in capsys.readouterr().out


def test_a_bad_point_creates_nothing(store):
    sweep = Sweep(debug_recipe(), name="bad", grid={"train.steps": [2, -1]})
    with pytest.raises(SweepError):
        run_sweep(sweep, store=store, wait=False)
    assert store.runs().empty


def test_cli_sweep_bad_file_exits_2_with_the_sweep_error(tmp_path, store, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\nbase = "gpt-debug"\n[grid]\n"train.steps" = [2, -1]\n')
    assert cli(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.steps" in err and "-1" in err
    assert store.runs().empty


# ---------------------------------------------------------------------------
# Cancel and timeout
# ---------------------------------------------------------------------------


def test_cancel_stops_the_job_and_leaves_no_process(store):
    run_id = queue(store, debug_recipe(steps=100_000, **{"eval.interval": 0}), "long")
    launcher = LocalLauncher(jobs=1, store=store, gpus=0)
    launcher.submit([run_id])
    wait_for(lambda: (store.run(run_id)["step"] or 0) >= 2, JOB_WAIT_S, "training to start")
    info = read_job_info(store.run_dir(run_id))
    groups = [info["pgid"], info["kernel_pgid"]]
    assert info["pgid"] != info["kernel_pgid"]  # jupyter_client gives the kernel a session

    started = time.monotonic()
    assert cancel(run_id, store=store) == {run_id: "cancelled"}
    assert time.monotonic() - started < 10  # within seconds, not the kill backstop
    run = store.run(run_id)
    assert run["status"] == "cancelled" and run["step"] < 100_000
    wait_for(lambda: all(group_gone(g) for g in groups), 10, "the job's processes to exit")
    assert launcher.wait(10)
    cells = executed_cells(store.run_dir(run_id) / OUTPUT_NOTEBOOK)
    assert "KeyboardInterrupt" in "\n".join(outputs_text(c) for c in cells)


def test_timeout_fails_the_run(store):
    run_id = queue(store, debug_recipe(steps=100_000, **{"eval.interval": 0}), "slow")
    launcher = LocalLauncher(jobs=1, timeout=6, store=store, gpus=0)
    started = time.monotonic()
    launcher.submit([run_id])
    assert launcher.wait(JOB_WAIT_S)
    run = store.run(run_id)
    assert run["status"] == "failed"
    assert run["error"] == "timed out after 6s"
    assert time.monotonic() - started < 6 + 10  # stopped by the job, not the backstop
    info = read_job_info(store.run_dir(run_id))
    assert all(group_gone(info[k]) for k in ("pgid", "kernel_pgid") if k in info)


def test_cancel_of_a_queued_run_never_starts_it(store):
    first = queue(store, debug_recipe(steps=100_000, **{"eval.interval": 0}), "first")
    second = queue(store, debug_recipe(), "second")
    launcher = LocalLauncher(jobs=1, store=store, gpus=0)
    launcher.submit([first, second])
    launcher.cancel(second)  # still queued behind `first`
    launcher.cancel(first)
    assert launcher.wait(JOB_WAIT_S)
    assert store.run(second)["status"] == "cancelled"
    assert store.run(second)["started"] is None
    assert store.run(first)["status"] == "cancelled"


# ---------------------------------------------------------------------------
# Resources: cores and GPUs (no processes)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "nproc", "machine", "need"),
    [("auto", 1, 0, 0), ("cpu", 4, 8, 0), ("auto", 1, 8, 1), ("cuda", 4, 8, 4), ("auto", 0, 2, 1)],
)
def test_gpus_needed(device, nproc, machine, need):
    assert gpus_needed(device, nproc, machine) == need


def test_assign_gpus_takes_the_first_free_or_waits():
    assert assign_gpus(["0", "1", "2", "3"], 2) == ["0", "1"]
    assert assign_gpus(["2", "3"], 2) == ["2", "3"]
    assert assign_gpus(["3"], 2) is None
    pool = GpuPool(["0", "1", "2"])
    assert pool.acquire(2) == ["0", "1"]
    assert pool.acquire(2) is None  # one free: wait
    assert pool.acquire(1) == ["2"]
    pool.release(["0", "1"])
    assert pool.free == ["0", "1"]
    with pytest.raises(ValueError, match="needs 4 GPUs .* has 3"):
        pool.acquire(4)


def test_threads_per_job():
    assert [threads_per_job(16, j) for j in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]


class FakeProc:
    """Stands in for a job process: running until the test ends it."""

    def __init__(self, env):
        self.env, self.code, self.pid = env, None, 999_999_999

    def poll(self):
        return self.code


class FakeGpuLauncher(LocalLauncher):
    def _popen(self, cmd, env, run_dir, log):
        proc = FakeProc(env)
        self.started[cmd[3]] = proc
        return proc


def test_launcher_gives_each_job_its_gpus_and_queues_when_none_are_free(store):
    two = debug_recipe(**{"train.device": "auto", "parallel.nproc": 2, "parallel.dp_shard": 2})
    one = debug_recipe(**{"train.device": "auto"})
    cpu = debug_recipe()  # train.device = "cpu"
    ids = [queue(store, r, n) for r, n in ((two, "a"), (one, "b"), (two, "c"), (cpu, "d"))]
    launcher = FakeGpuLauncher(jobs=4, store=store, gpus=3, cores=8)
    launcher.started = {}
    launcher._queue.extend(ids)
    launcher._step()
    # a takes GPUs 0,1 and b GPU 2; c needs two: it waits, and d waits behind it (FIFO)
    assert {k: p.env["CUDA_VISIBLE_DEVICES"] for k, p in launcher.started.items()} == {
        ids[0]: "0,1",
        ids[1]: "2",
    }
    assert list(launcher._queue) == ids[2:]
    launcher.started[ids[0]].code = 0  # a ends (its run status is up to the job)
    launcher._step()
    assert launcher.started[ids[2]].env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert launcher.started[ids[3]].env["CUDA_VISIBLE_DEVICES"] == ""  # a CPU job sees none
    assert launcher.started[ids[3]].env["OMP_NUM_THREADS"] == "2"  # 8 cores / 4 jobs
    assert store.run(ids[0])["status"] == "failed"  # exited without ending its run
    assert "without ending the run" in store.run(ids[0])["error"]


def test_cli_sweep_runs_the_points_and_exits_0(store, capsys):
    args = ["sweep", "gpt-debug", "--name", "cli", "--jobs", "1", "--grid", "train.steps=2"]
    args += ["--grid", "eval.batches=1"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    frame = store.runs(sweep="cli")
    assert frame.status.tolist() == ["succeeded"]
    assert frame.name.tolist() == ["steps=2,batches=1"]
    assert frame.run_id[0] in out and "succeeded" in out
