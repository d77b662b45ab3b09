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
from nblab.widgets.runset import holoviews, resolve_runs

LAYERS = ("sqnr", "saturation", "underflow")
# Steps are categories (one column each, evenly spaced whatever the stats interval);
# past this many, only every k-th step is labelled so the labels do not pile up.
MAX_STEP_LABELS = 20


def step_labels_hook(steps: list[str]):
    """A holoviews hook that blanks all but about MAX_STEP_LABELS of the step labels
    (first, every k-th, last) on the categorical x axis."""
    k = max(1, -(-len(steps) // MAX_STEP_LABELS))
    shown = {*steps[::k], *steps[-1:]}
    hidden = {s: "" for s in steps if s not in shown}

    def hook(plot, element):
        plot.state.xaxis.major_label_overrides = hidden

    return hook


class QuantErrorHeatmap:
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

        long = self.data.stack().rename("value").reset_index()
        long["step"] = long.step.astype(str)
        steps = [str(s) for s in self.data.columns]
        cmap = "RdYlGn" if self.layer == "sqnr" else "Reds"
        heat = hv.HeatMap(long, ["step", "module"], "value").opts(
            cmap=cmap,
            colorbar=True,
            tools=["hover", "tap"],
            responsive=True,
            height=max(240, 18 * len(self.data) + 80),
            invert_yaxis=True,
            xrotation=45,
            hooks=[step_labels_hook(steps)],
            title=f"{self.names.get(self.run_id, self.run_id)}: {self.layer} of {self.role}",
        )
        tap = hv.streams.Tap(source=heat)
        tap.add_subscriber(lambda x, y: x is not None and y is not None and self.select(y, int(x)))
        return heat

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

    def __panel__(self):
        return self.panel

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.panel._repr_mimebundle_(include, exclude)
