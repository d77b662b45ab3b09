"""compare(sweep): the report's final-metrics table and loss curves, inline."""

from __future__ import annotations

from nblab.runs import RunStore


def compare(sweep: str, *, store: RunStore | None = None, log_x: bool = False):
    """A panel Column: the sweep table (best val loss first, gap to bf16) and the
    curves plot of `nblab report`, from nblab.report.SweepData."""
    import panel as pn

    from nblab.report import SweepData

    data = SweepData(sweep, store)
    return pn.Column(
        pn.pane.Markdown(data.overview()),
        pn.pane.DataFrame(data.display_table(), sizing_mode="stretch_width"),
        pn.pane.Matplotlib(data.plot_curves(log_x=log_x), dpi=96, tight=True),
        sizing_mode="stretch_width",
    )
