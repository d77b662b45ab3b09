"""What a papermill batch job costs beyond the training itself, measured in one run.

    .venv/bin/python benchmarks/papermill_overhead.py [--recipe gpt-debug] [--steps 20]
        [--repeat 5] [--out benchmarks/results/papermill-overhead-cpu.txt]

The same recipe is trained `--repeat` times each way, in turn, from one process:

- direct: `train(recipe, store=...)` in this (warm) process: the training itself;
- process: the same call in a fresh `python -c` process (interpreter, imports of
  torch and nblab, the dataset's first load: what any process-per-job launcher pays);
- job: a queued run executed as a batch job (LocalLauncher(jobs=1) starting
  `python -m nblab.batch.job RUN_ID`, which runs notebooks/train.ipynb with
  papermill), timed from `submit` until the launcher has reaped the job.

overhead = job - direct, per repetition (the figure issue 5 sets a target for), and
job - process (what papermill and its kernel add to a plain process); the table gives
the median and the range.
The job's wall time is split by the store's timestamps and the run's train.log:
start (job interpreter up to `running`), kernel (kernel start and the notebook's
imports, up to train()'s first log line), train (train() in the kernel, up to the run
ending) and finish (the plot and summary cells, writing output.ipynb, kernel
shutdown, reaping). Both ways use the same torch thread count (the launcher's share
of the cores for one job). A run-to-run comparison is only fair on the same machine
under the same load: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from nblab.batch.launcher import LocalLauncher
from nblab.recipe import Recipe
from nblab.runs import RunStore
from nblab.train.trainer import train

TARGET_S = 2.0  # issue 16 (issue 5 set 3 s): < 2 s per job beyond the training itself


def make_recipe(name: str, steps: int) -> Recipe:
    return Recipe.preset(name).with_overrides(
        {
            "train.steps": steps,
            "eval.interval": steps,
            "checkpoint.interval": 0,
            "train.device": "cpu",
        }
    )


def time_direct(recipe: Recipe, store: RunStore) -> float:
    start = time.perf_counter()
    result = train(recipe, store=store)
    took = time.perf_counter() - start
    if result.status != "succeeded":
        raise RuntimeError(f"direct run {result.run_id} {result.status}: {result.error}")
    return took


PROCESS_SCRIPT = """
import sys, torch
from nblab.recipe import Recipe
from nblab.runs import RunStore
from nblab.train.trainer import train
torch.set_num_threads(int(sys.argv[2]))
result = train(Recipe.from_toml(open(sys.argv[1]).read()), store=RunStore())
sys.exit(0 if result.status == "succeeded" else 1)
"""


def time_process(recipe_path: Path, threads: int, env: dict[str, str]) -> float:
    cmd = [sys.executable, "-c", PROCESS_SCRIPT, str(recipe_path), str(threads)]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _train_log_start(run_dir: Path) -> float | None:
    """Unix time of train()'s first log line (logging's asctime, local time, ms)."""
    try:
        first = (run_dir / "train.log").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    stamp = " ".join(first.split(" ")[:2])  # "2025-01-01 12:00:00,123"
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def time_job(recipe: Recipe, store: RunStore, launcher: LocalLauncher) -> dict[str, float]:
    run_id = store.create_run(recipe.name, recipe.to_toml(), steps=recipe.train.steps)
    submitted, t0 = time.time(), time.perf_counter()
    launcher.submit([run_id])
    if not launcher.wait(600):
        raise RuntimeError(f"job {run_id} did not end within 600 s")
    total = time.perf_counter() - t0
    run = store.run(run_id)
    if run["status"] != "succeeded":
        raise RuntimeError(f"job {run_id} {run['status']}: {run['error']}")
    began = _train_log_start(store.run_dir(run_id)) or run["started"]
    return {
        "job": total,
        "start": run["started"] - submitted,
        "kernel": began - run["started"],
        "train": run["ended"] - began,
        "finish": submitted + total - run["ended"],
    }


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _stats(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} {min(values):7.2f} {max(values):7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="gpt-debug")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    recipe = make_recipe(args.recipe, args.steps)
    home = Path(tempfile.mkdtemp(prefix="nblab-overhead-"))
    store = RunStore(home)
    os.environ["NBLAB_HOME"] = str(home)
    launcher = LocalLauncher(jobs=1, store=store, gpus=0)
    torch.set_num_threads(launcher.threads)  # the job's kernel gets the same count
    load_before = _load()
    time_direct(recipe, store)  # warm-up: imports, the dataset's first load
    recipe_path = home / "recipe.toml"
    recipe_path.write_text(recipe.to_toml())
    env = launcher.job_env([])  # the job's environment: store, thread counts
    rows: list[dict[str, float]] = []
    for _ in range(args.repeat):
        direct = time_direct(recipe, store)
        process = time_process(recipe_path, launcher.threads, env)
        job = time_job(recipe, store, launcher)
        overhead = {"overhead": job["job"] - direct, "over_process": job["job"] - process}
        rows.append({"direct": direct, "process": process, **job, **overhead})
    load_after = _load()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    t = recipe.train
    lines = [
        f"papermill overhead per batch job: recipe {args.recipe} ({recipe.model.flavour}),"
        f" {t.steps} steps, batch {t.batch_size} x seq {t.seq_len}, eval once,"
        f" {args.repeat} repetitions each way (in turn) after one direct warm-up",
        f"machine: {platform.machine()} CPU, {cores} cores (shared), {platform.platform()},"
        f" torch {torch.__version__}, {launcher.threads} torch threads both ways",
        f"load average (1/5/15 min): before {load_before}, after {load_after}",
        "",
        f"{'seconds':32s} {'median':>7s} {'min':>7s} {'max':>7s}",
        f"{'direct train() in-process':32s} {_stats([r['direct'] for r in rows])}",
        f"{'train() in a fresh process':32s} {_stats([r['process'] for r in rows])}",
        f"{'batch job, submit to reaped':32s} {_stats([r['job'] for r in rows])}",
        f"{'  start (job process)':32s} {_stats([r['start'] for r in rows])}",
        f"{'  kernel (start, imports)':32s} {_stats([r['kernel'] for r in rows])}",
        f"{'  train (in the kernel)':32s} {_stats([r['train'] for r in rows])}",
        f"{'  finish (plots, notebook, exit)':32s} {_stats([r['finish'] for r in rows])}",
        f"{'overhead = job - direct':32s} {_stats([r['overhead'] for r in rows])}",
        f"{'job - fresh process':32s} {_stats([r['over_process'] for r in rows])}",
        "",
    ]
    median = statistics.median(r["overhead"] for r in rows)
    verdict = "meets" if median < TARGET_S else "misses"
    over_process = statistics.median(r["over_process"] for r in rows)
    lines += [
        f"overhead per job: {median:.2f} s (median of {args.repeat}); "
        f"{verdict} the < {TARGET_S:g} s target",
        f"of which a fresh process (python, torch, nblab, data) costs "
        f"{median - over_process:.2f} s and papermill with its kernel {over_process:.2f} s",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
