"""One batch job: execute notebooks/train.ipynb for one queued run with papermill.

    python -m nblab.batch.job RUN_ID [--resume] [--timeout S]
    python -m nblab.batch.job --spare LOG [...]   # RUN_ID later, on stdin (nblab.batch.spare)

The run's recipe (TOML text from the store), its run_id and the resume flag reach the
notebook as papermill parameters, i.e. as data; nothing goes through a shell. The
executed notebook is written cell by cell to `$NBLAB_HOME/runs/<run_id>/output.ipynb`,
so a failed job leaves its error cell and traceback there.

Processes: a launcher starts this module in a session of its own (its pid is the
job's process-group id). The job starts the kernel, where training runs, before it
loads papermill (the two overlap), and papermill runs the notebook in it; the job kills
it as soon as the last cell has run. jupyter_client puts the kernel in *another*
session, so this job records both groups in `runs/<run_id>/job.json` and stops the
kernel itself:

- SIGTERM / SIGINT (cancel): SIGINT to the kernel's group, so the trainer sees a
  KeyboardInterrupt, flushes its events and records `cancelled`; after
  KERNEL_GRACE_S the kernel's group gets SIGKILL. The run ends `cancelled`.
- `--timeout S`: the same stop, and the run ends `failed` "timed out after S s".
- the job itself killed with SIGKILL: ipykernel's parent poller ends the kernel
  within a second, and `nblab.batch.cancellation.cancel_run` kills both groups.

Whatever goes wrong (a cell raises, the kernel dies or never starts), the run ends
with a terminal status and an error naming the cell and the exception. Exit codes:
0 succeeded, 1 failed or diverged, 2 the run cannot be started, 124 timed out,
143 cancelled.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nblab.notebooks import (
    KernelManager,
    execute,
    import_papermill,
    notebook,
    start_kernel,
    stop_kernel,
)

TRAIN_NOTEBOOK = notebook("train.ipynb")
JOB_INFO = "job.json"  # pid / pgid / host of the job and its kernel
OUTPUT_NOTEBOOK = "output.ipynb"
JOB_LOG = "job.log"  # the job's stdout and stderr (written by the launcher)
KERNEL_GRACE_S = 5.0  # between SIGINT to the kernel and SIGKILL

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_CANCELLED = 0, 1, 2, 124, 143
SETTLED = ("succeeded", "diverged")  # outcomes a late stop or error does not overwrite

log = logging.getLogger("nblab.batch.job")


# ---------------------------------------------------------------------------
# job.json: how to reach a job's processes from any process on its host
# ---------------------------------------------------------------------------


def write_job_info(run_dir: Path, **fields: Any) -> None:
    """Merge `fields` into run_dir/job.json (atomically: readers see old or new)."""
    info = read_job_info(run_dir) | fields
    tmp = run_dir / f".{JOB_INFO}.{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, run_dir / JOB_INFO)


def read_job_info(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / JOB_INFO).read_text())
    except (OSError, ValueError):
        return {}


def job_groups(info: dict[str, Any]) -> list[int]:
    """The process groups of a job (its own, its kernel's) that live on this host."""
    from nblab.runs.liveness import HOST

    if info.get("host") != HOST:
        return []
    return [int(info[k]) for k in ("pgid", "kernel_pgid") if info.get(k)]


def signal_groups(groups: list[int], signum: int) -> list[int]:
    """Send `signum` to each process group; return those that still existed."""
    reached = []
    for pgid in groups:
        try:
            os.killpg(pgid, signum)
            reached.append(pgid)
        except ProcessLookupError:
            pass
        except PermissionError:
            log.warning("no permission to signal process group %d", pgid)
    return reached


# ---------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------


def _kernel_ids(km: KernelManager) -> tuple[int, int] | None:
    """(pid, pgid) of a started kernel."""
    process = getattr(km.provisioner, "process", None)
    pid = getattr(km.provisioner, "pid", None) or getattr(process, "pid", None)
    return (int(pid), int(getattr(km.provisioner, "pgid", None) or pid)) if pid else None


def _kernel_manager_class(on_start: Callable[[int, int], None]) -> type:
    """nblab's kernel manager, telling `on_start(pid, pgid)` its kernel."""

    class TrackedKernelManager(KernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            await super().start_kernel(**kw)
            ids = _kernel_ids(self)
            if ids:
                on_start(*ids)

    return TrackedKernelManager


class Job:
    """Executes the train notebook for `run_id` once; see the module docstring."""

    def __init__(
        self,
        run_id: str,
        *,
        resume: bool = False,
        timeout: float | None = None,
        notebook: Path = TRAIN_NOTEBOOK,
        store=None,
        kernel: KernelManager | None = None,
    ):
        self.stop_reason: str | None = None  # "cancelled" | "timeout"
        self.kernel_pgid: int | None = None
        self._lock = threading.Lock()
        self._install_signals()  # first: a cancel may come while nblab still imports

        from nblab.runs import RunStore

        self.store = store or RunStore()
        self.run_id = run_id
        self.resume = resume
        self.timeout = timeout
        self.notebook = Path(notebook)
        self.run_dir = self.store.run_dir(run_id)
        self.kernel = kernel  # started already (a spare's, nblab.batch.spare), or None

    # -- stopping ---------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Stop the kernel (and the training in it): SIGINT now, SIGKILL after a grace.
        Safe from a signal handler and from a timer thread."""
        with self._lock:
            if self.stop_reason is not None:
                return
            self.stop_reason = reason
            pgid = self.kernel_pgid
        print(f"[nblab job] stopping ({reason})", file=sys.stderr, flush=True)
        if pgid is None:
            return  # no kernel yet: _on_kernel_start kills it as soon as it exists
        signal_groups([pgid], signal.SIGINT)
        killer = threading.Timer(KERNEL_GRACE_S, signal_groups, args=([pgid], signal.SIGKILL))
        killer.daemon = True
        killer.start()

    def _on_kernel_start(self, pid: int, pgid: int) -> None:
        with self._lock:
            self.kernel_pgid = pgid
            stopped = self.stop_reason is not None
        write_job_info(self.run_dir, kernel_pid=pid, kernel_pgid=pgid)
        if stopped:
            signal_groups([pgid], signal.SIGKILL)

    def _install_signals(self) -> None:
        def handler(signum, frame):
            self.stop("cancelled")

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- running ----------------------------------------------------------------
    def _startable(self, status: str) -> str | None:
        """Why the run cannot start now, or None."""
        if status == "queued" or (self.resume and status not in ("running", "succeeded")):
            return None
        want = "queued (or, with --resume, stopped)" if self.resume else "queued"
        return f"run {self.run_id} is {status}; a job starts a run that is {want}"

    def execute(self) -> int:
        from nblab.runs.liveness import HOST

        run = self.store.run(self.run_id)  # KeyError: unknown run
        write_job_info(
            self.run_dir, pid=os.getpid(), pgid=os.getpgid(0), host=HOST, started=time.time()
        )
        refusal = self._startable(run["status"])
        if refusal is not None:
            print(f"[nblab job] {refusal}", file=sys.stderr, flush=True)
            return EXIT_CANCELLED if run["status"] == "cancelled" else EXIT_USAGE
        self.store.set_status(self.run_id, "running", pid=os.getpid())
        ids = _kernel_ids(self.kernel) if self.kernel is not None else None
        if ids:
            self._on_kernel_start(*ids)
        if self.timeout:
            timer = threading.Timer(self.timeout, self.stop, args=("timeout",))
            timer.daemon = True
            timer.start()
        error = None
        try:
            self._papermill(run["recipe"])
        except BaseException as err:  # noqa: BLE001 - every failure must reach the store
            error = _describe(err)
            print(f"[nblab job] {error}", file=sys.stderr, flush=True)
        finally:
            if self.kernel_pgid is not None:  # the last cell has run: nothing to wait for
                signal_groups([self.kernel_pgid], signal.SIGKILL)
            if self.kernel is not None:
                stop_kernel(self.kernel)  # and its connection file
        return self._finish(error)

    def _papermill(self, recipe_toml: str) -> None:
        if self.stop_reason:
            return
        if self.kernel is None:  # it boots while papermill loads (0.3 s)
            manager = _kernel_manager_class(self._on_kernel_start)
            self.kernel = start_kernel(manager, cwd=str(self.run_dir))
        execute(
            self.notebook,
            self.run_dir / OUTPUT_NOTEBOOK,
            dict(recipe_toml=recipe_toml, run_id=self.run_id, resume=self.resume),
            cwd=str(self.run_dir),
            log_output=True,
            km=self.kernel,  # papermill leaves it running: Job.execute stops it after the last cell
        )

    def _finish(self, error: str | None) -> int:
        """Give the run its final status; return the exit code."""
        status = self.store.run(self.run_id)["status"]
        if status in SETTLED:
            final, message = status, None  # the trainer's own word stands
        elif self.stop_reason == "timeout":
            final, message = "failed", f"timed out after {self.timeout:g}s"
        elif self.stop_reason == "cancelled":
            final, message = "cancelled", "cancelled (SIGTERM to the job)"
        elif error is not None:
            final, message = "failed", error
        elif status in ("queued", "running"):  # the notebook ended without training
            final, message = "failed", "the notebook finished without ending the run"
        else:
            final, message = status, None
        if message is not None:
            self.store.set_status(self.run_id, final, error=message)
        print(f"[nblab job] run {self.run_id} {final}", file=sys.stderr, flush=True)
        if self.stop_reason == "timeout" and final == "failed":
            return EXIT_TIMEOUT
        return {"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(final, EXIT_FAILED)


def _describe(err: BaseException) -> str:
    """One line naming where and what: `cell 4: ValueError: ...` for a notebook error."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        return f"cell {err.cell_index}: {err.ename}: {err.evalue} (see {OUTPUT_NOTEBOOK})"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted before the notebook started"
    return f"{type(err).__name__}: {err}".strip()


def _spare(log: Path) -> tuple[str | None, KernelManager | None]:
    """A spare (nblab.batch.spare): its warm kernel, then the run id from stdin. (None,
    None) when no run came; a kernel that died meanwhile is dropped (None)."""
    from nblab.batch import spare

    def stop(signum, frame):
        raise KeyboardInterrupt  # the launcher ends its spare: stop the kernel, exit

    signal.signal(signal.SIGTERM, stop)
    km = spare.start_warm_kernel(KernelManager)
    import_papermill()  # while no run waits
    print(spare.READY, file=sys.stderr, flush=True)
    try:
        run_id = spare.wait_for_run(sys.stdin)
    except KeyboardInterrupt:
        run_id = None
    if run_id is None:
        stop_kernel(km)
        log.unlink(missing_ok=True)
        return None, None
    from nblab.runs import RunStore

    run_dir = RunStore().run_dir(run_id)
    spare.adopt_log(log, run_dir)
    # where papermill would have started it; a kernel that died meanwhile is replaced
    if not spare.alive(km) or spare.run_code(km, f"import os; os.chdir({str(run_dir)!r})"):
        print("[nblab job] the spare's kernel is unusable: starting one", file=sys.stderr)
        stop_kernel(km)
        km = None
    return run_id, km


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nblab.batch.job", description=__doc__)
    parser.add_argument("run_id", nargs="?")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--timeout", type=float, help="seconds before the job is stopped")
    parser.add_argument("--notebook", type=Path, default=TRAIN_NOTEBOOK, help=argparse.SUPPRESS)
    parser.add_argument(
        "--spare",
        type=Path,
        metavar="LOG",
        help="start the kernel now and read RUN_ID from stdin (nblab.batch.spare)",
    )
    args = parser.parse_args(argv)
    if (args.run_id is None) == (args.spare is None):
        parser.error("give RUN_ID, or --spare LOG (and the run id on stdin)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    kernel = None
    try:
        run_id = args.run_id
        if args.spare is not None:
            run_id, kernel = _spare(args.spare)
            if run_id is None:
                return EXIT_OK
        job = Job(
            run_id,
            resume=args.resume,
            timeout=args.timeout,
            notebook=args.notebook,
            kernel=kernel,
        )
        kernel = None  # the job's now: execute() stops it
        return job.execute()
    except (KeyError, ValueError) as err:
        print(f"[nblab job] {err}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if kernel is not None:  # a spare's, if no job took it
            stop_kernel(kernel)


if __name__ == "__main__":
    raise SystemExit(main())
