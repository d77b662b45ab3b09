"""Cancel runs wherever their jobs run: `nblab cancel SWEEP|RUN`, the sidebar's cancel
button, a handle's cancel().

    cancel("formats-cpu")            # every unfinished run of a sweep, or one run id

A run submitted to Slurm (runs/<run_id>/slurm.json names its job) is scancelled, all
of a sweep's jobs in one scancel, so it works from any host that reaches the cluster
and for sweeps started with `--no-wait`. A queued local run becomes `cancelled` at
once (a launcher skips it). A running batch job gets SIGTERM on its process group
(runs/<run_id>/job.json; the job stops its kernel and records `cancelled`); a run
started by `nblab run` gets SIGTERM on its pid from the store. With wait > 0, a local
run still not ended after `wait` seconds has its processes killed and is marked
`cancelled`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

from nblab.batch.job import job_groups, read_job_info, signal_groups
from nblab.batch.slurm import scancel_runs
from nblab.runs import TERMINAL_STATUSES, RunStore
from nblab.runs.liveness import HOST, pid_alive

CANCEL_GRACE_S = 15.0  # a job stops its kernel within KERNEL_GRACE_S of SIGTERM


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


def cancel_run(store: RunStore, run_id: str, *, wait: float = CANCEL_GRACE_S) -> str:
    """Cancel one run (see the module doc); return its status afterwards."""
    return cancel_runs(store, [run_id], wait=wait)[run_id]


def cancel_runs(store: RunStore, run_ids: Iterable[str], *, wait: float) -> dict[str, str]:
    """cancel_run for many runs: Slurm's scancelled together, local ones signalled, then
    waited for together."""
    run_ids = list(run_ids)
    live = [r for r in run_ids if store.run(r)["status"] not in TERMINAL_STATUSES]
    out = {r: store.run(r)["status"] for r in run_ids if r not in live}
    out |= scancel_runs(store, live)  # Slurm's own wait: until its jobs left the queue
    targets = {}
    for run_id in [r for r in live if r not in out]:
        out[run_id], targets[run_id] = _signal(store, run_id)
    deadline = time.monotonic() + wait
    while wait > 0 and time.monotonic() < deadline:
        for run_id in [r for r in targets if out[r] not in TERMINAL_STATUSES]:
            out[run_id] = store.run(run_id)["status"]
        if all(out[r] in TERMINAL_STATUSES for r in targets):
            break
        time.sleep(0.2)
    for run_id in targets:
        if wait > 0 and out[run_id] not in TERMINAL_STATUSES:
            signal_groups(targets[run_id], signal.SIGKILL)
            store.set_status(run_id, "cancelled", error=f"cancelled (killed after {wait:g}s)")
            out[run_id] = "cancelled"
    return {r: out[r] for r in run_ids}


def _signal(store: RunStore, run_id: str) -> tuple[str, list[int]]:
    """SIGTERM the local job (or process) of `run_id`; return (its status now, its
    process groups)."""
    run = store.run(run_id)
    if run["status"] in TERMINAL_STATUSES:
        return run["status"], []
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
