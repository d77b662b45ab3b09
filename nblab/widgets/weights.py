"""WeightDistribution: a run's per-module weight histograms against its format's grid.

    view = WeightDistribution(run_id, module="layers.0.mlp.down")
    view.set(step=100)              # the step slider
    view.grid                       # representable values at the typical block scale

The grid is that of the run's forward weight spec (precision role fwd_w) scaled as a
typical block of this histogram would be: a block's amax is taken at the median of
the largest of `block` draws from the histogram (the |w| quantile 0.5 ** (1 / block));
power-of-two scales (e8m0, pow2) round it down as the floor rule does. Values between
grid lines round; values past the outer lines saturate.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from nblab.runs import RunStore
from nblab.widgets.display import PanelView
from nblab.widgets.runset import holoviews, resolve_runs


def weight_spec(recipe_toml: str):
    """The QuantSpec of the fwd_w role of a run's recipe, None when it stays high."""
    from nblab.recipe import Recipe

    return Recipe.from_toml(recipe_toml).precision.resolve().roles["fwd_w"]


def typical_amax(edges: np.ndarray, counts: np.ndarray, group: int | None) -> float:
    """The median amax of a group of `group` values drawn from the histogram (the whole
    tensor's amax when group is None)."""
    centers = np.abs((edges[:-1] + edges[1:]) / 2)
    order = np.argsort(centers)
    mags, weight = centers[order], np.asarray(counts, dtype=np.float64)[order]
    if weight.sum() == 0:
        return 0.0
    if group is None:
        return float(np.abs(edges[[0, -1]]).max())
    cdf = np.cumsum(weight) / weight.sum()
    return float(mags[min(np.searchsorted(cdf, 0.5 ** (1 / group)), len(mags) - 1)])


def scaled_grid(spec, amax: float) -> tuple[np.ndarray, float] | None:
    """(signed representable values, the scale) of `spec` for a group with `amax`."""
    from nblab.widgets.format_explorer import value_grid

    grid = None if spec is None else value_grid(spec)
    if grid is None or amax <= 0:
        return None
    fmt = spec.element_format
    if spec.scale in ("e8m0", "pow2"):
        scale = 2.0 ** (math.floor(math.log2(amax)) - fmt.emax)
    else:
        scale = amax / fmt.max
    return grid * scale, scale


class WeightDistribution(PanelView):
    """Histograms of one run (a run id or a one-run handle): `.modules`, `.steps`,
    `.histogram` (edges, counts of the chosen module and step), `.grid`."""

    def __init__(
        self,
        run: Any,
        module: str | None = None,
        step: int | None = None,
        *,
        store: RunStore | None = None,
    ):
        runs = resolve_runs(run, store)
        ids = runs.run_ids()
        if len(ids) != 1:
            raise ValueError(f"WeightDistribution shows one run; {run!r} has {len(ids)}")
        self.store, self.run_id = runs.store, ids[0]
        self.frame: pd.DataFrame = self.store.histograms(self.run_id)
        self.spec = weight_spec(self.store.run(self.run_id)["recipe"])
        self.modules = list(dict.fromkeys(self.frame.module))
        self.steps = sorted(set(self.frame.step))
        if not self.modules:
            raise ValueError(
                f"run {self.run_id} has no histograms yet (metrics.histogram_interval)"
            )
        self.module = module if module is not None else self.modules[0]
        self.step = step if step is not None else self.steps[-1]
        self._panel = None
        self.set()

    def set(self, module: str | None = None, step: int | None = None) -> None:
        """Choose the module and/or step (the nearest logged step at or before it)."""
        if module is not None:
            if module not in self.modules:
                raise KeyError(f"module {module!r}; this run has {', '.join(self.modules)}")
            self.module = module
        if step is not None:
            earlier = [s for s in self.steps if s <= step]
            self.step = earlier[-1] if earlier else self.steps[0]
        rows = self.frame[(self.frame.module == self.module) & (self.frame.step == self.step)]
        if rows.empty:  # this module was not logged at that step: its latest before
            rows = self.frame[(self.frame.module == self.module) & (self.frame.step <= self.step)]
            rows = rows.tail(1) if not rows.empty else self.frame[self.frame.module == self.module]
        row = rows.iloc[-1]
        self.histogram = (np.asarray(row.edges, float), np.asarray(row.counts, float))
        group = self.spec.block if self.spec is not None else None
        amax = typical_amax(*self.histogram, group)
        scaled = scaled_grid(self.spec, amax)
        self.grid, self.scale = scaled if scaled else (None, None)
        if self._panel is not None:
            self._plot.object = self.plot()

    def plot(self):
        hv = holoviews()

        edges, counts = self.histogram
        hist = hv.Histogram((edges, counts), kdims=["weight"], vdims=["count"]).opts(
            alpha=0.6, responsive=True, height=300, tools=["hover"]
        )
        what = self.spec.describe() if self.spec is not None else "high precision"
        title = f"{self.module} @ step {self.step} ({what})"
        if self.grid is None:
            return hist.opts(title=title + ": no grid")
        top = float(counts.max()) if len(counts) else 1.0
        inside = self.grid[(self.grid >= edges[0]) & (self.grid <= edges[-1])]
        spikes = hv.Spikes(inside, kdims=["weight"]).opts(
            color="#d62728", spike_length=top, alpha=0.5
        )
        limit = float(np.abs(self.grid).max())
        bounds = hv.VLine(limit).opts(color="black", line_dash="dashed") * hv.VLine(-limit).opts(
            color="black", line_dash="dashed"
        )
        return (hist * spikes * bounds).opts(title=title)

    @property
    def panel(self):
        if self._panel is None:
            import panel as pn

            module = pn.widgets.Select(label="module", options=self.modules, value=self.module)
            step = pn.widgets.DiscreteSlider(label="step", options=self.steps, value=self.step)
            module.param.watch(lambda e: self.set(module=e.new), "value")
            step.param.watch(lambda e: self.set(step=e.new), "value")
            self._plot = pn.pane.HoloViews(self.plot(), sizing_mode="stretch_width")
            self._panel = pn.Column(pn.Row(module, step), self._plot, sizing_mode="stretch_width")
        return self._panel
