"""What the handlers call: request validation, path checks, and the JSON shapes of runs,
sweeps and metrics. No tornado here; every function is testable on its own.

Errors a client can fix are `ApiError(status, message)`; the message names the field.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from nblab.runs import STATUSES, TERMINAL_STATUSES, RunStore

MAX_POINTS = 2000  # metrics are downsampled to about this many points per key
MAX_JOBS = 64
RERUNNABLE = ("failed", "diverged", "cancelled")
OUTPUT_NOTEBOOK = "output.ipynb"  # nblab.batch.job.OUTPUT_NOTEBOOK, without importing papermill


class ApiError(Exception):
    """A request the client must change: HTTP `status` and a message naming the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# -- plain JSON values ------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A JSON-safe Python value: numpy scalars unwrapped, NaN / NA / inf as None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as dicts of plain values."""
    columns = list(frame.columns)
    return [
        {c: plain(v) for c, v in zip(columns, row, strict=True)}
        for row in frame.itertuples(index=False, name=None)
    ]


# -- paths ------------------------------------------------------------------------------


def inside(root: Path, path: Path) -> str | None:
    """`path` relative to `root` as a '/'-separated API path, or None if outside it."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return rel.as_posix() if rel.parts else ""


def resolve_in_root(root_dir: str | Path, path: Any, field: str = "path") -> Path:
    """The file `path` names, relative to `root_dir` as in the contents API.

    400 if `path` is not a non-empty string; 403 if it is absolute, climbs with '..' or
    resolves (through symlinks) outside `root_dir`; 404 if nothing is there.
    """
    if not isinstance(path, str) or not path.strip():
        raise ApiError(400, f'"{field}" must be a non-empty string (a path inside the server root)')
    if "\0" in path:
        raise ApiError(400, f'"{field}" must not contain NUL characters')
    pure = PurePosixPath(path)
    if pure.is_absolute() or path.startswith("~") or (len(path) > 1 and path[1] == ":"):
        raise ApiError(403, f'"{field}" {path!r} must be relative to the server root, not absolute')
    if ".." in pure.parts:
        raise ApiError(403, f'"{field}" {path!r} must not contain ".."')
    root = Path(root_dir).resolve()
    target = (root / pure).resolve()  # follows symlinks: a link out of the root is caught here
    if inside(root, target) is None:
        raise ApiError(403, f'"{field}" {path!r} resolves outside the server root')
    if not target.exists():
        raise ApiError(404, f'"{field}" {path!r}: no such file in the server root')
    return target


# -- request bodies ---------------------------------------------------------------------


def check_body(body: Any, allowed: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """`body` if it is a JSON object whose fields are among `allowed` with the right types."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(
            400,
            f"unknown field(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(map(repr, allowed))}",
        )
    return body


def check_jobs(value: Any) -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_JOBS:
        raise ApiError(400, f'"jobs" must be an integer from 1 to {MAX_JOBS}, got {value!r}')
    return value


def check_bool(name: str, value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f'"{name}" must be true or false, got {value!r}')
    return value


# -- query parameters -------------------------------------------------------------------


def check_statuses(values: list[str]) -> list[str] | None:
    """`?status=a,b&status=c` as a list, or None for no filter; 400 for an unknown status."""
    statuses = [s for v in values for s in v.split(",") if s]
    bad = [s for s in statuses if s not in STATUSES]
    if bad:
        raise ApiError(
            400, f'"status" {", ".join(map(repr, bad))} is not one of {", ".join(STATUSES)}'
        )
    return statuses or None


def check_int(name: str, value: str | None, low: int, high: int | None = None) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        allowed = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ApiError(400, f'"{name}" must be an integer {allowed}, got {value!r}')
    return number


# -- runs and sweeps --------------------------------------------------------------------


class RunPaths:
    """Where runs' output notebooks are, for the JSON of many runs: the store's runs
    folder is resolved against the server root once, not once per run."""

    def __init__(self, store: RunStore, root_dir: Path):
        self.runs_dir = store.home / "runs"
        self.runs_path = inside(Path(root_dir), self.runs_dir)

    def json(self, row: dict[str, Any]) -> dict[str, Any]:
        """A run row plus where its output notebook is (`output_path`: inside the server
        root, for the document manager; else None and only `output_file`)."""
        run_id = row["run_id"]
        output = self.runs_dir / run_id / OUTPUT_NOTEBOOK
        path = None
        if self.runs_path is not None:
            path = "/".join(p for p in (self.runs_path, run_id, OUTPUT_NOTEBOOK) if p)
        return row | {
            "output_file": str(output),
            "output_path": path,
            "output_exists": output.exists(),
        }


def run_json(store: RunStore, root_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
    """A run row plus where its output notebook is (see RunPaths.json)."""
    store.run_dir(row["run_id"])  # ValueError for an id that cannot be a folder
    return RunPaths(store, root_dir).json(row)


def list_runs(
    store: RunStore, root_dir: Path, sweep: str | None, status: list[str] | None
) -> list[dict[str, Any]]:
    paths = RunPaths(store, root_dir)
    return [paths.json(row) for row in store.rows(sweep=sweep, status=status)]


def get_run(store: RunStore, root_dir: Path, run_id: str) -> dict[str, Any]:
    try:
        row = store.run(run_id)
    except KeyError:
        raise ApiError(404, f"unknown run_id {run_id!r}") from None
    return run_json(store, root_dir, {k: plain(v) for k, v in row.items()})


def report_files(store: RunStore, root_dir: Path, sweep: str) -> dict[str, Any]:
    """Where `nblab.report.build_report(sweep)` writes (its default out_dir)."""
    if sweep in ("", ".", "..") or "/" in sweep or "\\" in sweep or "\0" in sweep:
        raise ApiError(400, f"sweep name {sweep!r} cannot be a folder name")
    folder = store.home / "sweeps" / sweep
    ipynb, html = folder / "report.ipynb", folder / "report.html"
    return {
        "ipynb_file": str(ipynb),
        "html_file": str(html),
        "ipynb_path": inside(root_dir, ipynb),
        "exists": ipynb.exists() and html.exists(),
    }


def sweep_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts per status over the latest run of each point, plus totals and times."""
    latest = frame.groupby("name", sort=False).tail(1)
    counts = latest.status.value_counts()
    return {
        "points": len(latest),
        "runs": len(frame),
        "counts": {s: int(counts[s]) for s in STATUSES if s in counts},
        "done": bool(latest.status.isin(TERMINAL_STATUSES).all()),
        "created": plain(frame.created.min()),
        "ended": plain(frame.ended.max()) if latest.ended.notna().all() else None,
    }


def list_sweeps(store: RunStore) -> list[dict[str, Any]]:
    frame = store.runs()
    frame = frame[frame.sweep.notna()]
    return [
        {"name": name} | sweep_summary(group) for name, group in frame.groupby("sweep", sort=False)
    ]


def get_sweep(store: RunStore, root_dir: Path, name: str) -> dict[str, Any]:
    frame = store.runs(sweep=name)
    if frame.empty:
        raise ApiError(404, f"unknown sweep {name!r}")
    try:
        report = report_files(store, root_dir, name)
    except ApiError:  # a sweep name that cannot be a folder has no default report
        report = None
    return (
        {"name": name}
        | sweep_summary(frame)
        | {
            "run_list": [RunPaths(store, root_dir).json(r) for r in records(frame)],
            "report": report,
        }
    )


def downsample(steps: np.ndarray, values: np.ndarray, max_points: int) -> tuple[list, list]:
    """At most `max_points` evenly spaced points, always keeping the first and the last."""
    n = len(steps)
    if n > max_points:
        keep = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
        steps, values = steps[keep], values[keep]
    finite = [v if math.isfinite(v) else None for v in np.asarray(values, np.float64).tolist()]
    return np.asarray(steps, np.int64).tolist(), finite


def series_json(found: dict, max_points: int) -> dict[str, Any]:
    """{key: {"steps", "values", "total"}} of one run's series (nblab.runs.series.Series),
    each downsampled to about `max_points`; NaN as null."""
    out = {}
    for key in sorted(found):
        steps, values = downsample(found[key].step, found[key].value, max_points)
        out[key] = {"steps": steps, "values": values, "total": len(found[key].step)}
    return out


def last_step(found: dict) -> int | None:
    """The furthest step of one run's series (each is in step order)."""
    return max((int(s.step[-1]) for s in found.values()), default=None)


def get_metrics(
    store: RunStore,
    run_id: str,
    keys: list[str] | None,
    since_step: int | None,
    max_points: int = MAX_POINTS,
) -> dict[str, Any]:
    """{"run_id", "last_step", "keys": {key: {"steps", "values", "total"}}}; NaN as null."""
    try:
        found = store.series(run_id, keys=keys, since_step=since_step).get(run_id, {})
    except KeyError:
        raise ApiError(404, f"unknown run_id {run_id!r}") from None
    last = last_step(found)
    return {
        "run_id": run_id,
        "last_step": since_step if last is None else last,
        "keys": series_json(found, max_points),
    }


def get_many_metrics(
    store: RunStore, run_ids: list[str] | None, keys: list[str] | None, max_points: int
) -> dict[str, Any]:
    """Metrics of many runs in one read (every run when `run_ids` is None), e.g. every
    sparkline of the sidebar: {"runs": {run_id: {"last_step", "keys"}}}, runs without
    values left out."""
    if run_ids is None:
        run_ids = [row["run_id"] for row in store.rows()]
    if not run_ids:
        return {"runs": {}}
    try:
        found = store.series(run_ids, keys=keys)
    except KeyError as err:
        raise ApiError(404, str(err.args[0])) from None
    return {
        "runs": {
            run_id: {"last_step": last_step(by_key), "keys": series_json(by_key, max_points)}
            for run_id, by_key in found.items()
        }
    }
