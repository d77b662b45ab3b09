"""Run a sweep as batch jobs, and cancel runs.

    handle = run_sweep(Sweep.from_toml("sweeps/formats-cpu.toml"), jobs=2, wait=False)
    handle.run_ids                   # one queued run per point, named by the point
    handle.status()                  # DataFrame from the run store
    handle.wait(); handle.cancel()
    run_sweep(sweep, resume=True)    # reruns only the points whose latest run failed
    cancel("formats-cpu")            # a sweep name or a run id

Every point is validated (`sweep.expand()`) before any run is created, so a bad
point leaves the store untouched. Runs carry `sweep=sweep.name` and the point's name
as their name; the point's recipe (named "<sweep>/<point>") is the run's recipe.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from nblab.batch.job import job_groups, read_job_info, signal_groups
from nblab.batch.launcher import Launcher, LocalLauncher, launch_detached
from nblab.runs import TERMINAL_STATUSES, RunStore
from nblab.runs.liveness import HOST, pid_alive

CANCEL_GRACE_S = 15.0  # a job stops its kernel within KERNEL_GRACE_S of SIGTERM


@dataclass
class SweepHandle:
    """The runs one `run_sweep` call launched. Reads come from the store."""

    sweep: str
    run_ids: list[str]
    store: RunStore
    launcher: Launcher | None = None
    skipped: list[str] = field(default_factory=list)  # point names left alone (resume)

    def status(self) -> pd.DataFrame:
        """The runs' rows of `RunStore.runs()`, in launch order."""
        frame = self.store.runs(sweep=self.sweep)
        frame = frame[frame.run_id.isin(self.run_ids)]
        order = {run_id: i for i, run_id in enumerate(self.run_ids)}
        return frame.sort_values("run_id", key=lambda s: s.map(order)).reset_index(drop=True)

    def counts(self) -> dict[str, int]:
        return self.status().status.value_counts().to_dict()

    @property
    def done(self) -> bool:
        return bool(self.status().status.isin(TERMINAL_STATUSES).all())

    @property
    def succeeded(self) -> bool:
        return bool((self.status().status == "succeeded").all())

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> pd.DataFrame:
        """Block until every run has ended (or `timeout` s); return status()."""
        if self.launcher is not None:
            self.launcher.wait(timeout)
        else:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self.done and (deadline is None or time.monotonic() < deadline):
                time.sleep(poll)
        return self.status()

    def cancel(self) -> list[str]:
        """Cancel every run of this handle that has not ended; return their ids."""
        live = self.status()
        live = list(live.run_id[~live.status.isin(TERMINAL_STATUSES)])
        for run_id in live:
            if self.launcher is not None:
                self.launcher.cancel(run_id)
            else:
                cancel_run(self.store, run_id, wait=0)
        return live

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
        return f"SweepHandle({self.sweep!r}, {len(self.run_ids)} runs: {counts or 'none'})"


def latest_runs(store: RunStore, sweep: str) -> pd.DataFrame:
    """The latest run of each point (run name) of `sweep`, oldest point first."""
    frame = store.runs(sweep=sweep)
    return frame.groupby("name", sort=False).tail(1).reset_index(drop=True)


def run_sweep(
    sweep,
    *,
    launcher: Launcher | None = None,
    jobs: int = 1,
    timeout: float | None = None,
    resume: bool = False,
    wait: bool = True,
    detach: bool = False,
    store: RunStore | None = None,
) -> SweepHandle:
    """Create one queued run per point of `sweep` (an nblab.sweep.Sweep) and launch them.

    launcher: default LocalLauncher(jobs, timeout) over `store` (default: the
    launcher's store, else $NBLAB_HOME). resume=True: only points whose latest run in
    this sweep did not succeed get a new run; succeeded and running points are left
    alone, and a stale `queued` run is marked cancelled before its point is rerun.
    wait=False returns at once (the jobs are separate processes). detach=True runs the
    scheduler itself in a detached process (`launch_detached`), so runs not yet started
    also outlive the caller (a CLI that exits, a kernel that restarts); the handle then
    reads and cancels through the store alone.
    Raises SweepError (from expand) before creating anything if any point is bad.
    """
    points = sweep.expand()
    store = store or (launcher.store if launcher is not None else None) or RunStore()
    skipped: list[str] = []
    if resume:
        latest = {row.name: row for row in latest_runs(store, sweep.name).itertuples()}
        todo = []
        for point in points:
            row = latest.get(point.name)
            if row is not None and row.status in ("succeeded", "running"):
                skipped.append(point.name)
                continue
            if row is not None and row.status == "queued":
                store.set_status(row.run_id, "cancelled", error="superseded by a resumed sweep")
            todo.append(point)
        points = todo
    from nblab.eval.source import run_fields  # an evaluation's run: kind eval, its source

    run_ids = [
        store.create_run(
            point.name, point.recipe.to_toml(), sweep.name, **run_fields(point.recipe, store)
        )
        for point in points
    ]
    if detach:
        if launcher is not None:
            raise ValueError("detach=True runs its own LocalLauncher; pass no launcher")
        if run_ids:
            launch_detached(run_ids, jobs=jobs, timeout=timeout, store=store)
        handle = SweepHandle(sweep.name, run_ids, store, None, skipped)
    else:
        if launcher is None:
            launcher = LocalLauncher(jobs=jobs, timeout=timeout, store=store)
        handle = SweepHandle(sweep.name, run_ids, store, launcher, skipped)
        if run_ids:
            launcher.submit(run_ids)
    if wait:
        handle.wait()
    return handle


# ---------------------------------------------------------------------------
# Cancel
# ---------------------------------------------------------------------------


def cancel_run(store: RunStore, run_id: str, *, wait: float = CANCEL_GRACE_S) -> str:
    """Cancel one run; return its status afterwards.

    A queued run becomes `cancelled` at once (a launcher skips it). A running batch
    job gets SIGTERM on its process group (from runs/<run_id>/job.json; the job stops
    its kernel and records `cancelled`); a run started by `nblab run` gets SIGTERM on
    its pid from the store. With wait > 0, a run still not ended after `wait` seconds
    has its processes killed and is marked `cancelled`.
    """
    return cancel_runs(store, [run_id], wait=wait)[run_id]


def cancel_runs(store: RunStore, run_ids: Iterable[str], *, wait: float) -> dict[str, str]:
    """cancel_run for many runs: signal them all, then wait for them together."""
    out, targets = {}, {}
    for run_id in run_ids:
        out[run_id], targets[run_id] = _signal(store, run_id)
    deadline = time.monotonic() + wait
    while wait > 0 and time.monotonic() < deadline:
        for run_id in [r for r in out if out[r] not in TERMINAL_STATUSES]:
            out[run_id] = store.run(run_id)["status"]
        if all(status in TERMINAL_STATUSES for status in out.values()):
            return out
        time.sleep(0.2)
    for run_id, status in out.items():
        if wait > 0 and status not in TERMINAL_STATUSES:
            signal_groups(targets[run_id], signal.SIGKILL)
            store.set_status(run_id, "cancelled", error=f"cancelled (killed after {wait:g}s)")
            out[run_id] = "cancelled"
    return out


def _signal(store: RunStore, run_id: str) -> tuple[str, list[int]]:
    """SIGTERM whatever runs `run_id`; return (its status now, its process groups)."""
    run = store.run(run_id)
    if run["status"] in TERMINAL_STATUSES:
        return run["status"], []
    from nblab.batch.slurm import scancel_run  # a Slurm job may run on another host

    if scancel_run(store, run_id):
        return store.run(run_id)["status"], []
    groups = job_groups(read_job_info(store.run_dir(run_id)))
    if run["status"] == "queued":
        store.set_status(run_id, "cancelled", error="cancelled before it started")
        signal_groups(groups[:1], signal.SIGTERM)  # a job that is just starting
        return "cancelled", groups
    if groups:
        reached = signal_groups(groups[:1], signal.SIGTERM)
    elif run["pid"] and run["host"] == HOST and pid_alive(int(run["pid"])):
        os.kill(int(run["pid"]), signal.SIGTERM)  # `nblab run` turns it into cancelled
        reached = [int(run["pid"])]
    else:
        reached = []
    if not reached:  # nobody is left to record it
        store.set_status(run_id, "cancelled", error="cancelled (its job was gone)")
        return "cancelled", groups
    return store.run(run_id)["status"], groups


def cancel(
    target: str, *, store: RunStore | None = None, wait: float = CANCEL_GRACE_S
) -> dict[str, str]:
    """Cancel a run (by run id) or every unfinished run of a sweep (by name).
    Returns {run_id: status afterwards} of the runs it acted on; KeyError if `target`
    is neither."""
    store = store or RunStore()
    frame = store.runs(sweep=target)
    if frame.empty:
        try:
            store.run(target)
        except (KeyError, ValueError):
            raise KeyError(f"{target!r} is neither a sweep nor a run id") from None
        return cancel_runs(store, [target], wait=wait)
    live = list(frame.run_id[~frame.status.isin(TERMINAL_STATUSES)])
    return cancel_runs(store, live, wait=wait)
