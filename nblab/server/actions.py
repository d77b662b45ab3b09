"""The POST routes' work: start a sweep, cancel, rerun, build a report.

Blocking calls into nblab (handlers run them in a worker thread). Jobs are started
detached (`run_sweep(..., detach=True)`, `launch_detached`), so they outlive the
server, and every command is an argument list: no request value reaches a shell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nblab.runs import RunStore
from nblab.server.api import RERUNNABLE, ApiError, report_files


def start_sweep(store: RunStore, toml: Path, jobs: int, resume: bool) -> dict[str, Any]:
    from nblab.batch.sweeps import run_sweep
    from nblab.sweep import Sweep, SweepError

    if toml.suffix != ".toml" or not toml.is_file():
        raise ApiError(400, f'"path" must name a .toml sweep file, got {toml.name!r}')
    try:
        sweep = Sweep.from_toml(toml)
        handle = run_sweep(sweep, jobs=jobs, resume=resume, wait=False, detach=True, store=store)
    except SweepError as err:
        raise ApiError(400, f'"path" {toml.name}: {err}') from None
    return {"sweep": handle.sweep, "run_ids": handle.run_ids, "skipped": handle.skipped}


def cancel_run(store: RunStore, run_id: str, wait: float) -> dict[str, Any]:
    from nblab.batch.cancellation import cancel

    try:
        store.run(run_id)
    except KeyError:
        raise ApiError(404, f"unknown run_id {run_id!r}") from None
    return {"statuses": cancel(run_id, store=store, wait=wait)}


def rerun(store: RunStore, run_ids: list[str]) -> dict[str, Any]:
    """A new queued run (same name, sweep, recipe, steps, kind and sources) for each run,
    launched detached."""
    from nblab.batch.launcher import launch_detached

    runs = [store.run(run_id) for run_id in run_ids]
    made = [r["run_id"] for r in runs if r.get("kind", "train") == "merge"]
    if made:  # a merge run is not a job: remake it with its command
        raise ApiError(409, f"run {made[0]} is not a training run; make it again with nblab merge")
    # an eval run is a job like a training run (launch evaluates its recipe's eval.source)
    new = [
        store.create_run(
            r["name"],
            r["recipe"],
            r["sweep"],
            steps=r["steps"],
            kind=r.get("kind") or "train",
            sources=json.loads(r["sources"]) if r.get("sources") else None,
        )
        for r in runs
    ]
    if new:
        launch_detached(new, jobs=1, store=store)
    return {"run_ids": new, "rerun_of": run_ids}


def rerun_run(store: RunStore, run_id: str) -> dict[str, Any]:
    try:
        status = store.run(run_id)["status"]
    except KeyError:
        raise ApiError(404, f"unknown run_id {run_id!r}") from None
    if status not in RERUNNABLE:
        raise ApiError(409, f"run {run_id} is {status}; only {', '.join(RERUNNABLE)} runs rerun")
    return rerun(store, [run_id])


def rerun_sweep(store: RunStore, sweep: str) -> dict[str, Any]:
    """Rerun every point of `sweep` whose latest run failed, diverged or was cancelled."""
    from nblab.batch.sweeps import latest_runs

    latest = latest_runs(store, sweep)
    if latest.empty:
        raise ApiError(404, f"unknown sweep {sweep!r}")
    latest = latest[latest.kind == "train"]  # its points; merges are made, not trained
    return rerun(store, list(latest.run_id[latest.status.isin(RERUNNABLE)]))


def start_merge(
    store: RunStore, sweep: str | None, run_ids: list[str] | None, method: str, top_k: int | None
) -> dict[str, Any]:
    """Check a merge (nblab.merge.plan_merge: a bad field is a 400 naming it, nothing
    written), then make it as a run of kind merge in a detached process."""
    from nblab.merge.run import MergeError, plan_merge, start_merge

    if (sweep is None) == (run_ids is None):
        raise ApiError(400, '"sweep" or "run_ids" is required (one of them): a sweep, or run ids')
    try:
        spec = plan_merge(sweep if sweep is not None else run_ids, method, top_k=top_k, store=store)
    except MergeError as err:
        field = {"--method": "method", "--top-k": "top_k"}.get(err.field, err.field)
        raise ApiError(400, f'"{field}" {err.value!r}: {err.accepted}') from None
    run_id = start_merge(spec, store)
    return {"run_id": run_id, "name": spec.name, "method": spec.method, "members": spec.members}


def build_report(store: RunStore, root_dir: Path, sweep: str) -> dict[str, Any]:
    from nblab.report import build_report as build

    try:
        build(sweep, store=store)
    except ValueError as err:  # unknown sweep, or a name that cannot be a folder
        status = 404 if str(err).startswith("unknown sweep") else 400
        raise ApiError(status, str(err)) from None
    return report_files(store, root_dir, sweep)
