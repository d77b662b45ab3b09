"""SensitivityMap: which modules a format damages, from a sensitivity scan (nblab
sensitivity), with the quantization error of the same tensors beside it.

    view = SensitivityMap("20261206-101500-1a2b")   # a scan run, or a training run (its scans)
    view.data          # Δ val loss: modules (rows, model order) x roles (columns)
    view.sqnr          # SQNR (dB) of the same tensors, same layout
    view.correlation   # Spearman ρ(SQNR, −Δ loss): does SQNR predict the damage?

A training run with several scans gets a selector; the map shows one scan at a time.
"""

from __future__ import annotations

import pandas as pd

from nblab.eval.report import SCAN_FILE, eval_runs, read_json, scan_frame, spearman
from nblab.runs import RunStore
from nblab.widgets.display import PanelView
from nblab.widgets.runset import holoviews


def scans_of(run_id: str, store: RunStore) -> list[str]:
    """The scan runs `run_id` names: itself when it is one, else the succeeded scans of
    that training run, oldest first. KeyError names what was found instead."""
    run = store.run(run_id)  # KeyError: unknown run
    evals = eval_runs(store)
    if run["kind"] == "eval":
        if read_json(store, run_id, SCAN_FILE) is None:
            raise KeyError(f"run {run_id} is an evaluation without a sensitivity scan")
        return [run_id]
    mine = evals[(evals.source == run_id) & (evals.scan != "") & (evals.status == "succeeded")]
    if mine.empty:
        raise KeyError(
            f"run {run_id} has no sensitivity scan yet: nblab sensitivity {run_id} --precision P"
        )
    return list(mine.run_id)


class SensitivityMap(PanelView):
    def __init__(self, run: str, *, scan: str | None = None, store: RunStore | None = None):
        self.store = store or RunStore()
        self.scan_ids = scans_of(run, self.store)
        self.names = {r: self.store.run(r)["name"] for r in self.scan_ids}
        self._panel = None
        self.set(scan or self.scan_ids[-1])

    def set(self, scan: str) -> pd.DataFrame:
        """Show scan run `scan`; recompute `.data`, `.sqnr`, `.correlation`."""
        if scan not in self.scan_ids:
            raise KeyError(f"scan {scan!r} is not one of {', '.join(self.scan_ids)}")
        self.scan_id = scan
        self.scan = read_json(self.store, scan, SCAN_FILE)
        rows = scan_frame(self.scan)
        self.rows = rows
        modules = list(dict.fromkeys(rows.module))
        roles = list(dict.fromkeys(rows.role))
        self.data = (
            rows.pivot_table(index="module", columns="role", values="delta_loss", dropna=False)
            .reindex(index=modules, columns=roles)
            .rename_axis(index="module", columns="role")
        )
        self.sqnr = (
            rows.pivot_table(index="module", columns="role", values="sqnr_db", dropna=False)
            .reindex(index=modules, columns=roles)
            .rename_axis(index="module", columns="role")
        )
        known = rows.dropna(subset=["delta_loss", "sqnr_db"])
        self.correlation = spearman(known.sqnr_db, -known.delta_loss)
        if self._panel is not None:
            self._plot.object = self.plot()
        return self.data

    def most_sensitive(self, n: int = 5) -> pd.DataFrame:
        """The n rows with the largest Δ val loss."""
        columns = ["module", "role", "delta_loss", "sqnr_db", "saturation", "bits"]
        return self.rows.nlargest(n, "delta_loss")[columns].reset_index(drop=True)

    def plot(self):
        hv = holoviews()
        height = max(240, 18 * len(self.data) + 90)

        def heat(grid: pd.DataFrame, label: str, cmap: str):
            long = grid.reset_index().melt(id_vars="module", var_name="role", value_name="value")
            return hv.HeatMap(long, ["role", "module"], "value").opts(
                cmap=cmap,
                colorbar=True,
                tools=["hover"],
                width=380,
                height=height,
                invert_yaxis=True,
                title=label,
            )

        scan = self.scan
        wo = " weights only" if scan.get("weights_only") else ""
        delta = heat(self.data, f"Δ val loss ({scan['precision']}{wo})", "Reds")
        sqnr = heat(self.sqnr, "SQNR (dB) of the same tensors", "viridis").opts(yaxis=None)
        known = self.rows.dropna(subset=["delta_loss", "sqnr_db"])
        scatter = hv.Scatter(known, "sqnr_db", ["delta_loss", "module", "role"]).opts(
            tools=["hover"],
            size=6,
            width=380,
            height=320,
            xlabel="SQNR (dB)",
            ylabel="Δ val loss",
            title=f"Spearman ρ(SQNR, −Δ) = {self.correlation:.2f}",
        )
        return (delta + sqnr + scatter).cols(3)

    @property
    def panel(self):
        if self._panel is None:
            import panel as pn

            choice = pn.widgets.Select(
                label="scan",
                options={self.names[r]: r for r in self.scan_ids},
                value=self.scan_id,
            )
            choice.param.watch(lambda e: self.set(e.new), "value")
            self._plot = pn.pane.HoloViews(self.plot())
            self._panel = pn.Column(choice, self._plot)
        return self._panel

    def __repr__(self) -> str:
        return f"SensitivityMap({self.scan_id!r}, {len(self.data)} modules)"
