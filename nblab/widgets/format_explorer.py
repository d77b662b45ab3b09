"""FormatExplorer: quantize one sample with several formats and compare the error.

    explorer = FormatExplorer(specs=("mxfp8", "mxfp4", "nvfp4"), sample="heavy-tailed")
    explorer.results            # spec, format, sqnr_db, saturation, underflow, rel_err_mean
    explorer.set(hadamard=True, sr=True)   # what a random Hadamard transform and SR do
    explorer                    # panel: value grids, error histograms, SQNR table

Numbers come from nblab_kernels (quant_stats, fake_quantize), the same code training
uses, so a format added to formats.py shows up here without edits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from nblab.widgets.display import PanelView
from nblab.widgets.runset import holoviews
from nblab_kernels import QUANT_PRESETS, QuantSpec, fake_quantize, quant_stats

SAMPLES = ("gaussian", "laplace", "heavy-tailed")
SEED = 0  # one seed for the sample and the SR bits: the explorer is reproducible


def make_sample(kind: str, shape: tuple[int, int] = (256, 256), seed: int = SEED) -> torch.Tensor:
    """A synthetic tensor: gaussian, laplace, or heavy-tailed (gaussian with 0.1% of
    the elements scaled by 30, the outliers activations have)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(shape, generator=gen)
    if kind == "laplace":
        u = torch.rand(shape, generator=gen) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs()) / np.sqrt(2)  # unit variance
    if kind == "heavy-tailed":
        x = torch.randn(shape, generator=gen)
        outliers = torch.rand(shape, generator=gen) < 1e-3
        return torch.where(outliers, x * 30, x)
    raise ValueError(f"sample {kind!r}; accepted: {', '.join(SAMPLES)} or a tensor")


def explore_spec(spec: QuantSpec | str, *, hadamard: bool = False, sr: bool = False) -> QuantSpec:
    """The spec with a random Hadamard transform (16 or 32, nesting with its block) and
    stochastic rounding switched on where the format allows them (not for casts)."""
    spec = QUANT_PRESETS[spec] if isinstance(spec, str) else spec
    if spec.is_cast:
        return spec
    changes: dict[str, Any] = {}
    if hadamard and not spec.hadamard:
        changes["hadamard"] = min(spec.block, 32) if spec.block else 32
    if sr:
        changes["rounding"] = "sr"
    return spec.replace(**changes) if changes else spec


def value_grid(spec: QuantSpec) -> np.ndarray | None:
    """The signed representable values of the spec's element format (before scaling);
    None for the plain casts."""
    values = spec.element_format.values
    if values is None:
        return None
    v = values.numpy()
    return np.concatenate([-v[:0:-1], v])


class FormatExplorer(PanelView):
    """Compare `specs` (QUANT_PRESETS names) on one sample: SAMPLES name, or a tensor
    (e.g. a weight) passed in `tensors={"name": tensor}` and chosen by name."""

    def __init__(
        self,
        specs: tuple[str, ...] | list[str] = ("mxfp8", "mxfp4", "nvfp4"),
        sample: str = "gaussian",
        *,
        hadamard: bool = False,
        sr: bool = False,
        tensors: dict[str, torch.Tensor] | None = None,
        shape: tuple[int, int] = (256, 256),
        bins: int = 81,
    ):
        self.tensors = dict(tensors or {})
        self.shape, self.bins = shape, bins
        self.specs, self.sample, self.hadamard, self.sr = list(specs), sample, hadamard, sr
        self._panel = None
        self.compute()

    @property
    def samples(self) -> list[str]:
        return [*SAMPLES, *self.tensors]

    def tensor(self) -> torch.Tensor:
        if self.sample in self.tensors:
            return self.tensors[self.sample].detach().float().cpu()
        return make_sample(self.sample, self.shape)

    def set(self, **changes: Any) -> pd.DataFrame:
        """Change specs / sample / hadamard / sr and recompute; returns `.results`."""
        for key, value in changes.items():
            if key not in ("specs", "sample", "hadamard", "sr"):
                raise TypeError(f"unknown setting {key!r}; accepted: specs, sample, hadamard, sr")
            setattr(self, key, list(value) if key == "specs" else value)
        self.compute()
        if self._panel is not None:
            self._redraw()
        return self.results

    def compute(self) -> pd.DataFrame:
        """Quantize the sample with each spec: `.results` (one row per spec) and
        `.errors` (spec -> the error x - dequantize(quantize(x)), flattened)."""
        if self.sample not in self.samples:
            raise ValueError(f"sample {self.sample!r}; accepted: {', '.join(self.samples)}")
        x = self.tensor()
        rows, self.errors, self.used = [], {}, {}
        for name in self.specs:
            spec = explore_spec(name, hadamard=self.hadamard, sr=self.sr)
            stats = quant_stats(x, spec, seed=SEED)
            self.used[name] = spec
            self.errors[name] = (x - fake_quantize(x, spec, seed=SEED)).reshape(-1).numpy()
            rows.append(
                {
                    "spec": name,
                    "format": spec.describe(),
                    "sqnr_db": stats.sqnr_db,
                    "saturation": stats.saturation,
                    "underflow": stats.underflow,
                    "rel_err_mean": stats.rel_err_mean,
                }
            )
        self.results = pd.DataFrame(rows)
        return self.results

    # -- plots (holoviews on bokeh, in a panel layout) ----------------------------------
    def grid_plot(self):
        hv = holoviews()

        spikes = []
        for i, name in enumerate(self.specs):
            grid = value_grid(self.used[name])
            if grid is None:
                continue
            frame = pd.DataFrame({"value": grid, "format": name, "height": 1.0})
            spikes.append(
                hv.Spikes(frame, "value", ["height", "format"], label=name).opts(
                    position=float(i), spike_length=0.8, line_width=2
                )
            )
        if not spikes:
            return hv.Text(0, 0, "plain casts have no small grid")
        return hv.Overlay(spikes).opts(
            title="element grids (unscaled)", yaxis=None, height=260, responsive=True
        )

    def error_plot(self):
        hv = holoviews()

        everything = np.concatenate(list(self.errors.values())) if self.errors else np.zeros(1)
        lim = float(np.quantile(np.abs(everything), 0.999)) or 1.0
        edges = np.linspace(-lim, lim, self.bins + 1)
        curves = [
            hv.Histogram(np.histogram(np.clip(err, -lim, lim), edges), label=name).opts(alpha=0.45)
            for name, err in self.errors.items()
        ]
        return hv.Overlay(curves).opts(
            title=f"error x - q(x), {self.sample}",
            height=260,
            responsive=True,
            logy=True,
            ylim=(0.5, None),  # empty bins (count 0) have no log: the axis starts below 1
        )

    def sqnr_plot(self):
        hv = holoviews()

        return hv.Bars(self.results, "spec", "sqnr_db").opts(
            title="SQNR (dB)", height=260, responsive=True, tools=["hover"]
        )

    @property
    def panel(self):
        if self._panel is None:
            import panel as pn

            specs = pn.widgets.MultiChoice(
                label="specs", options=list(QUANT_PRESETS), value=list(self.specs)
            )
            sample = pn.widgets.Select(label="sample", options=self.samples, value=self.sample)
            hadamard = pn.widgets.Checkbox(label="Hadamard", value=self.hadamard)
            sr = pn.widgets.Checkbox(label="stochastic rounding", value=self.sr)
            specs.param.watch(lambda e: self.set(specs=e.new), "value")
            sample.param.watch(lambda e: self.set(sample=e.new), "value")
            hadamard.param.watch(lambda e: self.set(hadamard=e.new), "value")
            sr.param.watch(lambda e: self.set(sr=e.new), "value")
            self._plots = pn.Column(sizing_mode="stretch_width")
            self._panel = pn.Column(
                pn.Row(specs, sample, pn.Column(hadamard, sr)),
                self._plots,
                sizing_mode="stretch_width",
            )
            self._redraw()
        return self._panel

    def _redraw(self) -> None:
        import panel as pn

        self._plots[:] = [
            pn.Row(
                pn.pane.HoloViews(self.grid_plot(), sizing_mode="stretch_width"),
                pn.pane.HoloViews(self.sqnr_plot(), sizing_mode="stretch_width"),
            ),
            pn.pane.HoloViews(self.error_plot(), sizing_mode="stretch_width"),
            pn.pane.DataFrame(self.results.round(5), index=False),
        ]
