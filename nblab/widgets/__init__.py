"""Notebook views over recipes, sweeps and the run store.

    from nblab.widgets import RecipeBuilder, RunMonitor
    builder = RecipeBuilder()              # ipywidgets form; builder.recipe is valid
    RunMonitor("fp4-study")                # panel + bokeh, refreshed from the store

Forms (RecipeBuilder, SweepBuilder, MergeBuilder) are ipywidgets; plots (RunMonitor,
QuantErrorHeatmap, WeightDistribution, FormatExplorer, compare) are panel layouts of
bokeh / holoviews figures. Every view of runs takes a run id, a list of run ids, a
SweepHandle (or anything with `.run_ids` / `.run_id`) or a sweep name alike.
Imports are lazy: `import nblab.widgets` loads neither panel nor ipywidgets.
"""

import importlib
from typing import Any

_EXPORTS = {
    "downsample": "nblab.widgets.sampling",
    "smooth": "nblab.widgets.sampling",
    "RunSet": "nblab.widgets.runset",
    "resolve_runs": "nblab.widgets.runset",
    "RunMonitor": "nblab.widgets.monitor",
    "RecipeBuilder": "nblab.widgets.recipe_builder",
    "SweepBuilder": "nblab.widgets.sweep_builder",
    "FormatExplorer": "nblab.widgets.format_explorer",
    "QuantErrorHeatmap": "nblab.widgets.heatmap",
    "WeightDistribution": "nblab.widgets.weights",
    "compare": "nblab.widgets.comparison",
    "MergeBuilder": "nblab.widgets.merge",
    "SensitivityMap": "nblab.widgets.sensitivity",  # nblab.eval's views
    "PrecisionAdvisor": "nblab.widgets.advisor",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nblab.widgets' has no attribute {name!r}")
