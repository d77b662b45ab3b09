"""Run a sweep as batch jobs, and cancel runs.

    handle = run_sweep(Sweep.from_toml("sweeps/formats-cpu.toml"), jobs=2, wait=False)
    handle.run_ids                   # one queued run per point, named by the point
    handle.status()                  # DataFrame from the run store
    handle.wait(); handle.cancel()
    run_sweep(sweep, resume=True)    # reruns only the points whose latest run failed
    cancel("formats-cpu")            # a sweep name or a run id (nblab.batch.cancellation)

Every point is validated (`sweep.expand()`) before any run is created, so a bad
point leaves the store untouched. Runs carry `sweep=sweep.name` and the point's name
as their name; the point's recipe (named "<sweep>/<point>") is the run's recipe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd

from nblab.batch.base import Launcher
from nblab.batch.cancellation import CANCEL_GRACE_S, cancel, cancel_run, cancel_runs
from nblab.batch.launcher import LocalLauncher, launch_detached
from nblab.runs import TERMINAL_STATUSES, RunStore


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
    spare: bool = False,
) -> SweepHandle:
    """Create one queued run per point of `sweep` (an nblab.sweep.Sweep) and launch them.

    launcher: default LocalLauncher(jobs, timeout) over `store` (default: the
    launcher's store, else $NBLAB_HOME). resume=True: only points whose latest run in
    this sweep did not succeed get a new run; succeeded and running points are left
    alone, and a stale `queued` run is marked cancelled before its point is rerun.
    wait=False returns at once (the jobs are separate processes). detach=True runs the
    scheduler itself in a detached process (`launch_detached`), so runs not yet started
    also outlive the caller (a CLI that exits, a kernel that restarts); the handle then
    reads and cancels through the store alone. spare=True: the default launcher keeps a
    warm job ready for the next run (LocalLauncher(spare=True)).
    Raises SweepError (from expand) before creating anything if any point is bad.
    """
    if spare and launcher is not None:
        raise ValueError("spare=True configures the default LocalLauncher; pass no launcher")
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
            launch_detached(run_ids, jobs=jobs, timeout=timeout, store=store, spare=spare)
        handle = SweepHandle(sweep.name, run_ids, store, None, skipped)
    else:
        if launcher is None:
            launcher = LocalLauncher(jobs=jobs, timeout=timeout, store=store, spare=spare)
        handle = SweepHandle(sweep.name, run_ids, store, launcher, skipped)
        if run_ids:
            launcher.submit(run_ids)
    if wait:
        handle.wait()
    return handle


__all__ = [
    "CANCEL_GRACE_S",
    "SweepHandle",
    "cancel",
    "cancel_run",
    "cancel_runs",
    "latest_runs",
    "run_sweep",
]
