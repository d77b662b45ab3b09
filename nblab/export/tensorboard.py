"""A run's events as TensorBoard event files: after the fact (`nblab export RUN|SWEEP
--tensorboard DIR`), or live while it trains (`metrics.tensorboard = true`).

Written with torch.utils.tensorboard.SummaryWriter, the standard writer; read them with
`tensorboard --logdir DIR`. Tags:

    train/<key>                       every metric at its step (loss, lr, grad_norm,
                                      tokens_per_s, tflops, ...)
    val/<key>                         the metrics logged as val_<key> (val/loss, ...)
    sqnr/<role>/<module>              quantization error per module and tensor role
    saturation/<role>/<module>        (SQNR in dB; saturation and underflow fractions)
    underflow/<role>/<module>
    weights/<module>                  the stored weight histograms, with their own bins
    recipe                            text: the run's recipe TOML

Exported events carry the wall time the store recorded. An export writes one folder
per run, DIR/<run name>/<run_id>; exporting a run again replaces its event files there.
Live events go to $NBLAB_HOME/runs/<run_id>/tensorboard (`tensorboard --logdir
$NBLAB_HOME/runs` shows every run that has them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nblab.export import FOLDER_UNSAFE
from nblab.runs import RunStore, RunWriter

LIVE_FOLDER = "tensorboard"  # under the run's folder
EVENT_FILES = "events.out.tfevents.*"


def metric_tag(key: str) -> str:
    """train/<key>, or val/<rest> for a key val_<rest>."""
    return f"val/{key[4:]}" if key.startswith("val_") and len(key) > 4 else f"train/{key}"


def stat_tags(module: str, role: str) -> dict[str, str]:
    """{stats column: tag} of one module and role."""
    return {c: f"{c}/{role}/{module}" for c in ("sqnr", "saturation", "underflow")}


def recipe_markdown(recipe_toml: str) -> str:
    """The recipe as a markdown code block (TensorBoard renders text as markdown)."""
    return "\n".join("    " + line for line in recipe_toml.strip().splitlines())


class EventSink:
    """nblab's events onto one SummaryWriter, under the tags of the module doc."""

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step, flush_secs=10)

    def metrics(self, step: int, values: dict[str, float], walltime: float | None = None):
        for key, value in values.items():
            self.writer.add_scalar(metric_tag(key), float(value), step, walltime=walltime)

    def stats(self, step: int, module: str, role: str, values: dict[str, float], walltime=None):
        for column, tag in stat_tags(module, role).items():
            self.writer.add_scalar(tag, float(values[column]), step, walltime=walltime)

    def histogram(self, step: int, module: str, edges, counts, walltime: float | None = None):
        """A stored histogram as it is: bucket i spans edges[i]..edges[i + 1]
        (TensorBoard's bucket limits are the upper edges; the first starts at min)."""
        edges, counts = np.asarray(edges, np.float64), np.asarray(counts, np.float64)
        centers = (edges[:-1] + edges[1:]) / 2
        self.writer.add_histogram_raw(
            f"weights/{module}",
            min=float(edges[0]),
            max=float(edges[-1]),
            num=float(counts.sum()),
            sum=float(counts @ centers),
            sum_squares=float(counts @ centers**2),
            bucket_limits=edges[1:].tolist(),
            bucket_counts=counts.tolist(),
            global_step=step,
            walltime=walltime,
        )

    def recipe(self, recipe_toml: str, walltime: float | None = None) -> None:
        self.writer.add_text("recipe", recipe_markdown(recipe_toml), 0, walltime=walltime)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------
# After the fact: the store's events of a run
# ---------------------------------------------------------------------------


def run_folder(root: str | Path, name: str, run_id: str) -> Path:
    """root/<run name>/<run_id>; the name's '/' (sweep/point) nests, other characters
    a path should not hold become '_'."""
    parts = [FOLDER_UNSAFE.sub("_", p) for p in name.split("/") if p]
    parts = [p if p not in (".", "..") else "_" for p in parts]
    return Path(root).joinpath(*parts, run_id)


def export_run(store: RunStore, run_id: str, root: str | Path) -> dict[str, Any]:
    """Write run `run_id`'s metrics, stats, histograms and recipe as event files under
    run_folder(root, ...). Returns {"folder", "scalars", "histograms"} (rows written)."""
    run = store.run(run_id)
    folder = run_folder(root, run["name"], run_id)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(EVENT_FILES):  # an earlier export of this run: replaced
        old.unlink()
    sink = EventSink(folder)
    try:
        sink.recipe(run["recipe"], walltime=run["created"])
        metrics = store.metrics(run_id)
        for row in metrics.itertuples():
            sink.metrics(row.step, {row.key: row.value}, walltime=row.time)
        stats = store.stats(run_id)
        for row in stats.itertuples():
            values = {"sqnr": row.sqnr, "saturation": row.saturation, "underflow": row.underflow}
            sink.stats(row.step, row.module, row.role, values, walltime=row.time)
        histograms = store.histograms(run_id)
        for row in histograms.itertuples():
            sink.histogram(row.step, row.module, row.edges, row.counts, walltime=row.time)
    finally:
        sink.close()
    scalars = len(metrics) + 3 * len(stats)
    return {"folder": folder, "scalars": scalars, "histograms": len(histograms)}


def export(store: RunStore, run_ids: list[str], destination: str) -> list[str]:
    """`nblab export ... --tensorboard DIR`: every run under DIR; one line per run."""
    lines = []
    for run_id in run_ids:
        done = export_run(store, run_id, destination)
        lines.append(
            f"{run_id}: {done['scalars']} scalars, {done['histograms']} histograms "
            f"-> {done['folder']}"
        )
    lines.append(f"read them with: tensorboard --logdir {destination}")
    return lines


# ---------------------------------------------------------------------------
# Live: what the trainer writes, also as events
# ---------------------------------------------------------------------------


class TensorBoardMirror:
    """A RunWriter that also writes every event it logs to TensorBoard event files.
    Everything else (run_id, store, buffered, ...) is the wrapped writer's.

    The SummaryWriter opens at the first event, with that event's step as purge_step:
    a run resuming from its checkpoint logs its later steps again, and TensorBoard
    then hides the events of the earlier attempt from that step on."""

    def __init__(self, writer: RunWriter, log_dir: str | Path, recipe_toml: str):
        self._writer, self._log_dir, self._recipe = writer, Path(log_dir), recipe_toml
        self._sink: EventSink | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    def __repr__(self) -> str:
        return f"TensorBoardMirror({self._writer!r}, {str(self._log_dir)!r})"

    def _events(self, step: int) -> EventSink:
        if self._sink is None:
            self._sink = EventSink(self._log_dir, purge_step=step)
            self._sink.recipe(self._recipe)
        return self._sink

    def log_metrics(self, step: int, values) -> None:
        self._writer.log_metrics(step, values)  # first: it validates
        self._events(step).metrics(step, dict(values))

    def log_stats(self, step, module, role, sqnr, saturation, underflow) -> None:
        self._writer.log_stats(step, module, role, sqnr, saturation, underflow)
        values = {"sqnr": sqnr, "saturation": saturation, "underflow": underflow}
        self._events(step).stats(step, module, role, values)

    def log_histogram(self, step, module, edges, counts) -> None:
        self._writer.log_histogram(step, module, edges, counts)
        if hasattr(edges, "tolist"):  # a tensor (any device) or an array
            edges, counts = edges.tolist(), counts.tolist()
        self._events(step).histogram(step, module, edges, counts)

    def flush(self) -> None:
        self._writer.flush()
        if self._sink is not None:
            self._sink.flush()

    def close(self, status: str = "succeeded", error: str | None = None) -> None:
        try:
            self._writer.close(status, error)
        finally:
            if self._sink is not None:
                self._sink.close()
                self._sink = None

    def __enter__(self) -> TensorBoardMirror:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._writer.__exit__(exc_type, exc, tb)
        finally:
            if self._sink is not None:
                self._sink.close()


def mirror(writer: RunWriter | None, recipe, run_dir: Path) -> RunWriter | TensorBoardMirror:
    """`writer`, wrapped in a TensorBoardMirror writing to run_dir/tensorboard when the
    recipe asks for live events (metrics.tensorboard); None stays None (not rank 0)."""
    if writer is None or not recipe.metrics.tensorboard:
        return writer
    return TensorBoardMirror(writer, Path(run_dir) / LIVE_FOLDER, recipe.to_toml())
