"""Evaluations read back from the run store, for the report, the widgets and the CLI.
Imports neither torch nor the trainer (as nblab.report does not).

    evals = eval_runs(store)                 # one row per eval run, with its eval.json
    section = EvalReport(load_sweep("fp4"))  # the report's sections for a sweep
    section.ptq_table(); section.ptq_vs_trained(); section.plot_sensitivity(run_id)

An evaluation belongs to a sweep's report when it is a run of the sweep, or when its
source is one of the sweep's runs.
"""

from __future__ import annotations

import json
import math
import tomllib
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nblab.runs import RunStore

EVAL_FILE = "eval.json"  # as nblab.eval.run
SCAN_FILE = "sensitivity.json"
ADVICE_FILE = "advice.json"
HIGH_PRECISION = ("bf16", "fp32")  # formats that quantize nothing worth a gap
METRICS = ("val_loss", "val_ppl", "val_accuracy", "bits_per_element")  # of an evaluation
EVAL_COLUMNS = (
    *("run_id", "name", "sweep", "status", "source", "step", "precision", "weights_only"),
    *("scan", "batches", *METRICS),
    *("advice", "created"),
)


def _json(path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_json(store: RunStore, run_id: str, name: str) -> Any:
    """A JSON file of a run's folder, or None when it is not there."""
    return _json(store.run_dir(run_id) / name)


def eval_runs(store: RunStore, run_ids: list[str] | None = None) -> pd.DataFrame:
    """One row per eval run (of `run_ids`, default all), oldest first: EVAL_COLUMNS.
    Fields come from the run's eval.json, else (a run that has not finished) its recipe."""
    frame = store.runs()
    frame = frame[frame.kind == "eval"]
    if run_ids is not None:
        frame = frame[frame.run_id.isin(run_ids)]
    rows = []
    for run in frame.itertuples():
        record = read_json(store, run.run_id, EVAL_FILE)
        if record is None:
            e = tomllib.loads(store.run(run.run_id)["recipe"]).get("eval", {})
            sources = json.loads(run.sources or "[]")
            record = {
                "source": e.get("source"),
                "step": sources[0].get("step") if sources else e.get("step"),
                "precision": e.get("precision", ""),
                "weights_only": e.get("weights_only", False),
                "scan": e.get("scan", ""),
                "batches": e.get("batches"),
                "metrics": {},
            }
        metrics = record.get("metrics", {})
        rows.append(
            {
                "run_id": run.run_id,
                "name": run.name,
                "sweep": run.sweep,
                "status": run.status,
                **{k: record.get(k) for k in ("source", "step", "precision", "weights_only")},
                "scan": record.get("scan", ""),
                "batches": record.get("batches"),
                **{k: metrics.get(k, math.nan) for k in METRICS},
                "advice": (store.run_dir(run.run_id) / ADVICE_FILE).exists(),
                "created": run.created,
            }
        )
    return pd.DataFrame(rows, columns=list(EVAL_COLUMNS))


def find_scan(
    store: RunStore, source: str, step: int, precision: str, weights_only: bool, batches: int
) -> tuple[str, dict[str, Any]] | None:
    """The newest succeeded module scan of this source, step, format and batches:
    (run_id, its sensitivity.json), or None."""
    evals = eval_runs(store)
    match = evals[
        (evals.status == "succeeded")
        & (evals.source == source)
        & (evals.step == step)
        & (evals.precision == precision)
        & (evals.weights_only == weights_only)
        & (evals.scan == "module")
        & (evals.batches == batches)
    ]
    for run_id in reversed(list(match.run_id)):
        data = read_json(store, run_id, SCAN_FILE)
        if data is not None:
            return run_id, data
    return None


def scan_frame(data: dict[str, Any]) -> pd.DataFrame:
    """A sensitivity.json's rows as a DataFrame (module, role, delta_loss, sqnr_db, ...)."""
    return pd.DataFrame(data["rows"])


def plot_sensitivity(data: dict[str, Any], title: str = "") -> Figure:
    """The sensitivity map of a scan: Δ val loss per module (rows, in model order) and role
    (columns), beside the SQNR (dB) of the same tensors, and SQNR against Δ loss."""
    rows = scan_frame(data)
    modules = list(dict.fromkeys(rows.module))
    delta = rows.pivot_table(index="module", columns="role", values="delta_loss", dropna=False)
    sqnr = rows.pivot_table(index="module", columns="role", values="sqnr_db", dropna=False)
    delta, sqnr = delta.reindex(modules), sqnr.reindex(modules)
    height = min(2.5 + 0.26 * len(modules), 30)
    fig = Figure(figsize=(13, height), layout="constrained")
    ax_d, ax_s, ax_c = fig.subplots(1, 3, width_ratios=[1.2, 1.2, 1.6])
    for ax, grid, cmap, label in (
        (ax_d, delta, "Reds", "Δ val loss"),
        (ax_s, sqnr, "viridis", "SQNR (dB)"),
    ):
        values = grid.to_numpy(dtype=float)
        image = ax.imshow(values, aspect="auto", cmap=cmap)
        ax.set_xticks(range(grid.shape[1]), list(grid.columns))
        ax.set_yticks(range(len(modules)), modules if ax is ax_d else [""] * len(modules))
        ax.tick_params(axis="y", labelsize="small")
        fig.colorbar(image, ax=ax, label=label, shrink=0.8)
        ax.set_title(label)
    known = rows.dropna(subset=["delta_loss", "sqnr_db"])
    ax_c.scatter(known.sqnr_db, known.delta_loss, s=14)
    rho = spearman(known.sqnr_db, -known.delta_loss)
    ax_c.set(
        xlabel="SQNR (dB)",
        ylabel="Δ val loss",
        title=f"does SQNR predict damage? Spearman ρ(SQNR, −Δ) = {rho:.2f}",
    )
    ax_c.grid(alpha=0.3)
    wo = " weights only" if data.get("weights_only") else ""
    fig.suptitle(title or f"sensitivity to {data.get('precision')}{wo} by {data.get('by')}")
    return fig


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equal-length series (NaN below 3 points)."""
    a, b = pd.Series(list(a), dtype=float), pd.Series(list(b), dtype=float)
    if len(a) < 3:
        return math.nan
    ra, rb = a.rank().to_numpy(), b.rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def advice_rows(store: RunStore, run_ids: list[str]) -> pd.DataFrame:
    """One row per advice among `run_ids`: predicted against measured."""
    columns = [
        *("run_id", "source", "preset", "budget", "bits_budget", "kept", "bits_per_element"),
        *("predicted_delta", "measured_delta", "trained_val_loss", "source_val_loss", "patch"),
    ]
    rows = []
    for run_id in run_ids:
        advice = read_json(store, run_id, ADVICE_FILE)
        if advice is None:
            continue
        record = read_json(store, run_id, EVAL_FILE) or {}
        measured = advice.get("measured_delta")
        if measured is None and "val_loss" in record.get("metrics", {}):  # a job measured it
            measured = record["metrics"]["val_loss"] - advice["base_loss"]
        rows.append(
            {
                "run_id": run_id,
                "source": record.get("source"),
                **{k: advice.get(k) for k in ("preset", "budget", "bits_budget")},
                "kept": len(advice.get("keep", [])),
                **{k: advice.get(k) for k in ("bits_per_element", "predicted_delta")},
                "measured_delta": measured,
                "trained_val_loss": advice.get("trained_val_loss"),
                "source_val_loss": advice.get("source_val_loss"),
                "patch": ", ".join(advice.get("patch", [])),
            }
        )
    return pd.DataFrame(rows, columns=columns)


class EvalReport:
    """The report's evaluation sections for one sweep (a nblab.report.SweepData)."""

    def __init__(self, data):
        self.data, self.store = data, data.store
        sweep_ids = set(data.runs.run_id)
        every = eval_runs(self.store)
        mine = every.sweep.eq(data.sweep) | every.source.isin(sweep_ids)
        self.evals = every[mine & (every.status == "succeeded")].reset_index(drop=True)
        self.points = dict(zip(data.runs.run_id, data.runs.point, strict=True))
        self.presets = dict(zip(data.runs.run_id, data.runs.preset, strict=True))

    @property
    def empty(self) -> bool:
        return self.evals.empty

    def _source_name(self, run_id: str) -> str:
        if run_id in self.points:
            return self.points[run_id]
        try:
            return self.store.run(run_id)["name"]
        except KeyError:
            return run_id

    def _logged_val_loss(self, run_id: str, step: int) -> float:
        m = self.store.metrics(run_id, keys=["val_loss"])
        m = m[m.step == step]
        return float(m.value.iloc[-1]) if len(m) else math.nan

    def ptq_table(self) -> pd.DataFrame:
        """Format x (weights only, weights + activations): a row per source checkpoint and
        format, val losses and their gap to the checkpoint in high precision (the source
        run's logged val loss at that step when it trained in bf16), bits per element."""
        ptq = self.evals[(self.evals.scan == "") & ~self.evals.advice]
        columns = [
            *("source", "step", "format", "bits_per_element", "weights_only_val_loss"),
            *("weights_act_val_loss", "high_precision_val_loss", "gap_weights_only"),
            "gap_weights_act",
        ]
        if ptq.empty:
            return pd.DataFrame(columns=columns)
        rows = []
        for (source, step, fmt), group in ptq.groupby(["source", "step", "precision"], sort=False):
            latest = group.groupby("weights_only").tail(1).set_index("weights_only")
            wo = latest.val_loss.get(True, math.nan)
            wa = latest.val_loss.get(False, math.nan)
            hp = (
                self._logged_val_loss(source, int(step)) if self._trained_high(source) else math.nan
            )
            rows.append(
                {
                    "source": self._source_name(source),
                    "step": int(step),
                    "format": fmt,
                    "bits_per_element": float(latest.bits_per_element.iloc[-1]),
                    "weights_only_val_loss": wo,
                    "weights_act_val_loss": wa,
                    "high_precision_val_loss": hp,
                    "gap_weights_only": wo - hp,
                    "gap_weights_act": wa - hp,
                }
            )
        return pd.DataFrame(rows, columns=columns).round(4)

    def _trained_high(self, run_id: str) -> bool:
        if run_id in self.presets:
            return self.presets[run_id] in HIGH_PRECISION
        try:
            recipe = tomllib.loads(self.store.run(run_id)["recipe"])
        except KeyError:
            return False
        return recipe.get("precision", {}).get("preset", "bf16") in HIGH_PRECISION

    def ptq_vs_trained(self) -> pd.DataFrame:
        """Per format the sweep trained in and a high-precision point was quantized to
        after training: the val loss trained in the format against PTQ in it."""
        columns = [
            *("format", "trained_point", "trained_val_loss", "ptq_source", "ptq_val_loss"),
            *("high_precision_val_loss", "trained_gap", "ptq_gap"),
        ]
        table = self.data.table()
        trained = table[(table.status == "succeeded") & ~table.preset.isin(HIGH_PRECISION)]
        ptq = self.ptq_table()
        rows = []
        for t in trained.itertuples():
            match = ptq[(ptq.format == t.preset) & ptq.high_precision_val_loss.notna()]
            for p in match.itertuples():
                hp = p.high_precision_val_loss
                rows.append(
                    {
                        "format": t.preset,
                        "trained_point": t.point,
                        "trained_val_loss": t.final_val_loss,
                        "ptq_source": p.source,
                        "ptq_val_loss": p.weights_act_val_loss,
                        "high_precision_val_loss": hp,
                        "trained_gap": t.final_val_loss - hp,
                        "ptq_gap": p.weights_act_val_loss - hp,
                    }
                )
        return pd.DataFrame(rows, columns=columns).round(4)

    def scans(self) -> list[tuple[str, dict[str, Any]]]:
        """(run_id, sensitivity.json) of each scan, oldest first."""
        out = []
        for run_id in self.evals.run_id[self.evals.scan != ""]:
            data = read_json(self.store, run_id, SCAN_FILE)
            if data is not None:
                out.append((run_id, data))
        return out

    def advice(self) -> pd.DataFrame:
        return advice_rows(self.store, list(self.evals.run_id[self.evals.advice])).round(4)

    def display(self) -> None:
        """The report's cell: each section that has rows, with its heading (IPython)."""
        from IPython.display import Markdown, display

        if self.empty:
            display(Markdown("No evaluation of this sweep's checkpoints was recorded."))
            return
        display(Markdown("**Post-training quantization**"), self.ptq_table())
        versus = self.ptq_vs_trained()
        if not versus.empty:
            display(Markdown("**PTQ against training in the format**"), versus)
        for run_id, scan in self.scans():
            display(Markdown(f"**Sensitivity map** (run `{run_id}`)"), plot_sensitivity(scan))
        advice = self.advice()
        if not advice.empty:
            display(Markdown("**Precision advisor: predicted against measured Δ loss**"))
            display(advice.set_index("run_id"))


def display_evaluations(data) -> None:
    """The report's evaluation sections of sweep `data` (a nblab.report.SweepData)."""
    EvalReport(data).display()


__all__ = [
    "ADVICE_FILE",
    "EVAL_COLUMNS",
    "EVAL_FILE",
    "SCAN_FILE",
    "EvalReport",
    "advice_rows",
    "display_evaluations",
    "eval_runs",
    "find_scan",
    "plot_sensitivity",
    "read_json",
    "scan_frame",
    "spearman",
]
