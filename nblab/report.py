"""Sweep reports: the final-metrics table, plots and tables that notebooks/report.ipynb
shows, and `build_report`, which executes that notebook into a shareable report.

    table = sweep_table("fp4-study")               # one row per point, best val loss first
    ipynb, html = build_report("fp4-study")        # $NBLAB_HOME/sweeps/fp4-study/report.*

`report.html` is self-contained: plots are PNG data URIs and no script or stylesheet is
fetched from the network, so it reads offline from a mail attachment.

This module reads recipes as plain TOML (no `Recipe` validation), so it imports
neither torch nor the trainer: a report of runs made by an older nblab still builds.
"""

from __future__ import annotations

import datetime as dt
import html
import importlib.metadata
import json
import math
import platform
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomli_w
from matplotlib.figure import Figure

from nblab import groups
from nblab.notebooks import execute, notebook
from nblab.recipe import dotted_fields
from nblab.runs import RunStore
from nblab.sweep import short_keys

REPORT_NOTEBOOK = notebook("report.ipynb")
HIGH_PRECISION_PRESETS = ("bf16",)  # precision.preset values the gap is measured against
DEFAULT_PRESET = "bf16"  # what a recipe without precision.preset means (Recipe's default)
FAILURE_STATUSES = ("failed", "diverged", "cancelled")
METRIC_KEYS = ("loss", "val_loss", "tokens_per_s", "peak_memory_bytes")
_TABLE_COLUMNS = (  # sweep_table's own columns: an axis named like one keeps its full path
    *("point", "status", "step", "steps", "final_loss", "final_val_loss", "best_val_loss"),
    *("gap_to_bf16", "tokens_per_s", "peak_memory_mib", "stopped_at", "error", "run_id"),
)
_SAFE_SWEEP = re.compile(r"[A-Za-z0-9._-]+")
_AT_STEP = re.compile(r"\bat step (\d+)")


# ---------------------------------------------------------------------------
# Loading a sweep
# ---------------------------------------------------------------------------


def known_sweeps(store: RunStore) -> list[str]:
    """Names of the sweeps that have at least one run in `store`, sorted."""
    return sorted({s for s in store.runs().sweep if isinstance(s, str)})


def check_sweep(sweep: str, store: RunStore) -> None:
    """Raise ValueError naming `sweep` and the known sweeps if it has no run in `store`."""
    if not isinstance(sweep, str) or store.runs(sweep=sweep).empty:
        known = known_sweeps(store)
        listing = ", ".join(known) if known else "none yet (start one with `nblab sweep`)"
        raise ValueError(f"unknown sweep {sweep!r} in {store.home}; known sweeps: {listing}")


def _same(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _step_at(error: str | None, step: Any) -> Any:
    match = _AT_STEP.search(error or "")
    if match:
        return int(match.group(1))
    return step if not pd.isna(step) else pd.NA


MAX_WEIGHT_PANELS = 24  # weight histogram panels in a report (a 200-point sweep: 24)


class SweepData:
    """One sweep read from the store: the latest run of each point, its recipe, metrics
    and quantization stats. Every table and plot of the report is a method here.

    `runs`: the store's run columns plus `point` (the run name without a `<sweep>/`
    prefix), `recipe_text` and `recipe` (the parsed TOML), oldest point first.
    `axes`: {dotted recipe field: sorted distinct values} for the fields that differ
    between points (the swept ones). `superseded`: how many older reruns were dropped.
    """

    def __init__(self, sweep: str, store: RunStore | None = None):
        store = store or RunStore()
        check_sweep(sweep, store)
        self.sweep, self.store = sweep, store
        self.generated = dt.datetime.now(dt.UTC)
        every = store.runs(sweep=sweep)
        every = every[every.kind != "merge"]  # merges have their own section (nblab.merge.report)
        prefix = f"{sweep}/"
        every["point"] = [n[len(prefix) :] if n.startswith(prefix) else n for n in every.name]
        # runs() is oldest first, so the last run of a point is its latest (re)run
        runs = every.drop_duplicates("point", keep="last").reset_index(drop=True)
        self.superseded = len(every) - len(runs)
        runs["recipe_text"] = [store.run(r)["recipe"] for r in runs.run_id]
        runs["recipe"] = [tomllib.loads(t) for t in runs.recipe_text]
        runs["preset"] = [r.get("precision", {}).get("preset", DEFAULT_PRESET) for r in runs.recipe]
        self.runs = runs
        flat = [dotted_fields({k: v for k, v in r.items() if k != "name"}) for r in runs.recipe]
        paths = sorted({p for f in flat for p in f})
        self.axes: dict[str, list] = {}
        for path in paths:
            values = {_same(f.get(path)): f.get(path) for f in flat}
            if len(values) > 1:
                self.axes[path] = [values[k] for k in sorted(values)]
        self.axis_names = {
            path: path if short in _TABLE_COLUMNS else short
            for path, short in short_keys(list(self.axes)).items()
        }
        self.axis_values = pd.DataFrame(
            [{self.axis_names[p]: f.get(p) for p in self.axes} for f in flat],
            index=runs.run_id,
        )
        ids = list(runs.run_id)
        self.metrics = store.metrics(ids, keys=list(METRIC_KEYS))
        self.stats = store.stats(ids)
        self._points = dict(zip(runs.run_id, runs.point, strict=True))
        # seeds of one configuration form one group (nblab.groups); every figure colours
        # a group, and its runs, the same
        runs["seed"] = [groups.seed_of(r) for r in runs.recipe]
        runs["group"] = groups.group(runs.point, runs.recipe, runs.kind)
        self.replicated = bool(runs.group.duplicated().any())
        self.colors = groups.colors(runs.group)
        self._group_of = dict(zip(runs.run_id, runs.group, strict=True))

    def __repr__(self) -> str:
        return f"SweepData({self.sweep!r}, points={len(self.runs)})"

    def point(self, run_id: str) -> str:
        return self._points[run_id]

    def color(self, run_id: str) -> str:
        """The colour of run `run_id` in every figure: its group's (its point's)."""
        return self.colors[self._group_of[run_id]]

    # -- text -------------------------------------------------------------------

    def title(self) -> str:
        """Markdown: the title with the sweep name and the date."""
        when = self.generated.strftime("%Y-%m-%d %H:%M UTC")
        return f"# Sweep report: {self.sweep}\n\nGenerated {when} from `{self.store.home}`."

    def overview(self) -> str:
        """Markdown: what was swept (axes and values), how many points, their statuses."""
        runs = self.runs
        counts = runs.status.value_counts()
        statuses = ", ".join(f"{n} {s}" for s, n in counts.items())
        start = pd.to_datetime(runs.created.min(), unit="s", utc=True)
        end = runs.ended.max()
        span = f"created {start:%Y-%m-%d %H:%M} UTC"
        if not pd.isna(end):
            span += f", last ended {pd.to_datetime(end, unit='s', utc=True):%Y-%m-%d %H:%M} UTC"
        lines = [
            f"**{len(runs)} points**: {statuses}; {span}.",
        ]
        if self.superseded:
            lines.append(f"\n{self.superseded} older rerun(s) of a point are left out.")
        if self.axes:
            lines += ["", "| swept field | values |", "|---|---|"]
            for path, values in self.axes.items():
                lines.append(f"| `{path}` | {', '.join(f'`{_fmt(v)}`' for v in values)} |")
        else:
            lines.append("\nThe points' recipes do not differ (apart from their names).")
        return "\n".join(lines)

    def base_recipe(self) -> str:
        """TOML: the part of the recipe all points share (the first point's recipe
        without the swept fields, which are listed in a comment on top)."""
        common = json.loads(json.dumps(self.runs.recipe.iloc[0], default=str))
        common.pop("name", None)
        for path in self.axes:
            parts = path.split(".")
            table = common
            for part in parts[:-1]:
                table = table.get(part, {})
            table.pop(parts[-1], None)
        common = _prune(common)
        header = [f"# base recipe of sweep {self.sweep!r}; swept (one value per point):"]
        header += [
            f"#   {path} = {' | '.join(_fmt(v) for v in values)}"
            for path, values in self.axes.items()
        ]
        params = self.runs.params.dropna()
        if not params.empty:  # recorded by the trainer once it built the model
            counts = " | ".join(f"{int(n):,}" for n in sorted(set(params)))
            header.append(f"# model parameters: {counts}")
        return "\n".join(header) + "\n\n" + tomli_w.dumps(common)

    # -- the table --------------------------------------------------------------

    def table(self) -> pd.DataFrame:
        """One row per point, sorted by final val loss (runs without one after those
        with one, failed/diverged/cancelled runs last). See `sweep_table`."""
        m = self.metrics.dropna(subset=["value"])
        by = m.groupby(["run_id", "key"]).value
        agg = pd.DataFrame(
            {"last": by.last(), "min": by.min(), "max": by.max(), "median": by.median()}
        )

        def metric(run_id: str, key: str, how: str) -> float:
            return float(agg.at[(run_id, key), how]) if (run_id, key) in agg.index else math.nan

        rows = []
        for run in self.runs.itertuples():
            failed = run.status in FAILURE_STATUSES
            rows.append(
                {
                    "point": run.point,
                    **self.axis_values.loc[run.run_id].to_dict(),
                    "preset": run.preset,
                    "status": run.status,
                    "step": run.step,
                    "steps": run.steps,
                    "final_loss": metric(run.run_id, "loss", "last"),
                    "final_val_loss": metric(run.run_id, "val_loss", "last"),
                    "best_val_loss": metric(run.run_id, "val_loss", "min"),
                    "tokens_per_s": metric(run.run_id, "tokens_per_s", "median"),
                    "peak_memory_mib": metric(run.run_id, "peak_memory_bytes", "max") / 2**20,
                    "stopped_at": _step_at(run.error, run.step) if failed else pd.NA,
                    "error": run.error if failed else None,
                    "run_id": run.run_id,
                }
            )
        table = pd.DataFrame(rows)
        reference = table.final_val_loss[
            table.preset.isin(HIGH_PRECISION_PRESETS) & (table.status == "succeeded")
        ].min()
        table.insert(
            table.columns.get_loc("best_val_loss") + 1,
            "gap_to_bf16",
            table.final_val_loss - reference,
        )
        table["stopped_at"] = table.stopped_at.astype("Int64")
        table["_failed"] = table.status.isin(FAILURE_STATUSES)
        table["_missing"] = table.final_val_loss.isna()
        table = table.sort_values(
            ["_failed", "_missing", "final_val_loss", "point"], kind="stable"
        ).drop(columns=["_failed", "_missing"])
        return table.reset_index(drop=True)

    def grouped_table(self) -> pd.DataFrame:
        """One row per group of seeds (a point and its replicates, nblab.groups), best
        mean final val loss first; groups with no succeeded run last.

        Columns: point (the group's label), its swept fields but the seed, preset,
        runs, seeds, status ("succeeded", or counts such as "2 succeeded, 1 diverged"),
        final_loss, final_val_loss and best_val_loss (means over the succeeded runs),
        final_val_loss_sd (their sample standard deviation), gap_to_bf16 (mean final val
        loss minus that of the best bf16 group), gap_to_bf16_se (its standard error,
        nblab.groups.gap), paired (whether that pairs the two groups' seeds),
        reference (the bf16 group the gaps are measured against),
        tokens_per_s (mean of the runs' medians), peak_memory_mib (max), run_ids."""
        per_run = self.table().set_index("run_id")
        seed_axis = self.axis_names.get(groups.SEED_FIELD)
        rows, by_seed = [], {}
        for label, members in self.runs.groupby("group", sort=False):
            mine = per_run.loc[list(members.run_id)]
            good = mine[mine.status == "succeeded"]
            counts = mine.status.value_counts()
            status = (
                "succeeded"
                if len(good) == len(mine)
                else ", ".join(f"{n} {s}" for s, n in counts.items())
            )
            seeds = list(members.seed)
            unique = len(set(seeds)) == len(seeds)
            keys = [s if unique else (label, i) for i, s in enumerate(seeds)]
            ok = dict(zip(keys, mine.status == "succeeded", strict=True))
            values = dict(zip(keys, mine.final_val_loss, strict=True))
            by_seed[label] = {k: v for k, v in values.items() if ok[k]}
            val, val_sd, _ = groups.mean_sd(good.final_val_loss)
            axes = {
                k: v
                for k, v in self.axis_values.loc[members.run_id.iloc[0]].items()
                if k != seed_axis
            }
            rows.append(
                {
                    "point": label,
                    **axes,
                    "preset": members.preset.iloc[0],
                    "runs": len(mine),
                    "seeds": ", ".join(str(s) for s in sorted(seeds)),
                    "status": status,
                    "final_loss": groups.mean_sd(good.final_loss)[0],
                    "final_val_loss": val,
                    "final_val_loss_sd": val_sd,
                    "best_val_loss": groups.mean_sd(good.best_val_loss)[0],
                    "tokens_per_s": groups.mean_sd(mine.tokens_per_s)[0],
                    "peak_memory_mib": mine.peak_memory_mib.max(),
                    "run_ids": list(members.run_id),
                    "_ok": len(good) > 0,
                }
            )
        table = pd.DataFrame(rows)
        bf16 = table[table.preset.isin(HIGH_PRECISION_PRESETS) & table["_ok"]]
        bf16 = bf16.dropna(subset=["final_val_loss"])
        reference = bf16.point.iloc[bf16.final_val_loss.argmin()] if len(bf16) else None
        gaps = [
            groups.gap(by_seed[p], by_seed[reference]) if reference else (math.nan,) * 2 + (False,)
            for p in table.point
        ]
        at = table.columns.get_loc("best_val_loss") + 1
        table.insert(at, "gap_to_bf16", [g for g, _, _ in gaps])
        table.insert(at + 1, "gap_to_bf16_se", [se for _, se, _ in gaps])
        table.insert(at + 2, "paired", [paired for _, _, paired in gaps])
        table.insert(at + 3, "reference", table.point == reference)
        table["_missing"] = table.final_val_loss.isna()
        table = table.sort_values(
            ["_ok", "_missing", "final_val_loss", "point"],
            ascending=[False, True, True, True],
            kind="stable",
        )
        return table.drop(columns=["_ok", "_missing"]).reset_index(drop=True)

    def noise_note(self) -> str:
        """Markdown, one paragraph: what the table's ranking can and cannot tell."""
        if not self.replicated:
            return (
                "**The ranking is from single runs** (one seed per point): it cannot say "
                "which differences are seed-to-seed noise. Add a `train.seed` axis to the "
                "sweep to measure that noise."
            )
        n = len(self.runs)
        g = self.runs.group.nunique()
        return (
            f"**Each row is a point over its seeds** ({n} runs in {g} points): losses are "
            "the mean ± the standard deviation over seeds, and `gap_to_bf16` is ± its "
            "standard error (paired by seed where both points ran the same seeds). A gap "
            "within twice its standard error is *within noise*: those points cannot be "
            "told apart by these runs."
        )

    def display_table(self) -> pd.DataFrame:
        """The table for reading: rounded, first line of each error, no run ids. With
        seeds (`replicated`) one row per point over its seeds, losses as mean ± sd."""
        if self.replicated:
            return self._display_grouped()
        table = self.table()
        table["error"] = [_first_line(e) if isinstance(e, str) else "" for e in table.error]
        table["stopped_at"] = table.stopped_at.astype(object).where(table.stopped_at.notna(), "")
        table["tokens_per_s"] = table.tokens_per_s.round(0)
        table["peak_memory_mib"] = table.peak_memory_mib.round(1)
        losses = ["final_loss", "final_val_loss", "best_val_loss", "gap_to_bf16"]
        table[losses] = table[losses].round(4)
        if table.peak_memory_mib.fillna(0).eq(0).all():  # CPU runs record no peak
            table = table.drop(columns="peak_memory_mib")
        return table.drop(columns="run_id").set_index("point")

    def _display_grouped(self) -> pd.DataFrame:
        table = self.grouped_table()
        table["final_val_loss"] = [
            _pm(m, sd) for m, sd in zip(table.final_val_loss, table.final_val_loss_sd, strict=True)
        ]
        table["noise"] = [
            "reference"
            if ref
            else ""
            if math.isnan(g) or math.isnan(se)
            else ("within noise" if abs(g) < 2 * se else "beyond noise")
            for g, se, ref in zip(
                table.gap_to_bf16, table.gap_to_bf16_se, table.reference, strict=True
            )
        ]
        table["gap_to_bf16"] = [
            _pm(g, se, sign=True)
            for g, se in zip(table.gap_to_bf16, table.gap_to_bf16_se, strict=True)
        ]
        table = table.rename(columns={"final_val_loss": "final_val_loss (± sd)"})
        table = table.rename(columns={"gap_to_bf16": "gap_to_bf16 (± se)"})
        table["tokens_per_s"] = table.tokens_per_s.round(0)
        table["peak_memory_mib"] = table.peak_memory_mib.round(1)
        table[["final_loss", "best_val_loss"]] = table[["final_loss", "best_val_loss"]].round(4)
        drop = ["final_val_loss_sd", "gap_to_bf16_se", "paired", "reference", "run_ids"]
        if table.peak_memory_mib.fillna(0).eq(0).all():
            drop.append("peak_memory_mib")
        return table.drop(columns=drop).set_index("point")

    # -- plots ------------------------------------------------------------------

    def curves(self, key: str) -> list[dict[str, Any]]:
        """What the curve figures draw for metric `key`, in table order: one entry per
        line, {"label", "color", "dashed", "step", "value", "sd"}. Without seeds a line
        per point (failures dashed, sd None). With seeds (`replicated`) a line per point
        over its seeds: the mean of its runs that did not fail at each step and their
        standard deviation (a band); each failed run of it a dashed line of its own."""
        m = self.metrics[self.metrics.key == key]
        lines = []
        if not self.replicated:
            for r in self.table().itertuples():
                curve = m[m.run_id == r.run_id]
                if not curve.empty:
                    lines.append(
                        {
                            "label": r.point,
                            "color": self.color(r.run_id),
                            "dashed": r.status in FAILURE_STATUSES,
                            "step": curve.step.to_numpy(),
                            "value": curve.value.to_numpy(),
                            "sd": None,
                        }
                    )
            return lines
        status = dict(zip(self.runs.run_id, self.runs.status, strict=True))
        for row in self.grouped_table().itertuples():
            color = self.colors[row.point]
            ok = [r for r in row.run_ids if status[r] not in FAILURE_STATUSES]
            wide = m[m.run_id.isin(ok)].pivot_table(
                index="step", columns="run_id", values="value", aggfunc="mean"
            )
            if not wide.empty:
                lines.append(
                    {
                        "label": f"{row.point} (mean of {len(ok)})",
                        "color": color,
                        "dashed": False,
                        "step": wide.index.to_numpy(),
                        "value": wide.mean(axis=1).to_numpy(),
                        "sd": wide.std(axis=1, ddof=1).to_numpy(),
                    }
                )
            for run_id in row.run_ids:
                curve = m[m.run_id == run_id]
                if status[run_id] in FAILURE_STATUSES and not curve.empty:
                    lines.append(
                        {
                            "label": f"{self.point(run_id)} ({status[run_id]})",
                            "color": color,
                            "dashed": True,
                            "step": curve.step.to_numpy(),
                            "value": curve.value.to_numpy(),
                            "sd": None,
                        }
                    )
        return lines

    def plot_curves(self, log_x: bool = False) -> Figure:
        """Loss and val loss against step, one line per point (failures dashed); with
        seeds the mean of each point's runs and a band of ± one standard deviation."""
        fig = Figure(figsize=(12, 4.5), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, key, title in zip(
            axes, ("loss", "val_loss"), ("train loss", "val loss"), strict=True
        ):
            lines = self.curves(key)
            for line in lines:
                marker = "o" if len(line["step"]) < 3 else None
                style = "--" if line["dashed"] else "-"
                x, y = line["step"], line["value"]
                ax.plot(x, y, style, color=line["color"], marker=marker, label=line["label"])
                if line["sd"] is not None:
                    sd = np.nan_to_num(line["sd"])
                    ax.fill_between(x, y - sd, y + sd, color=line["color"], alpha=0.2, lw=0)
            ax.set(title=title, xlabel="step", ylabel=key)
            if log_x:
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
            if not lines:
                _no_data(ax, f"no {key} recorded")
        handles, labels = axes[0].get_legend_handles_labels()
        if not handles:
            handles, labels = axes[1].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside right upper", fontsize="small")
        return fig

    def interactive_figure(self, log_x: bool = False):
        """The bokeh model of interactive_curves (None when nothing was recorded)."""
        import holoviews as hv

        hv.extension("bokeh", logo=False)
        panels = []
        for key in ("loss", "val_loss"):
            elements = []
            for line in self.curves(key):
                x, y, color = line["step"], line["value"], line["color"]
                if line["sd"] is not None:
                    band = hv.Spread((x, y, np.nan_to_num(line["sd"])), "step", [key, "sd"])
                    elements.append(band.opts(color=color, alpha=0.2, line_alpha=0))
                curve = hv.Curve((x, y), "step", key, label=line["label"])
                dash = "dashed" if line["dashed"] else "solid"
                elements.append(curve.opts(color=color, line_dash=dash))
            if elements:
                overlay = hv.Overlay(elements).opts(
                    hv.opts.Curve(tools=["hover"], line_width=2),
                    hv.opts.Overlay(
                        title=key, width=520, height=340, logx=log_x, legend_position="top_right"
                    ),
                )
                panels.append(overlay)
        if not panels:
            return None
        return hv.render(hv.Layout(panels).cols(2), backend="bokeh")

    def interactive_curves(self, log_x: bool = False) -> str:
        """Loss and val loss as an interactive holoviews (bokeh) plot: zoom, hover,
        a clickable legend, the same colours and bands as plot_curves. Returns HTML
        with BokehJS inlined, so report.html stays readable offline; the static PNG
        above serves where scripts do not run."""
        from bokeh.embed import components
        from bokeh.resources import Resources

        model = self.interactive_figure(log_x)
        if model is None:
            return "<p>No loss curves recorded.</p>"
        script, div = components(model)
        # BokehJS core inlined; nothing else: extensions that other packages register
        # (panel's module shims) would add <script src> tags that cannot load offline
        bokeh_js = "".join(
            f'<script type="text/javascript">{raw}</script>'
            for raw in Resources(mode="inline", components=["bokeh"]).js_raw
        )
        return bokeh_js + script + div

    def plot_throughput(self) -> Figure:
        """Median tokens/s of each point (horizontal bars, in table order, in the
        point's colour; with seeds the mean over its runs, ± their sd)."""
        if self.replicated:
            table = self.grouped_table()
            color = [self.colors[p] for p in table.point]
            spread = [
                groups.mean_sd(self.table().set_index("run_id").tokens_per_s.loc[ids])[1]
                for ids in table.run_ids
            ]
        else:
            table = self.table()
            color = [self.color(r) for r in table.run_id]
            spread = [math.nan] * len(table)
        table = table.assign(_color=color, _sd=spread)
        fig = Figure(figsize=(8, 0.5 + 0.35 * len(table)), layout="constrained")
        ax = fig.subplots()
        known = table.dropna(subset=["tokens_per_s"])
        if known.empty:
            _no_data(ax, "no tokens/s recorded")
            return fig
        xerr = None if known["_sd"].isna().all() else known["_sd"].fillna(0)
        ax.barh(known.point, known.tokens_per_s, xerr=xerr, color=list(known["_color"]))
        ax.invert_yaxis()
        ax.set(xlabel="tokens/s (median over logged intervals)", title="throughput")
        ax.grid(axis="x", alpha=0.3)
        return fig

    # -- weights ------------------------------------------------------------------

    def weight_module(self) -> str | None:
        """The module whose weights the report shows: the last block's down
        projection when the model has one (where low precision hurts most), else the
        last module with histograms."""
        modules = self.store.histogram_modules(list(self.runs.run_id))
        if not modules:
            return None
        downs = [m for m in modules if m.endswith("mlp.down")]
        return downs[-1] if downs else modules[-1]

    def plot_weights(self, module: str | None = None) -> Figure:
        """Weight histograms of `module`, one panel per run that recorded them, at most
        MAX_WEIGHT_PANELS: the first and the last recorded step overlaid (bins are fixed
        per run, so they compare directly). Without histograms, one line says so (not an
        empty panel per point: 200 of them took 18 s to lay out)."""
        module = module or self.weight_module()
        hist = (
            pd.DataFrame()
            if module is None
            else self.store.histograms(list(self.runs.run_id), module=module)
        )
        if hist.empty:
            fig = Figure(figsize=(6.4, 1.0), layout="constrained")
            what = f"for {module}" if module else ""
            _no_data(fig.subplots(), f"no weight histograms recorded {what}".strip())
            return fig
        having = set(hist.run_id)
        shown = [(r, p) for r, p in self._points.items() if r in having]
        total, shown = len(shown), shown[:MAX_WEIGHT_PANELS]
        cols = min(4, max(1, len(shown)))
        rows = -(-len(shown) // cols)
        fig = Figure(figsize=(3.2 * cols, 2.4 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).flatten()
        for ax, (run_id, point) in zip(axes, shown, strict=False):
            mine = hist[hist.run_id == run_id]
            for (_, row), style in zip(
                mine.iloc[[0, -1]].iterrows() if len(mine) > 1 else mine.iterrows(),
                ("--", "-"),
                strict=False,
            ):
                edges = np.asarray(row.edges)
                centers = (edges[1:] + edges[:-1]) / 2
                ax.plot(
                    centers, row.counts, style, color=self.color(run_id), label=f"step {row.step}"
                )
            ax.set_title(point, fontsize="small")
            ax.set_yscale("log")
            ax.legend(fontsize="x-small")
        for ax in axes[len(shown) :]:
            ax.set_visible(False)
        more = f" (the first {len(shown)} of {total} runs)" if total > len(shown) else ""
        fig.suptitle(f"weights of {module}{more}")
        return fig

    # -- quantization error -----------------------------------------------------

    def quantized_stats(self) -> pd.DataFrame:
        """Stats rows of the points whose preset is not high precision, with `point`."""
        hp = self.runs.run_id[self.runs.preset.isin(HIGH_PRECISION_PRESETS)]
        stats = self.stats[~self.stats.run_id.isin(hp)].copy()
        stats.insert(0, "point", stats.run_id.map(self._points))
        return stats

    def _point_order(self, points) -> list[str]:
        """`points` in table order (best val loss first)."""
        present = set(points)
        return [p for p in self.table().point if p in present]

    def sqnr_by_role(self) -> pd.DataFrame:
        """Mean SQNR (dB, over modules and recorded steps): a row per quantized point
        (table order), a column per tensor role. Empty when no stats were recorded."""
        stats = self.quantized_stats()
        if stats.empty:
            return pd.DataFrame()
        table = stats.pivot_table(index="point", columns="role", values="sqnr", aggfunc="mean")
        table = table.loc[self._point_order(table.index), list(dict.fromkeys(stats.role))]
        table.columns.name = "mean SQNR (dB) by role"
        return table.round(2)

    def worst_layers(self, n: int = 5) -> pd.DataFrame:
        """The `n` module/role pairs with the lowest mean SQNR in each quantized point
        (points in table order), with their mean saturation and underflow fractions."""
        stats = self.quantized_stats()
        columns = ["point", "module", "role", "sqnr", "saturation", "underflow"]
        if stats.empty:
            return pd.DataFrame(columns=columns)
        means = stats.groupby(["point", "module", "role"], as_index=False, sort=False)[
            ["sqnr", "saturation", "underflow"]
        ].mean()
        rank = {p: i for i, p in enumerate(self._point_order(means.point))}
        means["_rank"] = means.point.map(rank)
        worst = means.sort_values(["_rank", "sqnr"], kind="stable").groupby("point").head(n)
        return worst[columns].round(4).reset_index(drop=True)

    def plot_sqnr(self) -> Figure:
        """Heatmap of mean SQNR (dB): a row per module (in model order), a column per
        quantized point (table order), values written in the cells when they fit."""
        stats = self.quantized_stats()
        if stats.empty:
            fig = Figure(figsize=(6, 1.5))
            _no_data(fig.subplots(), "no quantization stats recorded")
            return fig
        grid = stats.pivot_table(index="module", columns="point", values="sqnr", aggfunc="mean")
        grid = grid.loc[list(dict.fromkeys(stats.module)), self._point_order(grid.columns)]
        rows, cols = grid.shape
        fig = Figure(figsize=(3 + 1.4 * cols, min(2 + 0.28 * rows, 30)), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis")
        ax.set_xticks(range(cols), grid.columns, rotation=30, ha="right")
        ax.set_yticks(range(rows), grid.index, fontsize="small")
        if rows <= 40 and cols <= 12:
            middle = np.nanmean(grid.to_numpy())
            for (i, j), value in np.ndenumerate(grid.to_numpy()):
                color = "white" if value < middle else "black"
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color=color)
        ax.set_title("mean SQNR (dB) per module, over roles and steps (low = more error)")
        fig.colorbar(image, ax=ax, label="SQNR (dB)")
        return fig

    # -- failures and recipes ---------------------------------------------------

    def failures(self) -> pd.DataFrame:
        """point, status, stopped_at, error of the failed/diverged/cancelled points."""
        table = self.table()
        bad = table[table.status.isin(FAILURE_STATUSES)]
        return bad[["point", "status", "stopped_at", "error", "run_id"]].reset_index(drop=True)

    def failures_html(self) -> str:
        """HTML: each failure with its full error text (escaped, preformatted)."""
        failures = self.failures()
        if failures.empty:
            return "<p>No point failed, diverged or was cancelled.</p>"
        parts = []
        for f in failures.itertuples():
            at = "" if pd.isna(f.stopped_at) else f" at step {f.stopped_at}"
            parts.append(
                f"<h4>{html.escape(f.point)}: {f.status}{at}</h4>"
                f"<p>run <code>{f.run_id}</code></p>"
                f"<pre>{html.escape(f.error or '(no error recorded)')}</pre>"
            )
        return "\n".join(parts)

    def recipes_html(self) -> str:
        """HTML: the exact recipe TOML of each point, each in a collapsed <details>."""
        parts = []
        for run in self.table()[["point", "run_id", "status"]].itertuples():
            text = self.runs.recipe_text[self.runs.run_id == run.run_id].iloc[0]
            parts.append(
                f"<details><summary><b>{html.escape(run.point)}</b> "
                f"(run <code>{run.run_id}</code>, {run.status})</summary>\n"
                f"<pre>{html.escape(text)}</pre></details>"
            )
        return "\n".join(parts)


def _prune(table: dict[str, Any]) -> dict[str, Any]:
    """`table` without the sub-tables that became empty."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            value = _prune(value)
            if not value:
                continue
        out[key] = value
    return out


def _first_line(text: Any, width: int = 48) -> Any:
    if not isinstance(text, str):
        return text
    line = next((s for s in text.strip().splitlines() if s.strip()), "")
    # a traceback's last line says what went wrong
    if text.startswith("Traceback"):
        line = text.strip().splitlines()[-1]
    return line if len(line) <= width else line[: width - 1] + "…"


def _pm(value: float, spread: float, *, sign: bool = False) -> str:
    """ "2.2106 ± 0.0180"; the value alone when the spread is unknown; "" for NaN."""
    if math.isnan(value):
        return ""
    text = f"{value:+.4f}" if sign else f"{value:.4f}"
    return text if math.isnan(spread) else f"{text} ± {spread:.4f}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------


def load_sweep(sweep: str, store: RunStore | None = None) -> SweepData:
    """Read sweep `sweep` from `store` (default: $NBLAB_HOME); ValueError if unknown."""
    return SweepData(sweep, store)


def sweep_table(sweep: str, store: RunStore | None = None) -> pd.DataFrame:
    """The final-metrics table of `sweep`: one row per point (its latest run).

    Columns: point, one column per swept field (short name, e.g. `preset`, `lr`),
    preset, status, step (done), steps (total), final_loss, final_val_loss,
    best_val_loss, gap_to_bf16 (final_val_loss minus the lowest final val loss of a
    succeeded bf16 point; NaN when there is none), tokens_per_s (median),
    peak_memory_mib, stopped_at (failed/diverged/cancelled: the step it stopped at,
    from "at step N" in the error, else the last step written), error (the error text
    of failed/diverged/cancelled points, else None), run_id.

    Sorted by final_val_loss; points without one follow, and failures come last.
    Raises ValueError naming `sweep` and the known sweeps when it has no run.
    """
    return SweepData(sweep, store).table()


def environment() -> dict[str, str]:
    """Versions and platform of the machine building the report, and nblab's commit."""
    env = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("nblab", "torch", "triton", "numpy", "pandas", "matplotlib", "papermill"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = "not installed"
    env["nblab commit"] = _git_commit(Path(__file__).resolve().parents[1])
    return env


def _git_commit(root: Path) -> str:
    if not (root / ".git").exists():
        return "unknown (not a git checkout)"
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (git failed)"


def environment_markdown() -> str:
    """Markdown table of `environment()`."""
    rows = [f"| {k} | `{v}` |" for k, v in environment().items()]
    return "\n".join(["| | version |", "|---|---|", *rows])


# ---------------------------------------------------------------------------
# Building report.ipynb and report.html
# ---------------------------------------------------------------------------

# The lab template without its network fetches: require.js, MathJax and mermaid come
# from CDNs, and the report uses none of them (no widgets, math or diagrams).
_OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
_REMOTE_TAG = re.compile(
    r"<(script|link)\b[^>]*\b(src|href)\s*=\s*[\"']?(https?:)?//[^>]*>(\s*</script>)?",
    re.IGNORECASE,
)


_IMG = re.compile(r"<img\b([^>]*?)\s*/?>", re.IGNORECASE)
_SRC = re.compile(r"""\s*\bsrc\s*=\s*("[^"]*"|'[^']*')""", re.IGNORECASE)


def _src_first(text: str) -> str:
    """Write each <img>'s src first (nbconvert's HTML pass sorts attributes, which puts
    alt and class before it), so `<img src="data:image/png;base64,` finds the plots."""

    def rewrite(match: re.Match) -> str:
        attrs = match.group(1)
        src = _SRC.search(attrs)
        if src is None:
            return match.group(0)
        rest = (attrs[: src.start()] + attrs[src.end() :]).strip()
        return f"<img src={src.group(1)}" + (f" {rest}" if rest else "") + "/>"

    return _IMG.sub(rewrite, text)


def remote_references(text: str) -> list[str]:
    """The <script src> / <link href> tags of `text` that fetch from the network."""
    return [m.group(0) for m in _REMOTE_TAG.finditer(text)]


def notebook_to_html(notebook: str | Path, html_path: str | Path, title: str | None = None) -> Path:
    """Convert an executed notebook to a self-contained HTML file (PNG data URIs, no
    network fetches: any remaining remote script/link tag is removed)."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    if title:
        nb.metadata["title"] = title
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[jinja2.DictLoader({"nblab_offline.html.j2": _OFFLINE_TEMPLATE})],
        template_file="nblab_offline.html.j2",
        embed_images=True,
        # a reader wants results, not the helper calls; report.ipynb keeps the code
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    body, _ = exporter.from_notebook_node(nb)
    body = _src_first(_REMOTE_TAG.sub("", body))
    html_path = Path(html_path)
    html_path.write_text(body, encoding="utf-8")
    return html_path


def build_report(
    sweep: str,
    *,
    store: RunStore | None = None,
    out_dir: str | Path | None = None,
    timeout: float = 600,
    log_x: bool = False,
) -> tuple[Path, Path]:
    """Execute notebooks/report.ipynb over `sweep`; return (report.ipynb, report.html).

    Writes into `out_dir` (default `$NBLAB_HOME/sweeps/<sweep>/`). `timeout`: seconds
    each notebook cell may run. `log_x`: log-scale step axes on the loss curves.
    Raises ValueError for an unknown sweep (before starting a kernel), and papermill's
    PapermillExecutionError if a cell fails (report.ipynb then shows where).
    """
    store = store or RunStore()
    check_sweep(sweep, store)
    if out_dir is None:
        if not _SAFE_SWEEP.fullmatch(sweep) or sweep in (".", ".."):
            raise ValueError(
                f"sweep name {sweep!r} cannot be a folder name (letters, digits, '.', '_', "
                "'-'); pass out_dir"
            )
        out_dir = store.home / "sweeps" / sweep
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ipynb, html_path = out_dir / "report.ipynb", out_dir / "report.html"
    if not REPORT_NOTEBOOK.exists():
        raise FileNotFoundError(f"the report notebook is missing: {REPORT_NOTEBOOK}")
    try:
        execute(
            REPORT_NOTEBOOK,
            ipynb,
            {"sweep": sweep, "nblab_home": str(store.home), "log_x": bool(log_x)},
            language="python",
            execution_timeout=timeout,
            cwd=str(out_dir),
        )
    except Exception as err:
        err.add_note(f"the partly executed report notebook is {ipynb}")
        raise
    notebook_to_html(ipynb, html_path, title=f"nblab sweep report: {sweep}")
    return ipynb, html_path
