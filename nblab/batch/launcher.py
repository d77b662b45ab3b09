"""Launchers: what turns queued runs into running jobs.

    launcher = LocalLauncher(jobs=2, timeout=600)
    launcher.submit(run_ids)        # returns at once
    launcher.poll()                 # {run_id: status}, from the run store
    launcher.cancel(run_id)
    launcher.wait()                 # True once every submitted run has ended

The run store is the truth: a launcher only starts and stops jobs, each job records
its own run's status. `Launcher` (nblab.batch.base) is the interface the Slurm launcher
implements too; launchers are registered by name in LAUNCHERS.

LocalLauncher runs each run as a separate process, `python -m nblab.batch.job RUN_ID`
(papermill is not thread-safe, and a process can be killed whole), in a session of
its own so that it outlives the caller and a cancel reaches its process group. A
daemon scheduler thread starts at most `jobs` at once, gives each its share of the
cores (OMP_NUM_THREADS / MKL_NUM_THREADS) and, on a machine with GPUs, its own GPUs
(CUDA_VISIBLE_DEVICES, as many as `parallel.nproc`), queueing runs while too few are
free. Jobs already started survive the caller; runs not yet started stay `queued`
(`run_sweep(..., resume=True)` picks them up). `python -m nblab.batch.launcher`
runs the same scheduler detached from the caller, for `nblab sweep --no-wait`.

With spare=True (CPU machines) the launcher keeps one job process ready before its run,
its kernel started and warm (nblab.batch.spare): the next run starts in it, without
the ~2.5 s of a fresh kernel importing torch. A spare starts when runs wait for a slot
and when the last job has ended (for the next submit); it costs a kernel's memory while
it waits and goes away after spare.IDLE_S unused, or with the launcher.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from nblab.batch import spare as spares
from nblab.batch.base import Launcher
from nblab.batch.job import JOB_LOG, KERNEL_GRACE_S, job_groups, read_job_info, signal_groups
from nblab.runs import TERMINAL_STATUSES, RunStore

# ---------------------------------------------------------------------------
# Resources: cores and GPUs (pure functions, unit-tested with fake counts)
# ---------------------------------------------------------------------------


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_job(cores: int, jobs: int) -> int:
    return max(1, cores // max(1, jobs))


def detect_gpus() -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES if set, else the ones
    `nvidia-smi -L` lists, else none. Importing torch would cost seconds; this does not."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def gpus_needed(device: str, nproc: int, machine_gpus: int) -> int:
    """GPUs a run takes: none on a machine without GPUs or for a CPU recipe, else one
    per process of its layout (`parallel.nproc`)."""
    if machine_gpus == 0 or device == "cpu":
        return 0
    return max(1, nproc)


def assign_gpus(free: Sequence[str], need: int) -> list[str] | None:
    """The first `need` free GPUs (in machine order), or None while too few are free."""
    if need > len(free):
        return None
    return list(free[:need])


class GpuPool:
    """Which GPUs are free. acquire() returns the ones given, or None to wait."""

    def __init__(self, gpus: Sequence[str]):
        self.gpus = list(gpus)
        self._busy: set[str] = set()

    @property
    def free(self) -> list[str]:
        return [g for g in self.gpus if g not in self._busy]

    def acquire(self, need: int) -> list[str] | None:
        if need > len(self.gpus):
            raise ValueError(
                f"the run needs {need} GPUs (parallel.nproc) but this machine has "
                f"{len(self.gpus)}: {', '.join(self.gpus) or 'none'}"
            )
        got = assign_gpus(self.free, need)
        if got:
            self._busy.update(got)
        return got

    def release(self, gpus: Iterable[str]) -> None:
        self._busy.difference_update(gpus)


# ---------------------------------------------------------------------------
# The local process-pool launcher
# ---------------------------------------------------------------------------


@dataclass
class _Running:
    run_id: str
    proc: Any  # subprocess.Popen, or a test double with pid / poll()
    started: float  # time.monotonic()
    gpus: list[str] = field(default_factory=list)
    log: IO[bytes] | None = None
    killed: bool = False


class LocalLauncher(Launcher):
    """Runs queued runs as local processes, at most `jobs` at once (see module doc).

    timeout: seconds per job (the job stops itself; the launcher SIGKILLs its groups
    KERNEL_GRACE_S + BACKSTOP_S later if it has not). resume: jobs continue their run
    from its checkpoint. gpus: the GPU ids to hand out (default: detect_gpus()), or a
    count. cores: the cores to share (default: those this process may use). spare: keep
    a warm job ready for the next run (see the module doc; ignored on a machine with GPUs).
    """

    BACKSTOP_S = 10.0
    POLL_S = 0.05  # a job's end is seen within this (reaping is one waitpid per job)

    def __init__(
        self,
        jobs: int = 1,
        timeout: float | None = None,
        resume: bool = False,
        *,
        store: RunStore | None = None,
        gpus: int | Sequence[str] | None = None,
        cores: int | None = None,
        python: str = sys.executable,
        spare: bool = False,
    ):
        if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
            raise ValueError(f"jobs={jobs!r}: the number of concurrent jobs, an integer >= 1")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout={timeout!r}: seconds per job, > 0 (or None: no limit)")
        self.jobs, self.timeout, self.resume = jobs, timeout, resume
        self.store = store or RunStore()
        if gpus is None:
            gpus = detect_gpus()
        elif isinstance(gpus, int):
            gpus = [str(i) for i in range(gpus)]
        self.gpu_pool = GpuPool(gpus)
        self.threads = threads_per_job(cores or available_cores(), jobs)
        self.python = python
        self.spare = spare and not self.gpu_pool.gpus  # every job's environment the same
        self._spare: spares.Spare | None = None
        self._queue: deque[str] = deque()
        self._running: dict[str, _Running] = {}
        self._submitted: list[str] = []
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return (
            f"LocalLauncher(jobs={self.jobs}, timeout={self.timeout}, "
            f"queued={len(self._queue)}, running={len(self._running)})"
        )

    # -- the interface ------------------------------------------------------------
    def submit(self, run_ids: Iterable[str]) -> None:
        run_ids = list(run_ids)
        for run_id in run_ids:
            self.store.run(run_id)  # KeyError for an unknown run, before any is queued
        with self._lock:
            self._queue.extend(run_ids)
            self._submitted.extend(run_ids)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="nblab-local-launcher", daemon=True
                )
                self._thread.start()

    def poll(self) -> dict[str, str]:
        frame = self.store.runs()
        status = dict(zip(frame.run_id, frame.status, strict=True))
        return {run_id: status.get(run_id, "unknown") for run_id in self._submitted}

    def cancel(self, run_id: str) -> None:
        from nblab.batch.cancellation import cancel_run  # it may scancel: slurm, then this module

        with self._lock:
            if run_id in self._queue:
                self._queue.remove(run_id)
                if self.store.run(run_id)["status"] == "queued":
                    self.store.set_status(run_id, "cancelled", error="cancelled before it started")
                return
        cancel_run(self.store, run_id, wait=0)  # SIGTERM; the loop reaps the job

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                thread = self._thread
            if thread is None:
                return True
            thread.join(self.POLL_S if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() >= deadline:
                with self._lock:
                    return self._thread is None

    @property
    def active(self) -> bool:
        with self._lock:
            return bool(self._queue or self._running)

    # -- the scheduler --------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                try:
                    self._step()
                except Exception as err:  # noqa: BLE001 - the loop must not die silently
                    print(f"nblab launcher: {type(err).__name__}: {err}", file=sys.stderr)
                if not (self._queue or self._running):
                    self._thread = None
                    return
            time.sleep(self.POLL_S)

    def _step(self) -> None:
        """Reap ended jobs, enforce the timeout backstop, start what fits."""
        now = time.monotonic()
        for job in list(self._running.values()):
            code = job.proc.poll()
            if code is not None:
                self._reaped(job, code)
            elif (
                self.timeout
                and not job.killed
                and now - job.started > self.timeout + KERNEL_GRACE_S + self.BACKSTOP_S
            ):
                info = read_job_info(self.store.run_dir(job.run_id))
                signal_groups(sorted({job.proc.pid, *job_groups(info)}), signal.SIGKILL)
                job.killed = True
        while self._queue and len(self._running) < self.jobs:
            run_id = self._queue[0]
            run = self.store.run(run_id)
            if run["status"] != "queued" and not (
                self.resume and run["status"] not in ("running", "succeeded")
            ):
                self._queue.popleft()  # cancelled (or started) meanwhile
                continue
            try:
                gpus = self.gpu_pool.acquire(self._gpus_needed(run["recipe"]))
            except ValueError as err:
                self._queue.popleft()
                self.store.set_status(run_id, "failed", error=str(err))
                continue
            if gpus is None:
                return  # first in, first out: wait for GPUs to free up
            self._queue.popleft()
            self._start(run_id, gpus)
        if self.spare and (self._queue or not self._running):
            self._keep_spare()

    def _keep_spare(self) -> None:
        """Start a spare unless one is alive (it warms up while runs wait, or for the
        next submit)."""
        if self._spare is None or self._spare.proc.poll() is not None:
            self._spare = spares.spawn(self._job_args(), self.job_env([]), self.store.home)

    def close(self) -> None:
        """Let the spare go (jobs already started run on)."""
        with self._lock:
            if self._spare is not None:
                self._spare.close()
                self._spare = None

    def _gpus_needed(self, recipe_toml: str) -> int:
        if not self.gpu_pool.gpus:
            return 0
        from nblab.recipe import Recipe

        recipe = Recipe.from_toml(recipe_toml)
        return gpus_needed(recipe.train.device, recipe.parallel.nproc, len(self.gpu_pool.gpus))

    def job_env(self, gpus: list[str]) -> dict[str, str]:
        """The environment of a job: the caller's, plus the store, threads and GPUs."""
        env = dict(os.environ)
        env["NBLAB_HOME"] = str(self.store.home)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        env["PYTHONUNBUFFERED"] = "1"
        if self.gpu_pool.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)  # "" hides every GPU from a CPU job
        return env

    def job_command(self, run_id: str) -> list[str]:
        return [*self._job_args(), run_id]

    def _job_args(self) -> list[str]:
        cmd = [self.python, "-m", "nblab.batch.job"]
        if self.resume:
            cmd.append("--resume")
        if self.timeout:
            cmd += ["--timeout", f"{self.timeout:g}"]
        return cmd

    def _start(self, run_id: str, gpus: list[str]) -> None:
        run_dir = self.store.run_dir(run_id)
        if self._spare is not None and not (run_dir / JOB_LOG).exists():
            proc, self._spare = self._spare.take(run_id), None
            if proc is not None:  # its log becomes the run's job.log
                self._running[run_id] = _Running(run_id, proc, time.monotonic(), gpus)
                return
        log = open(run_dir / JOB_LOG, "ab")  # noqa: SIM115 - closed when the job is reaped
        try:
            proc = self._popen(self.job_command(run_id), self.job_env(gpus), run_dir, log)
        except Exception as err:
            log.close()
            self.gpu_pool.release(gpus)
            self.store.set_status(run_id, "failed", error=f"could not start the job: {err}")
            return
        self._running[run_id] = _Running(run_id, proc, time.monotonic(), gpus, log)

    def _popen(self, cmd: list[str], env: dict[str, str], run_dir, log: IO[bytes]):
        """Start one job process (a test replaces this)."""
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=run_dir,
            start_new_session=True,  # its own process group: outlives us, killed whole
        )

    def _reaped(self, job: _Running, code: int) -> None:
        del self._running[job.run_id]
        self.gpu_pool.release(job.gpus)
        if job.log is not None:
            job.log.close()
        # The kernel lives in a session of its own: make sure it went with its job.
        info = read_job_info(self.store.run_dir(job.run_id))
        signal_groups([g for g in job_groups(info) if g != job.proc.pid], signal.SIGKILL)
        status = self.store.run(job.run_id)["status"]
        if status not in TERMINAL_STATUSES:
            if job.killed:
                error = f"timed out after {self.timeout:g}s (killed by the launcher)"
            else:
                error = f"job exited with code {code} without ending the run (see {JOB_LOG})"
            self.store.set_status(job.run_id, "failed", error=error)


def _slurm_launcher(**options: Any) -> Launcher:
    """nblab.batch.slurm.SlurmLauncher, imported when asked for (it brings submitit)."""
    from nblab.batch.slurm import SlurmLauncher

    return SlurmLauncher(**options)


LAUNCHERS: dict[str, Callable[..., Launcher]] = {"local": LocalLauncher, "slurm": _slurm_launcher}


def get_launcher(name: str, **options: Any) -> Launcher:
    """A launcher by registry name, e.g. get_launcher("local", jobs=4)."""
    if name not in LAUNCHERS:
        raise ValueError(f"launcher {name!r}: one of {', '.join(LAUNCHERS)}")
    return LAUNCHERS[name](**options)


def launch_detached(
    run_ids: Sequence[str],
    *,
    jobs: int = 1,
    timeout: float | None = None,
    resume: bool = False,
    store: RunStore | None = None,
    spare: bool = False,
) -> int:
    """Run a LocalLauncher over `run_ids` in a detached process (its own session, so it
    outlives the caller, e.g. `nblab sweep --no-wait`); return its pid."""
    store = store or RunStore()
    cmd = [sys.executable, "-m", "nblab.batch.launcher", "--jobs", str(jobs)]
    if timeout:
        cmd += ["--timeout", f"{timeout:g}"]
    if resume:
        cmd.append("--resume")
    if spare:
        cmd.append("--spare")
    env = dict(os.environ, NBLAB_HOME=str(store.home))
    log = store.home / "launcher.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*cmd, *run_ids],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return proc.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nblab.batch.launcher", description="run queued runs as local jobs"
    )
    parser.add_argument("run_ids", nargs="+")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--spare", action="store_true", help="keep a warm job for the next run")
    args = parser.parse_args(argv)
    launcher = LocalLauncher(
        jobs=args.jobs, timeout=args.timeout, resume=args.resume, spare=args.spare
    )
    launcher.submit(args.run_ids)
    launcher.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
