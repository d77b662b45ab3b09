"""RunMonitor: live loss curves of many runs, read incrementally from the run store.

    monitor = RunMonitor("fp4-study", keys=("loss", "val_loss"), x="tokens")
    monitor                     # panel layout: bokeh figure + smoothing / axis controls
    monitor.refresh()           # what the periodic callback calls: read new rows, redraw

A panel periodic callback (an asyncio task on the kernel's own event loop, no thread)
calls `refresh()` every `interval_ms`. Each refresh reads only the rows past the last
step it has of each live run, keeps the full series in memory, and draws a min-max
downsample of about `points` points per run and key. It stops once every run has ended.

Runs that are one configuration over several seeds (nblab.groups: recipes equal but for
train.seed) are drawn as one line per configuration, the mean of its runs, with a band
of ± one standard deviation, as the report draws them; `group=False` draws every run.
Colours come from nblab.groups.colors, the report's palette.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nblab import groups
from nblab.runs import TERMINAL_STATUSES, RunStore
from nblab.runs.series import Series
from nblab.widgets.display import PanelView
from nblab.widgets.runset import resolve_runs
from nblab.widgets.sampling import downsample_indices, smooth

X_AXES = ("step", "tokens", "time")
BADGES = {
    "queued": "○",
    "running": "▶",
    "succeeded": "✓",
    "failed": "✗",
    "diverged": "⚠",
    "cancelled": "■",
}
DASHES = ("solid", "dashed", "dotted", "dotdash", "dashdot")
FAILED = ("failed", "diverged", "cancelled")  # left out of a group's mean and band


@dataclass
class _Series:
    """One run's one key, growing: numpy arrays doubled as needed."""

    step: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    value: np.ndarray = field(default_factory=lambda: np.empty(0))
    time: np.ndarray = field(default_factory=lambda: np.empty(0))

    def extend(self, step, value, time) -> None:
        self.step = np.concatenate([self.step, step])
        self.value = np.concatenate([self.value, value])
        self.time = np.concatenate([self.time, time])


class RunMonitor(PanelView):
    """Live overlay of metric `keys` for the runs of `runs_or_sweep` (a run id, run ids,
    a SweepHandle or a sweep name). x: "step", "tokens" (from the `tokens` metric) or
    "time" (seconds since the run started). `.data[run_id]`: that run's frame (key,
    step, x, value), downsampled and smoothed. group: draw runs that differ only in
    their seed as one mean line with a ± sd band (`.group_data[label]`: key, step, x,
    mean, sd, n); None (default) does so when some configuration has several runs."""

    def __init__(
        self,
        runs_or_sweep: Any,
        keys: tuple[str, ...] | list[str] = ("loss", "val_loss"),
        x: str = "step",
        smoothing: float = 0.0,
        log_x: bool = False,
        log_y: bool = False,
        interval_ms: int = 1000,
        store: RunStore | None = None,
        points: int = 2000,
        autostart: bool = True,
        title: str | None = None,
        group: bool | None = None,
    ):
        if x not in X_AXES:
            raise ValueError(f"x={x!r}; accepted: {', '.join(X_AXES)}")
        self.source = resolve_runs(runs_or_sweep, store)
        self.store = self.source.store
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.points = int(points)
        self.interval_ms = int(interval_ms)
        self.title = title or self.source.describe()
        self._x, self._smoothing, self._log_x, self._log_y = x, float(smoothing), log_x, log_y
        self._drawn: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        self.status: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.kinds: dict[str, str] = {}  # train | eval | merge
        self._group_setting = group
        self.groups: dict[str, str] = {}  # run_id -> its configuration's label
        self._recipes: dict[str, dict] = {}  # run_id -> parsed recipe, read once
        self._group_drawn: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        self._reset()
        self._figure_parts: dict[str, Any] | None = None
        self._panel = None
        self._callback = None
        self.refresh()
        if autostart and self.interval_ms > 0:
            self.start()

    # -- reading ----------------------------------------------------------------
    def _reset(self) -> None:
        self._series: dict[tuple[str, str], _Series] = {}
        self._last: dict[str, int] = {}  # run -> the last step read of any key
        self._key_last: dict[tuple[str, str], int] = {}  # (run, key) -> its last step read
        self._done: set[str] = set()  # ended and read after they ended: never read again
        self._started: dict[str, float] = {}

    def _fetch_keys(self) -> list[str]:
        return self.keys + (["tokens"] if self._x == "tokens" and "tokens" not in self.keys else [])

    def _read(self, run_ids: list[str]) -> dict[str, dict[str, Series]]:
        """New values of `run_ids`, {run: {key: Series}}: one read for runs with none
        yet, one from the lowest last step of the others. A run's values up to its last
        step read are dropped, but for a key not read at that step (logged after it)."""
        keys = self._fetch_keys()
        fresh = [r for r in run_ids if r not in self._last]
        going = [r for r in run_ids if r in self._last]
        new = self.store.series(fresh, keys) if fresh else {}
        if going:
            since = min(self._last[r] for r in going) - 1
            for run_id, by_key in self.store.series(going, keys, since_step=since).items():
                kept = {}
                for key, series in by_key.items():
                    floor = max(self._key_last.get((run_id, key), -1), self._last[run_id] - 1)
                    keep = series.step > floor
                    if keep.all():
                        kept[key] = series
                    elif keep.any():
                        kept[key] = Series(*(column[keep] for column in series))
                if kept:
                    new[run_id] = kept
        return new

    def refresh(self) -> int:
        """Read new rows from the store, redraw what changed; return the new row count."""
        runs = self.source.runs()
        run_ids = list(runs.run_id)
        self.status = dict(zip(runs.run_id, runs.status, strict=True))
        self.names = dict(zip(runs.run_id, runs.name, strict=True))
        self.kinds = dict(zip(runs.run_id, runs.kind, strict=True))
        for row in runs.itertuples():
            if pd.notna(row.started):
                self._started[row.run_id] = float(row.started)
        ended = {r for r in run_ids if self.status[r] in TERMINAL_STATUSES}
        new = self._read([r for r in run_ids if r not in self._done])
        self._done |= ended  # read once more after ending (its last flush), then never
        count = 0
        for run_id, by_key in new.items():
            for key, series in by_key.items():
                self._series.setdefault((run_id, key), _Series()).extend(*series)
                self._key_last[run_id, key] = int(series.step[-1])
                count += len(series.step)
            top = max(int(series.step[-1]) for series in by_key.values())
            self._last[run_id] = max(self._last.get(run_id, -1), top)
        changed = set(new)
        fresh = changed | (set(run_ids) - set(self._drawn))
        for run_id in fresh:
            self._drawn[run_id] = self._curves(run_id)
        self._regroup(run_ids)
        if self.grouped:
            touched = {self.groups[r] for r in fresh}
            for label in touched | (set(self.groups.values()) - set(self._group_drawn)):
                self._group_drawn[label] = self._group_curves(label)
        self._draw(run_ids, changed)
        if self._callback is not None and run_ids and len(ended) == len(run_ids):
            self.stop()  # everything ended and was read
        return count

    def _x_values(self, run_id: str, series: _Series) -> np.ndarray:
        if self._x == "step":
            return series.step.astype(np.float64)
        if self._x == "time":
            origin = self._started.get(run_id)
            if origin is None:
                origin = min(s.time[0] for (r, _), s in self._series.items() if r == run_id)
            return series.time - origin
        tokens = self._series.get((run_id, "tokens"))
        if tokens is None or not len(tokens.step) or tokens.step[-1] <= 0:
            return np.full(len(series.step), np.nan)
        per_step = tokens.value[-1] / tokens.step[-1]  # batch_size * seq_len, constant
        return series.step * per_step

    def _curves(self, run_id: str) -> dict[str, dict[str, np.ndarray]]:
        """key -> {"step", "x", "y"}: smoothed, then downsampled to about `points`."""
        out = {}
        for key in self.keys:
            series = self._series.get((run_id, key))
            if series is None or not len(series.step):
                continue
            y = smooth(series.value, self._smoothing)
            keep = downsample_indices(y, self.points)
            x = self._x_values(run_id, series)
            out[key] = {"step": series.step[keep], "x": x[keep], "y": y[keep]}
        return out

    # -- groups of seeds ------------------------------------------------------------
    def _regroup(self, run_ids: list[str]) -> None:
        """Label every run with its configuration (nblab.groups), reading the recipes of
        runs seen for the first time."""
        import tomllib

        if list(self.groups) == run_ids:
            return  # the same runs: the same groups
        unread = [r for r in run_ids if r not in self._recipes]
        if unread:
            for run_id, text in self.store.recipes(unread).items():
                self._recipes[run_id] = tomllib.loads(text)
        names = [self.names.get(r, r).rpartition("/")[2] for r in run_ids]
        kinds = [self.kinds.get(r, "train") for r in run_ids]
        labels = groups.group(names, [self._recipes[r] for r in run_ids], kinds)
        self.groups = dict(zip(run_ids, labels, strict=True))

    @property
    def grouped(self) -> bool:
        """Whether runs are drawn per configuration (mean and band) or one by one."""
        if self._group_setting is not None:
            return self._group_setting
        return len(set(self.groups.values())) < len(self.groups)

    def _members(self, label: str) -> list[str]:
        """The runs of a configuration that enter its mean: those that did not fail
        (all of them when every one failed)."""
        runs = [r for r, g in self.groups.items() if g == label]
        ok = [r for r in runs if self.status.get(r) not in FAILED]
        return ok or runs

    def _group_curves(self, label: str) -> dict[str, dict[str, np.ndarray]]:
        """key -> {"step", "x", "y" (the mean), "lower", "upper" (± sd), "n"} over the
        group's runs at each step any of them logged, downsampled by the mean."""
        out = {}
        for key in self.keys:
            parts = []
            for run_id in self._members(label):
                series = self._series.get((run_id, key))
                if series is None or not len(series.step):
                    continue
                parts.append(
                    pd.DataFrame(
                        {
                            "step": series.step,
                            "x": self._x_values(run_id, series),
                            "y": smooth(series.value, self._smoothing),
                        }
                    )
                )
            if not parts:
                continue
            by_step = pd.concat(parts).groupby("step")
            mean, sd = by_step.y.mean(), by_step.y.std(ddof=1).fillna(0.0)
            keep = downsample_indices(mean.to_numpy(), self.points)
            out[key] = {
                "step": mean.index.to_numpy()[keep],
                "x": by_step.x.mean().to_numpy()[keep],
                "y": mean.to_numpy()[keep],
                "lower": (mean - sd).to_numpy()[keep],
                "upper": (mean + sd).to_numpy()[keep],
                "n": by_step.y.count().to_numpy()[keep],
            }
        return out

    @property
    def group_data(self) -> dict[str, pd.DataFrame]:
        """label -> what is drawn for that configuration: key, step, x, mean, sd, n."""
        out = {}
        for label, curves in self._group_drawn.items():
            parts = [
                pd.DataFrame(
                    {
                        "key": key,
                        "step": c["step"],
                        "x": c["x"],
                        "mean": c["y"],
                        "sd": (c["upper"] - c["lower"]) / 2,
                        "n": c["n"],
                    }
                )
                for key, c in curves.items()
            ]
            out[label] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        return out

    @property
    def data(self) -> dict[str, pd.DataFrame]:
        """run_id -> the frame drawn for it: key, step, x, value (downsampled, smoothed)."""
        out = {}
        for run_id, curves in self._drawn.items():
            parts = [
                pd.DataFrame({"key": key, "step": c["step"], "x": c["x"], "value": c["y"]})
                for key, c in curves.items()
            ]
            empty = pd.DataFrame({"key": [], "step": [], "x": [], "value": []})
            out[run_id] = pd.concat(parts, ignore_index=True) if parts else empty
        return out

    def raw(self, run_id: str, key: str) -> pd.DataFrame:
        """Every row read so far of one run's key (not downsampled): step, value, time."""
        s = self._series.get((run_id, key), _Series())
        return pd.DataFrame({"step": s.step, "value": s.value, "time": s.time})

    # -- settings (the controls call these) ---------------------------------------
    def set_view(
        self,
        *,
        x: str | None = None,
        smoothing: float | None = None,
        log_x: bool | None = None,
        log_y: bool | None = None,
    ) -> None:
        """Change the view; recomputes every run's frame (and reads tokens if needed)."""
        if x is not None and x not in X_AXES:
            raise ValueError(f"x={x!r}; accepted: {', '.join(X_AXES)}")
        refetch = x == "tokens" and self._x != "tokens" and "tokens" not in self.keys
        self._x = x or self._x
        self._smoothing = self._smoothing if smoothing is None else float(smoothing)
        axes = (log_x, log_y) != (None, None)
        self._log_x = self._log_x if log_x is None else log_x
        self._log_y = self._log_y if log_y is None else log_y
        if refetch:
            self._reset()
            self._drawn, self._group_drawn = {}, {}
        else:
            self._drawn = {r: self._curves(r) for r in self._drawn}
            self._group_drawn = {g: self._group_curves(g) for g in self._group_drawn}
        if axes:
            self._figure_parts = None  # bokeh fixes the axis type when a figure is made
        if refetch:
            self.refresh()
        else:
            self._draw(list(self._drawn), set(self._drawn))

    # -- drawing (bokeh) --------------------------------------------------------
    def _label(self, run_id: str) -> str:
        status = self.status.get(run_id, "?")
        kind = self.kinds.get(run_id, "train")
        kind = "" if kind == "train" else f"{kind} "  # eval or merge: drawn as points
        return f"{BADGES.get(status, '?')} {kind}{self.names.get(run_id, run_id)} ({status})"

    def _new_figure(self) -> dict[str, Any]:
        from bokeh.models import HoverTool, Legend
        from bokeh.plotting import figure

        fig = figure(
            height=380,
            sizing_mode="stretch_width",
            x_axis_type="log" if self._log_x else "linear",
            y_axis_type="log" if self._log_y else "linear",
            x_axis_label=self._x,
            y_axis_label=", ".join(self.keys),
            title=self.title,
            tools="pan,wheel_zoom,box_zoom,reset,save",
        )
        fig.add_tools(
            HoverTool(
                tooltips=[
                    ("run", "$name"),
                    ("step", "@step"),
                    (self._x, "@x{0,0.[00]}"),
                    ("value", "@y{0.0000}"),
                ]
            )
        )
        legend = Legend(items=[], click_policy="hide", location="top_right")
        fig.add_layout(legend, "right")
        parts = {"figure": fig, "legend": legend, "sources": {}, "items": {}, "labels": {}}
        return parts | {"grouped": self.grouped}

    def _group_label(self, label: str) -> str:
        runs = [r for r, g in self.groups.items() if g == label]
        counts = pd.Series([self.status.get(r, "?") for r in runs]).value_counts()
        for status in ("running", "queued", "succeeded"):  # the badge of the least done
            if status in counts:
                break
        else:
            status = counts.index[0]
        text = ", ".join(f"{n} {s}" for s, n in counts.items())
        return f"{BADGES.get(status, '?')} {label} ({len(runs)} runs: {text})"

    def _entries(self, run_ids: list[str], changed: set[str]):
        """What the figure draws: (id, name, legend label, colour, curves by key,
        changed), one per run, or one per configuration when grouped."""
        if not self.grouped:
            palette = groups.colors(run_ids)
            return [
                (r, self.names.get(r, r), self._label(r), palette[r], self._drawn.get(r, {}))
                + (r in changed,)
                for r in run_ids
            ]
        labels = [self.groups[r] for r in run_ids]
        palette = groups.colors(labels)
        touched = {self.groups[r] for r in changed}
        return [
            (
                f"group:{label}",
                label,
                self._group_label(label),
                palette[label],
                self._group_drawn.get(label, {}),
                label in touched,
            )
            for label in dict.fromkeys(labels)
        ]

    def _draw(self, run_ids: list[str], changed: set[str]) -> None:
        if self._figure_parts is not None and self._figure_parts["grouped"] != self.grouped:
            self._figure_parts = None  # a second seed arrived: redraw as configurations
        if self._figure_parts is None:
            self._figure_parts = self._new_figure()
            changed = set(run_ids)
            if self._panel is not None:
                self._panel_parts["plot"].object = self._figure_parts["figure"]
        parts = self._figure_parts
        from bokeh.core.properties import value
        from bokeh.models import (
            ColumnDataSource,
            GlyphRenderer,
            LegendItem,
            Line,
            Scatter,
            VArea,
        )

        # Renderers and legend items are made here and added to the figure once at the
        # end: figure.line() and a growing legend list cost a few times more per run
        added, new_items = [], []
        for entry, name, label, color, curves, dirty in self._entries(run_ids, changed):
            renderers = []
            for k, key in enumerate(self.keys):
                source = parts["sources"].get((entry, key))
                if source is None:
                    empty = {"x": [], "y": [], "step": []}
                    if self.grouped:
                        empty |= {"lower": [], "upper": [], "n": []}
                    source = ColumnDataSource(dict(curves[key]) if key in curves else empty)
                    parts["sources"][(entry, key)] = source
                    if self.grouped:  # the band first, under its line
                        band = VArea(x="x", y1="lower", y2="upper", fill_color=color)
                        band.fill_alpha = 0.2
                        renderers.append(GlyphRenderer(data_source=source, glyph=band))
                    if self.kinds.get(entry, "train") != "train":  # eval, merge: a point a key
                        line = Scatter(x="x", y="y", size=9, fill_color=color, line_color=color)
                    else:
                        line = Line(
                            x="x",
                            y="y",
                            line_color=color,
                            line_width=1.6,
                            line_dash=DASHES[k % len(DASHES)],
                        )
                    renderers.append(
                        GlyphRenderer(data_source=source, glyph=line, name=f"{name} {key}")
                    )
                elif (dirty or not len(source.data["x"])) and key in curves:
                    source.data = dict(curves[key])
            added += renderers
            item = parts["items"].get(entry)
            if item is None:
                item = LegendItem(label=label, renderers=renderers)
                parts["items"][entry] = item
                new_items.append(item)
            elif parts["labels"][entry] != label:
                # value(): a bare string assigned later would name a data column, and the
                # page would show "Invalid field" (the constructor converts it by itself)
                item.label = value(label)
            parts["labels"][entry] = label
        if added:
            parts["figure"].renderers = [*parts["figure"].renderers, *added]
        if new_items:
            parts["legend"].items = [*parts["legend"].items, *new_items]
        if self._panel is not None:
            self._panel_parts["status"].object = self._summary(run_ids)
            self._push()

    def _push(self) -> None:
        """Send the bokeh models' changes to the notebook page. Panel syncs its own
        widgets, but edits made straight to bokeh models (the sources, the legend) reach
        a notebook only through push_notebook; elsewhere (a server) it does nothing."""
        import panel as pn

        pn.io.push_notebook(self._panel)

    def _summary(self, run_ids: list[str]) -> str:
        counts = pd.Series([self.status.get(r, "?") for r in run_ids]).value_counts()
        dashes = ", ".join(f"{k}: {DASHES[i % len(DASHES)]}" for i, k in enumerate(self.keys))
        text = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no runs yet"
        return f"**{len(run_ids)} runs**: {text} · lines {dashes}"

    @property
    def legend(self) -> dict[str, str]:
        """run_id (or "group:<label>" when grouped) -> its legend label (status badge,
        name, status)."""
        return dict(self._figure_parts["labels"])

    @property
    def figure(self):
        """The bokeh figure (rebuilt when log axes change)."""
        return self._figure_parts["figure"]

    # -- panel layout and the periodic callback -----------------------------------
    @property
    def panel(self):
        if self._panel is None:
            import panel as pn

            smoothing = pn.widgets.FloatSlider(
                label="smoothing", start=0, end=0.99, step=0.01, value=self._smoothing
            )
            x = pn.widgets.RadioButtonGroup(label="x", options=list(X_AXES), value=self._x)
            log_x = pn.widgets.Checkbox(label="log x", value=self._log_x)
            log_y = pn.widgets.Checkbox(label="log y", value=self._log_y)
            smoothing.param.watch(lambda e: self.set_view(smoothing=e.new), "value_throttled")
            x.param.watch(lambda e: self.set_view(x=e.new), "value")
            log_x.param.watch(lambda e: self.set_view(log_x=e.new), "value")
            log_y.param.watch(lambda e: self.set_view(log_y=e.new), "value")
            plot = pn.pane.Bokeh(self.figure, sizing_mode="stretch_width")
            status = pn.pane.Markdown(self._summary(list(self._drawn)))
            self._panel_parts = {"plot": plot, "status": status, "smoothing": smoothing}
            self._panel = pn.Column(
                pn.Row(x, smoothing, log_x, log_y), plot, status, sizing_mode="stretch_width"
            )
        return self._panel

    def start(self) -> None:
        """Refresh every interval_ms on the kernel's event loop (a no-op without one)."""
        import panel as pn

        if self._callback is None:
            self._callback = pn.state.add_periodic_callback(self.refresh, period=self.interval_ms)

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    @property
    def running(self) -> bool:
        return self._callback is not None

    def __repr__(self) -> str:
        return f"RunMonitor({self.source.describe()!r}, keys={self.keys}, x={self._x!r})"
