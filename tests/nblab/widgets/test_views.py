import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nblab.widgets import FormatExplorer, QuantErrorHeatmap, WeightDistribution, compare
from nblab.widgets.format_explorer import explore_spec, make_sample
from nblab.widgets.weights import scaled_grid, typical_amax
from nblab_kernels import QUANT_PRESETS, quant_stats

sys.path.insert(0, str(Path(__file__).parents[1] / "report"))
import fake_sweep  # noqa: E402

RECIPE = 'name = "w"\n[precision]\npreset = "mxfp4"\n'
MODULES = ["layers.0.attn.qkv", "layers.0.mlp.down", "layers.1.mlp.down"]


@pytest.fixture
def stats_run(store):
    """A run with stats at steps 5, 10, 15 for 3 modules x 2 roles and histograms."""
    run_id = store.create_run("w", RECIPE, sweep="wsweep")
    writer = store.writer(run_id, flush_every=None)
    for step in (5, 10, 15):
        for m, module in enumerate(MODULES):
            for r, role in enumerate(("fwd_x", "fwd_w")):
                writer.log_stats(step, module, role, 20.0 - m - step / 5 + r, 0.01 * m, 0.001 * r)
            edges = np.linspace(-0.5, 0.5, 11)
            counts = np.full(10, 100 * (m + 1))
            writer.log_histogram(step, module, edges, counts)
    writer.close()
    return run_id


# -- FormatExplorer ------------------------------------------------------------------


@pytest.mark.parametrize(("hadamard", "sr"), [(False, False), (True, True)])
def test_format_explorer_sqnr_matches_quant_stats(hadamard, sr):
    explorer = FormatExplorer(("mxfp8", "nvfp4", "bf16"), "heavy-tailed", hadamard=hadamard, sr=sr)
    x = make_sample("heavy-tailed")
    for row in explorer.results.itertuples():
        spec = explore_spec(row.spec, hadamard=hadamard, sr=sr)
        assert (spec.hadamard > 0) == (hadamard and row.spec != "bf16")
        assert row.sqnr_db == quant_stats(x, spec, seed=0).sqnr_db
        assert row.format == spec.describe()
    # fp8 beats fp4 beats nothing on the same sample
    sqnr = dict(zip(explorer.results.spec, explorer.results.sqnr_db, strict=True))
    assert sqnr["bf16"] > sqnr["mxfp8"] > sqnr["nvfp4"]


def test_format_explorer_takes_a_tensor_and_draws():
    weight = torch.randn(64, 128)
    explorer = FormatExplorer(("mxfp4",), "w", tensors={"w": weight})
    assert (
        explorer.results.sqnr_db[0] == quant_stats(weight, QUANT_PRESETS["mxfp4"], seed=0).sqnr_db
    )
    assert explorer.errors["mxfp4"].shape == (64 * 128,)
    assert len(explorer.panel[1]) == 3  # grids + SQNR, error histograms, table
    explorer.set(sample="gaussian", specs=["int4_b32"])
    assert list(explorer.results.spec) == ["int4_b32"]
    assert list(explorer.panel[1][2].object.spec) == ["int4_b32"]  # redrawn


# -- QuantErrorHeatmap / WeightDistribution ----------------------------------------


def test_heatmap_is_modules_by_steps(stats_run):
    view = QuantErrorHeatmap(stats_run)
    assert view.role == "fwd_x"
    assert view.data.shape == (3, 3)
    assert list(view.data.index) == MODULES and list(view.data.columns) == [5, 10, 15]
    assert view.data.loc["layers.1.mlp.down", 10] == 20.0 - 2 - 10 / 5  # module 2, step 10
    view.set(role="fwd_w", layer="saturation")
    assert view.data.loc["layers.1.mlp.down", 15] == pytest.approx(0.02)
    heat = view.panel[1].object  # the holoviews HeatMap: one cell per module and step
    assert len(heat.data) == 9 and heat.data.value.max() == pytest.approx(0.02)
    detail = view.select("layers.0.mlp.down", 10)
    assert (detail.module, detail.step) == ("layers.0.mlp.down", 10)


def _one_module_run(store, steps: int) -> str:
    run_id = store.create_run("w", RECIPE)
    writer = store.writer(run_id, flush_every=None)
    for step in range(1, steps + 1):
        writer.log_stats(step, "layers.0.mlp.down", "fwd_x", 20.0, 0.0, 0.0)
    writer.close()
    return run_id


def test_heatmap_labels_about_twenty_of_many_steps_on_a_numeric_axis(store):
    import holoviews as hv
    from bokeh.models import FixedTicker, LinearAxis

    def x_axis(steps: int):
        plot = QuantErrorHeatmap(_one_module_run(store, steps)).plot()
        return hv.render(plot, backend="bokeh").xaxis[0]

    # BokehJS ignores label overrides on a categorical axis (every step would be drawn):
    # the columns sit at positions 0..n-1 of a numeric axis with a fixed ticker
    axis = x_axis(300)
    assert isinstance(axis, LinearAxis) and isinstance(axis.ticker, FixedTicker)
    ticks = list(axis.ticker.ticks)
    labels = [axis.major_label_overrides[t] for t in ticks]
    assert labels[0] == "1" and labels[-1] == "300" and 15 <= len(ticks) <= 21
    assert all(labels[i] == str(t + 1) for i, t in enumerate(ticks))  # position t = step t+1
    axis = x_axis(10)
    assert list(axis.ticker.ticks) == list(range(10))  # few steps: every one labelled


def test_heatmap_of_a_run_without_stats_yet_draws(store):
    import holoviews as hv

    run_id = store.create_run("w", RECIPE)  # a job that has not logged stats yet
    view = QuantErrorHeatmap(run_id)
    assert view.data.empty
    hv.render(view.plot(), backend="bokeh")  # an empty plot, no error


def test_heatmap_click_shows_the_cell_histograms(stats_run):
    view = QuantErrorHeatmap(stats_run)
    view._tapped(1.2, "layers.1.mlp.down", [5, 10, 15])  # column 1: step 10
    assert (view.detail.module, view.detail.step) == ("layers.1.mlp.down", 10)


def test_heatmap_of_a_sweep_switches_runs(store):
    ids = [fake_sweep.write_run(store, p, s) for p, s in fake_sweep.POINTS.items()]
    view = QuantErrorHeatmap(fake_sweep.SWEEP)
    assert view.run_ids == ids
    view.set(run=ids[1])  # nvfp4: 5 modules at step 2
    assert view.data.shape == (5, 1)
    assert view.data.iloc[0, 0] == fake_sweep.SQNR["nvfp4"]


def test_weight_distribution_grid_is_the_run_format_at_block_scale(stats_run):
    view = WeightDistribution(stats_run)
    assert view.spec == QUANT_PRESETS["mxfp4"]  # the run's fwd_w spec
    assert (view.module, view.step) == (MODULES[0], 15)
    view.set(module=MODULES[2], step=7)
    assert view.step == 5 and view.histogram[1].sum() == 300 * 10
    # uniform |w| in [0, 0.5]: a block of 32 has median amax near 0.5 * 0.5**(1/32)
    amax = typical_amax(*view.histogram, 32)
    assert amax == pytest.approx(0.45, abs=0.051)
    # e8m0 floor: scale 2**(floor(log2 amax) - emax(e2m1) = 2) -> 2**-4; fp4 max 6
    assert view.scale == 2.0**-4 and view.grid.max() == 6 * 2.0**-4
    assert len(view.grid) == 15  # the signed e2m1 grid
    grid, scale = scaled_grid(QUANT_PRESETS["nvfp4"], 0.6)
    assert math.isclose(scale, 0.1) and math.isclose(grid.max(), 0.6)


def test_compare_shows_the_report_table(store):
    for point, spec in fake_sweep.POINTS.items():
        fake_sweep.write_run(store, point, spec)
    view = compare(fake_sweep.SWEEP)
    table = view.panel[2].object
    assert len(table) == len(fake_sweep.POINTS) and "gap_to_bf16" in table.columns
    assert "single runs" in view.panel[1].object


def test_compare_groups_seeds_as_the_report_does(store):
    fake_sweep.write_seeded(store)
    view = compare(fake_sweep.SEEDED)
    table = view.panel[2].object
    assert list(table.index) == list(view.data.grouped_table().point)  # a row per point
    assert table.loc["preset=bf16", "final_val_loss (± sd)"] == "2.5000 ± 0.0200"
    assert "over its seeds" in view.panel[1].object
