"""The views render in a fresh notebook with no setup line (no `pn.extension()`): the
notebook is executed headless by a real kernel and its outputs' mime types checked."""

import json
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from nblab.notebooks import execute
from nblab.runs import RunStore

sys.path.insert(0, str(Path(__file__).parents[1] / "report"))
import fake_sweep  # noqa: E402

PANEL = "application/vnd.holoviews_exec.v0+json"  # a panel / bokeh view
LOADER = "application/vnd.holoviews_load.v0+json"  # BokehJS and panel's JavaScript
WIDGET = "application/vnd.jupyter.widget-view+json"  # an ipywidget

CELLS = {  # name -> source; none imports panel or calls an extension
    "monitor": f'from nblab.widgets import RunMonitor\nRunMonitor("{fake_sweep.SWEEP}")',
    "heatmap": "from nblab.widgets import QuantErrorHeatmap\nQuantErrorHeatmap(RUN)",
    "weights": "from nblab.widgets import WeightDistribution\nWeightDistribution(RUN)",
    "explorer": (
        "from nblab.widgets import FormatExplorer\nFormatExplorer(['mxfp8'], shape=(64, 64))"
    ),
    "compare": f'from nblab.widgets import compare\ncompare("{fake_sweep.SWEEP}")',
    "builder": "from nblab.widgets import RecipeBuilder\nRecipeBuilder()",
}


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook, executed once over a store holding the fake sweep (with stats) and
    one run with weight histograms."""
    home = tmp_path_factory.mktemp("home")
    store = RunStore(home)
    for point, spec in fake_sweep.POINTS.items():
        fake_sweep.write_run(store, point, spec)
    run_id = store.create_run("w", 'name = "w"\n[precision]\npreset = "mxfp4"\n')
    writer = store.writer(run_id, flush_every=None)
    for step in (1, 2):
        writer.log_stats(step, "layers.0.mlp.down", "fwd_x", 20.0, 0.0, 0.0)
        writer.log_histogram(step, "layers.0.mlp.down", np.linspace(-1, 1, 9), np.ones(8))
    writer.close()

    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(f'import os\nos.environ["NBLAB_HOME"] = {str(home)!r}'),
        nbformat.v4.new_code_cell(f"RUN = {run_id!r}"),
        *(nbformat.v4.new_code_cell(source, metadata={"name": n}) for n, source in CELLS.items()),
    ]
    source = home / "no-setup.ipynb"
    nbformat.write(nb, source)
    done = execute(source, home / "out.ipynb", {}, execution_timeout=300)
    return {c.metadata.get("name"): c.outputs for c in done.cells if c.metadata.get("name")}


def test_every_view_renders_as_a_panel_view_and_the_builder_as_a_widget(executed):
    for name, outputs in executed.items():
        assert not [o for o in outputs if o.output_type == "error"], (name, outputs)
        stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
        assert "requires the panel extension" not in stderr and "WARNING" not in stderr, stderr
        shown = outputs[-1]
        if name == "builder":  # an ipywidget, displayed by itself
            assert WIDGET in shown.data
        else:
            assert shown.output_type == "execute_result", (name, shown)
            assert PANEL in shown.data, (name, list(shown.data))
            assert "docs_json" in shown.data["text/html"]  # a bokeh document, not text


def test_the_first_view_loads_the_extension_once_inline(executed):
    loaders = {
        name: [o for o in outputs if LOADER in o.get("data", {})]
        for name, outputs in executed.items()
    }
    assert loaders["monitor"], "the first view displayed sends the JavaScript"
    assert all(not found for name, found in loaders.items() if name != "monitor")
    bundle = max((o.data[LOADER] for o in loaders["monitor"]), key=len)
    assert "Bokeh" in bundle and len(bundle) > 1_000_000  # BokehJS itself, inlined
    urls = json.dumps(re.findall(r"js_urls = (\[[^\]]*\])", bundle))
    assert "http" not in urls  # nothing to fetch from a CDN: works offline
