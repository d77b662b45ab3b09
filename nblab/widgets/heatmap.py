"""QuantErrorHeatmap: module x step quantization error of a run, per tensor role.

    view = QuantErrorHeatmap("fp4-study", role="fwd_w", layer="sqnr")
    view.data                   # DataFrame: modules (rows, as logged) x steps (columns)
    view.select("layers.1.mlp.down", 50)   # what a click on a cell does: its histograms

Layers: sqnr (dB), saturation and underflow (fractions). A sweep or several runs get
a run selector; the heatmap shows one run at a time.
"""

from __future__ import annotations

from typing import Any

from nblab.runs import RunStore
from nblab.widgets.display import PanelView
from nblab.widgets.runset import holoviews, resolve_runs

LAYERS = ("sqnr", "saturation", "underflow")
# Steps are drawn as evenly spaced columns (one per recorded step, whatever the stats
# interval), on a numeric axis at positions 0..n-1; past this many, only every k-th
# step is labelled so the labels do not pile up.
MAX_STEP_LABELS = 20


def step_ticks(steps: list) -> list[tuple[int, str]]:
    """(column position, step label) of the labelled steps: all of them up to
    MAX_STEP_LABELS, else the first, every k-th and the last.

    The axis is numeric on purpose: BokehJS draws every factor of a categorical axis
    and ignores `major_label_overrides` there, so blanking labels on one does nothing
    in the browser and hundreds of steps overprint into a black band."""
    k = max(1, -(-len(steps) // MAX_STEP_LABELS))
    shown = sorted({*range(0, len(steps), k), *([len(steps) - 1] if steps else [])})
    return [(i, str(steps[i])) for i in shown]


class QuantErrorHeatmap(PanelView):
    def __init__(
        self,
        run_or_sweep: Any,
        role: str | None = None,
        layer: str = "sqnr",
        *,
        run: str | None = None,
        store: RunStore | None = None,
    ):
        if layer not in LAYERS:
            raise ValueError(f"layer={layer!r}; accepted: {', '.join(LAYERS)}")
        self.source = resolve_runs(run_or_sweep, store)
        self.store = self.source.store
        self.run_ids = self.source.run_ids()
        if not self.run_ids:
            raise ValueError(f"{run_or_sweep!r} has no runs")
        self.names = dict(zip(*self.source.runs()[["run_id", "name"]].T.values, strict=True))
        self.layer, self.role = layer, role
        self.detail = None
        self._panel = None
        self.set(run=run or self.run_ids[0])

    def set(self, *, run: str | None = None, role: str | None = None, layer: str | None = None):
        """Choose the run, role and/or layer; recompute `.data`."""
        if run is not None:
            if run not in self.run_ids:
                raise KeyError(f"run {run!r} is not one of {', '.join(self.run_ids)}")
            self.run_id = run
            self.stats = self.store.stats(run)
            self.roles = list(dict.fromkeys(self.stats.role))
            if self.role not in self.roles:
                self.role = self.roles[0] if self.roles else self.role
        if role is not None:
            self.role = role
        if layer is not None:
            if layer not in LAYERS:
                raise ValueError(f"layer={layer!r}; accepted: {', '.join(LAYERS)}")
            self.layer = layer
        rows = self.stats[self.stats.role == self.role]
        modules = list(dict.fromkeys(rows.module))  # logged order: model order
        self.data = (
            rows.pivot_table(index="module", columns="step", values=self.layer, aggfunc="mean")
            .reindex(modules)
            .rename_axis(index="module", columns="step")
        )
        if self._panel is not None:
            self._plot.object = self.plot()
        return self.data

    def plot(self):
        hv = holoviews()

        steps = list(self.data.columns)
        position = {step: i for i, step in enumerate(steps)}
        long = self.data.stack().rename("value").reset_index()
        long.insert(0, "column", long.step.map(position))
        cmap = "RdYlGn" if self.layer == "sqnr" else "Reds"
        heat = hv.HeatMap(long, ["column", "module"], ["value", "step"]).opts(
            cmap=cmap,
            colorbar=True,
            tools=["tap"],
            hover_tooltips=[("module", "@module"), ("step", "@step"), (self.layer, "@value")],
            responsive=True,
            height=max(240, 18 * len(self.data) + 80),
            invert_yaxis=True,
            xlabel="step",
            xticks=step_ticks(steps) or None,  # none yet: holoviews takes no empty list
            xrotation=45 if len(steps) > 8 else 0,
            title=f"{self.names.get(self.run_id, self.run_id)}: {self.layer} of {self.role}",
        )
        tap = hv.streams.Tap(source=heat)
        tap.add_subscriber(lambda x, y: self._tapped(x, y, steps))
        return heat

    def _tapped(self, x, y, steps: list) -> None:
        """A click at (column position x, module y): that cell's histograms."""
        if x is None or y is None or not steps:
            return
        column = min(max(round(x), 0), len(steps) - 1)
        self.select(y, int(steps[column]))

    def select(self, module: str, step: int):
        """Show `module`'s weight histograms at `step` (what a click on a cell does);
        None when the run logged no histograms."""
        from nblab.widgets.weights import WeightDistribution

        try:
            self.detail = WeightDistribution(self.run_id, module, step, store=self.store)
        except (ValueError, KeyError) as err:
            self.detail = None
            message = str(err)
        if self._panel is not None:
            import panel as pn

            self._detail[:] = [self.detail.panel if self.detail else pn.pane.Markdown(message)]
        return self.detail

    @property
    def panel(self):
        if self._panel is None:
            import panel as pn

            run = pn.widgets.Select(
                label="run", options={self.names.get(r, r): r for r in self.run_ids}
            )
            role = pn.widgets.Select(label="role", options=self.roles, value=self.role)
            layer = pn.widgets.RadioButtonGroup(options=list(LAYERS), value=self.layer)
            run.param.watch(lambda e: self.set(run=e.new), "value")
            role.param.watch(lambda e: self.set(role=e.new), "value")
            layer.param.watch(lambda e: self.set(layer=e.new), "value")
            self._plot = pn.pane.HoloViews(self.plot(), sizing_mode="stretch_width")
            self._detail = pn.Column(pn.pane.Markdown("*click a cell for its histograms*"))
            self._panel = pn.Column(
                pn.Row(run, role, layer), self._plot, self._detail, sizing_mode="stretch_width"
            )
        return self._panel
