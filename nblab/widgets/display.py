"""How the panel views show themselves in a notebook, with no setup line.

panel draws nothing in a notebook until `pn.extension()` has sent the page BokehJS and
panel's own JavaScript; it only warns. Every view here (RunMonitor, QuantErrorHeatmap,
WeightDistribution, FormatExplorer, the comparison) derives from PanelView, which
loads that extension itself the first time a view is displayed or put in a panel
layout, with the JavaScript inlined in the output: nothing is fetched from a CDN, so
it works offline and the saved notebook reopens with its plots.
"""

from __future__ import annotations

import sys
from typing import Any


def in_kernel() -> bool:
    """Whether this process is an IPython kernel (a notebook's, or papermill's)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def extension_loaded() -> bool:
    """Whether this kernel already sent the page panel's (or holoviews') extension,
    by the same test panel makes before it declines to draw."""
    from panel.config import panel_extension

    if panel_extension._loaded:
        return True
    holoviews = sys.modules.get("holoviews")
    return bool(holoviews is not None and getattr(holoviews.extension, "_loaded", False))


def load_panel_extension() -> bool:
    """In a kernel that has not loaded it yet: `pn.extension(inline=True)`, which
    publishes BokehJS and panel's JavaScript as outputs of the current cell. Returns
    whether it loaded now. Outside a kernel (a script, pytest, a panel server) it does
    nothing: there is no page to send JavaScript to."""
    if not in_kernel() or extension_loaded():
        return False
    import panel as pn

    pn.extension(inline=True)
    return True


class PanelView:
    """A view drawn by panel: a subclass builds its layout in the `panel` property.
    Displaying it, or placing it in a panel layout, loads the extension first."""

    @property
    def panel(self) -> Any:
        raise NotImplementedError

    def __panel__(self):
        load_panel_extension()
        return self.panel

    def _repr_mimebundle_(self, include=None, exclude=None):
        load_panel_extension()
        return self.panel._repr_mimebundle_(include, exclude)
