"""Runs as MLflow runs: `nblab export RUN|SWEEP --mlflow URI [--experiment NAME]`.

Each nblab run becomes one MLflow run, in the experiment named after its sweep (or
"nblab" for a run outside any sweep; --experiment overrides both):

    params      the recipe, flattened to dotted fields (optimizer.lr = 0.003, ...)
    metrics     every metric row of the store, with its step and its time
    tags        nblab.sweep, nblab.status, nblab.preset, nblab.run_id (and nblab.error)
    artifacts   recipe.toml, output.ipynb (batch jobs) and the sweep's report.html,
                those that exist
    run         name, start and end time and status (FINISHED, FAILED, KILLED) as the
                store has them; a queued or running run stays RUNNING

URI is anything MlflowClient takes: a tracking server (http://host:5000), a database
(sqlite:///mlflow.db), or a local folder (a path or file:///...): MLflow's file store.
MLflow 3 keeps the file store in maintenance mode and refuses it unless
MLFLOW_ALLOW_FILE_STORE=true; a local folder given here is meant as one, so nblab sets
that for its own client while it exports. Exporting a run again replaces its earlier
export (the MLflow run tagged with its run id is deleted first).
"""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from nblab.recipe import dotted_fields
from nblab.runs import RunStore

DEFAULT_EXPERIMENT = "nblab"
DEFAULT_PRESET = "bf16"  # a recipe without precision.preset (Recipe's default)
STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "cancelled": "KILLED"}
# MLflow's limits per log_batch call, and on a param's and a tag's value
METRICS_PER_BATCH, PARAMS_PER_BATCH = 1000, 100
PARAM_VALUE_MAX, TAG_VALUE_MAX = 6000, 5000
ARTIFACTS = ("recipe.toml", "output.ipynb")  # from the run's folder


@contextlib.contextmanager
def tracking(uri: str) -> Iterator[Any]:
    """An MlflowClient on `uri` (a local folder becomes a file: URI, and MLflow is told
    the file store is wanted, for the duration of the block)."""
    from mlflow import MlflowClient

    scheme = urlparse(uri).scheme
    local = scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")  # C:\...
    if not local:
        yield MlflowClient(tracking_uri=uri)
        return
    path = Path(urlparse(uri).path if scheme == "file" else uri).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield MlflowClient(tracking_uri=path.as_uri())
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


def params_of(recipe_toml: str) -> dict[str, str]:
    """The recipe as MLflow params: dotted field -> value as text (lists and tables as
    JSON), without the name (the run's name says it)."""
    fields = dotted_fields(tomllib.loads(recipe_toml))
    fields.pop("name", None)
    out = {}
    for path, value in fields.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = value
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = json.dumps(value, sort_keys=True, default=str)
        out[path] = text[:PARAM_VALUE_MAX]
    return out


def _experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id if found is not None else client.create_experiment(name)


def _earlier_exports(client, experiment_id: str, run_id: str) -> list[str]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`nblab.run_id` = '{run_id}'")
    return [r.info.run_id for r in runs]


def _ms(seconds: Any) -> int | None:
    return None if seconds is None else int(round(float(seconds) * 1000))


def export_run(
    client, store: RunStore, run_id: str, *, experiment: str | None = None
) -> dict[str, Any]:
    """Log nblab run `run_id` as one MLflow run; returns what was logged."""
    from mlflow.entities import Metric, Param

    run = store.run(run_id)
    recipe = tomllib.loads(run["recipe"])
    name = experiment or run["sweep"] or DEFAULT_EXPERIMENT
    experiment_id = _experiment_id(client, name)
    replaced = _earlier_exports(client, experiment_id, run_id)
    for old in replaced:
        client.delete_run(old)
    tags = {
        "nblab.run_id": run_id,
        "nblab.status": run["status"],
        "nblab.preset": recipe.get("precision", {}).get("preset", DEFAULT_PRESET),
    }
    if run["sweep"]:
        tags["nblab.sweep"] = run["sweep"]
    if run["error"]:
        tags["nblab.error"] = run["error"][-TAG_VALUE_MAX:]
    created = client.create_run(
        experiment_id,
        start_time=_ms(run["started"] or run["created"]),
        tags=tags,
        run_name=run["name"],
    )
    mlflow_id = created.info.run_id
    params = [Param(k, v) for k, v in params_of(run["recipe"]).items()]
    for i in range(0, len(params), PARAMS_PER_BATCH):
        client.log_batch(mlflow_id, params=params[i : i + PARAMS_PER_BATCH])
    frame = store.metrics(run_id)
    metrics = [
        Metric(key, float(value), _ms(when), int(step))
        for key, value, when, step in zip(
            frame.key, frame.value, frame.time, frame.step, strict=True
        )
    ]
    for i in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(mlflow_id, metrics=metrics[i : i + METRICS_PER_BATCH])
    artifacts = [store.run_dir(run_id) / a for a in ARTIFACTS]
    if run["sweep"]:
        artifacts.append(store.home / "sweeps" / run["sweep"] / "report.html")
    artifacts = [a for a in artifacts if a.is_file()]
    for path in artifacts:
        client.log_artifact(mlflow_id, str(path))
    if run["status"] in STATUS:
        client.set_terminated(mlflow_id, STATUS[run["status"]], end_time=_ms(run["ended"]))
    return {
        "mlflow_run_id": mlflow_id,
        "experiment": name,
        "params": len(params),
        "metrics": len(metrics),
        "artifacts": [a.name for a in artifacts],
        "replaced": replaced,
        "tags": tags,
    }


def export(
    store: RunStore, run_ids: list[str], destination: str, *, experiment: str | None = None
) -> list[str]:
    """`nblab export ... --mlflow URI`: every run into MLflow; one line per run."""
    lines = []
    with tracking(destination) as client:
        for run_id in run_ids:
            done = export_run(client, store, run_id, experiment=experiment)
            again = " (replaced an earlier export)" if done["replaced"] else ""
            lines.append(
                f"{run_id}: MLflow run {done['mlflow_run_id']} in experiment "
                f"{done['experiment']!r}: {done['params']} params, {done['metrics']} metric "
                f"rows, artifacts {', '.join(done['artifacts']) or 'none'}{again}"
            )
    return lines
