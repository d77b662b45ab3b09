"""Start a run: in this process, or on N processes with torchrun; and the entry point
each rank runs. It sits above the trainer (the trainer never starts processes).

    result = launch(recipe)                   # parallel.nproc 1: nblab.train.train here
    result = launch(recipe, nproc=2)          # torchrun; returns a TrainResult
    nblab run gpt-debug --nproc 2             # the same from the command line

For nproc > 1 the parent validates the layout (before any process starts), creates the
run in the store (queued) and runs

    python -m torch.distributed.run --standalone --nproc-per-node N \\
        -m nblab.launch --run-id RUN --home NBLAB_HOME [--resume]

in a session of its own, with its output in the run folder's torchrun.log. Every rank
(`main()` below) reads the recipe from the store and calls nblab.train.train with that
run_id: gloo on CPU, nccl on CUDA (nblab.parallel.runtime); rank 0 writes the events and
the final status. Each rank records its pid under pids/ and, when it raises, its error
under errors/rank<R>.txt (its traceback also goes to train.log).

A failed rank fails the run: torchrun stops the other ranks, and the parent records the
run as `failed` with the error of the rank that failed first (the others' errors, e.g. a
closed connection, follow from it; a rank ended by a signal, such as kill -9, is named
from torchrun's report, "rank 1: killed by signal 9 (SIGKILL)"), appends it to
train.log, and kills any worker still alive by the pids it recorded, so no process
outlives the run. SIGTERM / Ctrl-C in the parent stops torchrun and its workers and
records `cancelled`.

Fault injection for tests: NBLAB_FAULT="RANK:STEP" makes that rank raise before
optimizer step STEP.

This module imports torch and the trainer only where a function needs them, so that the
sweep and Slurm launchers can name its entry point cheaply.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

TORCHRUN_LOG = "torchrun.log"
FAULT_ENV = "NBLAB_FAULT"


def _pids(run_dir: Path) -> dict[int, int]:
    """{rank: pid} the workers of this run recorded."""
    out = {}
    for f in sorted((run_dir / "pids").glob("rank*")):
        try:
            out[int(f.name[4:])] = int(f.read_text())
        except ValueError:
            continue
    return out


def _alive(pid: int) -> bool:
    from nblab.runs.liveness import pid_alive

    return pid_alive(pid)


def _root_cause(run_dir: Path) -> tuple[int, str, str] | None:
    """(rank, one-line error, traceback) of the rank that failed first, if any did."""
    found = []
    for f in (run_dir / "errors").glob("rank*.txt"):
        when, line, *rest = f.read_text().split("\n", 2)
        found.append((float(when), int(f.stem[4:]), line, rest[0] if rest else ""))
    if not found:
        return None
    _, rank, line, tb = min(found)
    return rank, line, tb


# how ranks are stopped (nblab cancel, Ctrl-C, torchrun stopping the others of a run)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _killed_rank(log: Path, offset: int) -> tuple[int, str, str] | None:
    """(rank, "killed by signal N (NAME)", "") when torchrun's report of this attempt (its
    log from `offset` on) names as the first failure a rank that a signal ended: kill -9,
    the OOM killer. Such a rank records no error of its own, and the errors the other
    ranks then record (a connection reset by peer) follow from it."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    _, found, block = text.rpartition("Root Cause (first observed failure):")
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", block, re.MULTILINE)
    code = re.search(r"^\s*exitcode\s*:\s*-(\d+)", block, re.MULTILINE)
    if not (found and rank and code):
        return None
    signum = int(code.group(1))
    if signum in STOP_SIGNALS:  # a rank stopped (a cancel), not one that failed
        return None
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = "unknown signal"
    return int(rank.group(1)), f"killed by signal {signum} ({name})", ""


def _stop(proc: subprocess.Popen, run_dir: Path, grace: float = 10.0) -> None:
    """Stop torchrun (it forwards the signal to its workers), then any worker left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _reap_workers(run_dir)


def _reap_workers(run_dir: Path, grace: float = 5.0) -> None:
    """SIGKILL every recorded worker still alive after `grace` seconds (by pid: only the
    processes this launch started)."""
    deadline = time.monotonic() + grace
    pids = list(_pids(run_dir).values())
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def check_layout(recipe, nproc: int | None = None):
    """The ParallelDims of `recipe` on `nproc` processes (default parallel.nproc), validated
    against the recipe's model (its shape from the config alone): LayoutError lists every
    problem."""
    from nblab.models import model_shape
    from nblab.parallel.runtime import dims_for

    recipe.validate()
    dims = dims_for(recipe, nproc or recipe.parallel.nproc)
    shape = model_shape(recipe.model, _vocab_size(recipe), recipe.train.seq_len)
    dims.validate(recipe, model=shape)
    return dims


def _vocab_size(recipe) -> int:
    """The tokenizer's vocabulary when it is known without reading the corpus (GPT-2's
    otherwise: it only sizes the head, which stays in high precision by default)."""
    from nblab.parallel.dims import DEFAULT_VOCAB_SIZE
    from nblab.train import data

    known = getattr(data, "tokenizer_vocab_size", None)
    return (known(recipe.data) if known else None) or DEFAULT_VOCAB_SIZE


ENTRY_MODULE = "nblab.launch"  # what each rank runs (main below)


def torchrun_command(run_id: str, home: Path, nproc: int, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", str(nproc), "-m", ENTRY_MODULE]
    cmd += ["--run-id", run_id, "--home", str(home)]
    return cmd + (["--resume"] if resume else [])


def launch(
    recipe,
    *,
    nproc: int | None = None,
    store=None,
    run_id: str | None = None,
    sweep: str | None = None,
    resume: bool = False,
    progress: Callable[[int, dict], None] | None = None,
    env: dict[str, str] | None = None,
    poll_s: float = 0.5,
):
    """Train `recipe` and wait: on `nproc` processes (default parallel.nproc) with torchrun,
    or in this process when that is 1 (nblab.train.trainer.train).

    Returns nblab.train.trainer.TrainResult (status from the store). Raises LayoutError /
    NotImplementedError before starting anything when the layout is invalid. A recipe
    whose eval.source is set evaluates that run's checkpoint instead (nblab.eval.run; its
    EvalResult has the same fields)."""
    from nblab.runs import TERMINAL_STATUSES, RunStore
    from nblab.train.trainer import TrainResult, train

    if recipe.eval.source:  # an evaluation of a run's checkpoint (nblab.eval), not training
        from nblab.eval.run import run

        return run(recipe, store=store, run_id=run_id, sweep=sweep, progress=progress)
    nproc = nproc or recipe.parallel.nproc
    if nproc == 1:
        if env:
            raise ValueError("env applies to torchrun's processes; this run is in this process")
        return train(
            recipe, store=store, run_id=run_id, sweep=sweep, resume=resume, progress=progress
        )
    check_layout(recipe, nproc)
    store = store or RunStore()
    if run_id is None:
        run_id = store.create_run(recipe.name, recipe.to_toml(), sweep, steps=recipe.train.steps)
    run_dir = store.run_dir(run_id)
    for sub in ("pids", "errors"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
        for f in (run_dir / sub).iterdir():
            f.unlink()
    full_env = {**os.environ, **(env or {}), "NBLAB_HOME": str(store.home)}
    full_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    with open(run_dir / TORCHRUN_LOG, "ab") as out:
        log_start = out.tell()  # this attempt's part of the log (a resume appends)
        proc = subprocess.Popen(
            torchrun_command(run_id, store.home, nproc, resume),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
    last_step = -1
    try:
        while proc.poll() is None:
            time.sleep(poll_s)
            if progress is not None:
                step = store.run(run_id).get("step")
                if step is not None and step != last_step:
                    last_step = int(step)
                    progress(last_step, _last_metrics(store, run_id))
    except KeyboardInterrupt:
        _stop(proc, run_dir)
        if store.run(run_id)["status"] not in TERMINAL_STATUSES:
            store.set_status(run_id, "cancelled", error="cancelled by the user")
        raise
    _reap_workers(run_dir)
    run = store.run(run_id)
    status, error = run["status"], run.get("error")
    raised = _root_cause(run_dir) if proc.returncode != 0 else None
    killed = _killed_rank(run_dir / TORCHRUN_LOG, log_start) if proc.returncode != 0 else None
    cause = killed or raised
    if proc.returncode != 0 and status not in ("succeeded", "diverged"):
        # `cancelled` with a rank killed first: torchrun stopped rank 0 after that rank
        # died (rank 0 records the stop as a cancel), so the run failed
        if status == "cancelled" and cause is None:
            return TrainResult(run_id, status, int(run.get("step") or 0), {}, error)
        if cause is not None:
            rank, line, tb = cause
            error = f"rank {rank}: {line}"
        else:
            error = f"torchrun exited with code {proc.returncode} (see {TORCHRUN_LOG})"
            tb = ""
        store.set_status(run_id, "failed", error=error)
        status = "failed"
        with open(run_dir / "train.log", "a") as log:
            log.write(f"run failed: {error}\n{tb}")
    step = int(store.run(run_id).get("step") or 0)
    return TrainResult(run_id, status, step, _last_metrics(store, run_id), error)


def _last_metrics(store, run_id: str) -> dict[str, float]:
    frame = store.metrics(run_id)
    if frame.empty:
        return {}
    last = frame.sort_values("step").groupby("key").tail(1)
    return {str(k): float(v) for k, v in zip(last.key, last.value, strict=True)}


# ---------------------------------------------------------------------------
# One rank
# ---------------------------------------------------------------------------


def _inject_fault(spec: str, rank: int) -> None:
    """NBLAB_FAULT="RANK:STEP": this rank raises before optimizer step STEP."""
    fault_rank, fault_step = (int(v) for v in spec.split(":"))
    if fault_rank != rank:
        return
    from nblab.train.trainer import Trainer

    original = Trainer.train_step

    def train_step(self):
        if self.step + 1 >= fault_step:
            raise RuntimeError(f"injected fault on rank {rank} at step {self.step + 1}")
        return original(self)

    Trainer.train_step = train_step


def _record_error(run_dir: Path, rank: int, err: BaseException) -> None:
    import traceback

    text = f"{time.time()!r}\n{type(err).__name__}: {err}\n{traceback.format_exc()}"
    (run_dir / "errors").mkdir(parents=True, exist_ok=True)
    (run_dir / "errors" / f"rank{rank}.txt").write_text(text)


def main(argv: list[str] | None = None) -> int:
    """The entry point of one rank under torchrun."""
    parser = argparse.ArgumentParser(prog=f"python -m {ENTRY_MODULE}")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--home", required=True, help="the run store's NBLAB_HOME")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    import torch.distributed as dist

    from nblab.recipe import Recipe
    from nblab.runs import RunStore
    from nblab.train.trainer import train

    rank = int(os.environ.get("RANK", "0"))
    store = RunStore(args.home)
    run_dir = store.run_dir(args.run_id)
    (run_dir / "pids").mkdir(parents=True, exist_ok=True)
    (run_dir / "pids" / f"rank{rank}").write_text(str(os.getpid()))

    def stop(signum, frame):  # torchrun stops the other ranks with SIGTERM
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if os.environ.get(FAULT_ENV):
        _inject_fault(os.environ[FAULT_ENV], rank)
    try:
        recipe = Recipe.from_toml(store.run(args.run_id)["recipe"])
        result = train(recipe, store=store, run_id=args.run_id, resume=args.resume)
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        _record_error(run_dir, rank, err)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0 if result.status in ("succeeded", "diverged") else 1


if __name__ == "__main__":
    from nblab.parallel.runtime import exit_rank

    exit_rank(main())  # a failure raised above exits the usual way, with its traceback
