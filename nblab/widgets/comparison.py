"""compare(sweep): the report's final-metrics table and loss curves, inline."""

from __future__ import annotations

from nblab.runs import RunStore
from nblab.widgets.display import PanelView


class Comparison(PanelView):
    """The sweep table (best val loss first, gap to bf16) and the curves plot of
    `nblab report`, from nblab.report.SweepData (`.data`): with seeds, a row and a
    band per point over its seeds, as the report groups them."""

    def __init__(self, sweep: str, *, store: RunStore | None = None, log_x: bool = False):
        from nblab.report import SweepData

        self.data = SweepData(sweep, store)
        self.log_x = log_x
        self._panel = None

    @property
    def panel(self):
        if self._panel is None:
            import panel as pn

            data = self.data
            self._panel = pn.Column(
                pn.pane.Markdown(data.overview()),
                pn.pane.Markdown(data.noise_note()),
                pn.pane.DataFrame(data.display_table(), sizing_mode="stretch_width"),
                pn.pane.Matplotlib(data.plot_curves(log_x=self.log_x), dpi=96, tight=True),
                sizing_mode="stretch_width",
            )
        return self._panel

    def __repr__(self) -> str:
        return f"compare({self.data.sweep!r})"


def compare(sweep: str, *, store: RunStore | None = None, log_x: bool = False) -> Comparison:
    """A view of `sweep` as `nblab report` ranks it; displays as a panel Column."""
    return Comparison(sweep, store=store, log_x=log_x)
