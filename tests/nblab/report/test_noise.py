"""Reports that say what is noise: a sweep with a seed axis is read as points over their
seeds (mean ± sd, gap_to_bf16 ± its standard error, bands); a sweep without one says
that its ranking is from single runs; every figure gives a point one colour."""

import math
import statistics

import numpy as np
import pytest
from fake_sweep import POINTS, SEEDED, SEEDED_VAL, SWEEP, write_run, write_seeded
from matplotlib.collections import PolyCollection

from nblab import groups
from nblab.report import SweepData
from nblab.runs import RunStore


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("noise-home")
    store = RunStore(home)
    write_seeded(store)
    for point, spec in POINTS.items():
        write_run(store, point, spec)
    return home


@pytest.fixture(scope="module")
def seeded(home):
    return SweepData(SEEDED, RunStore(home))


@pytest.fixture(scope="module")
def single(home):
    return SweepData(SWEEP, RunStore(home))


def test_a_seed_axis_groups_the_points_over_their_seeds(seeded):
    assert seeded.replicated
    table = seeded.grouped_table().set_index("point")
    assert list(table.index) == ["preset=bf16", "preset=mxfp8", "preset=nvfp4", "preset=mxfp4"]
    assert "seed" not in table.columns and table.preset.to_dict() == {p: p[7:] for p in table.index}
    for preset in ("bf16", "mxfp8", "mxfp4"):
        values = list(SEEDED_VAL[preset].values())
        row = table.loc[f"preset={preset}"]
        assert (row.runs, row.seeds, row.status) == (3, "0, 1, 2", "succeeded")
        assert row.final_val_loss == pytest.approx(statistics.mean(values))
        assert row.final_val_loss_sd == pytest.approx(statistics.stdev(values))
    nvfp4 = table.loc["preset=nvfp4"]
    assert nvfp4.status == "1 succeeded, 1 diverged" and nvfp4.final_val_loss == 2.55
    assert math.isnan(nvfp4.final_val_loss_sd)


def test_gap_to_bf16_is_paired_by_seed_with_its_standard_error(seeded):
    table = seeded.grouped_table().set_index("point")
    bf16 = SEEDED_VAL["bf16"]
    for preset in ("mxfp8", "mxfp4"):
        diffs = [SEEDED_VAL[preset][s] - bf16[s] for s in bf16]
        row = table.loc[f"preset={preset}"]
        assert row.paired
        assert row.gap_to_bf16 == pytest.approx(statistics.mean(diffs))
        assert row.gap_to_bf16_se == pytest.approx(statistics.stdev(diffs) / math.sqrt(3))
    assert table.loc["preset=bf16"].gap_to_bf16 == 0
    # one succeeded seed of nvfp4: a gap, but no standard error
    nvfp4 = table.loc["preset=nvfp4"]
    assert nvfp4.gap_to_bf16 == pytest.approx(2.55 - statistics.mean(bf16.values()))
    assert math.isnan(nvfp4.gap_to_bf16_se) and not nvfp4.paired


def test_unpaired_gap_when_the_seeds_differ():
    gap, se, paired = groups.gap({0: 1.0, 1: 1.2}, {2: 0.9, 3: 1.1})
    assert not paired and gap == pytest.approx(0.1)
    assert se == pytest.approx(math.sqrt(2 * statistics.variance([1.0, 1.2]) / 2))


def test_the_table_shows_mean_sd_and_what_is_within_noise(seeded):
    shown = seeded.display_table()
    assert shown.loc["preset=bf16", "final_val_loss (± sd)"] == "2.5000 ± 0.0200"
    assert shown.loc["preset=mxfp8", "gap_to_bf16 (± se)"] == "+0.0100 ± 0.0058"
    assert shown.loc["preset=mxfp8", "noise"] == "within noise"
    assert shown.loc["preset=mxfp4", "noise"] == "beyond noise"
    assert shown.loc["preset=nvfp4", "noise"] == ""  # no standard error from one seed
    assert shown.loc["preset=bf16", "noise"] == "reference"
    assert "run_ids" not in shown.columns
    assert "over its seeds" in seeded.noise_note()


def test_without_seeds_the_report_says_its_ranking_is_from_single_runs(single):
    assert not single.replicated
    assert "ranking is from single runs" in single.noise_note()
    assert "final_val_loss" in single.display_table().columns  # one row per point


def test_curves_of_a_seeded_sweep_are_means_with_bands(seeded):
    fig = seeded.plot_curves()
    val = fig.axes[1]
    lines = {line.get_label(): line for line in val.get_lines()}
    mean = lines["preset=bf16 (mean of 3)"]
    assert list(mean.get_xdata()) == [2, 4]
    assert mean.get_ydata()[-1] == pytest.approx(statistics.mean(SEEDED_VAL["bf16"].values()))
    assert lines["preset=nvfp4,seed=1 (diverged)"].get_linestyle() == "--"
    bands = [c for c in val.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 4  # one per point, nvfp4's of its one good seed (zero width)
    vertices = bands[0].get_paths()[0].vertices
    at_4 = vertices[vertices[:, 0] == 4, 1]
    assert (at_4.min(), at_4.max()) == pytest.approx((2.5 - 0.02, 2.5 + 0.02))  # bf16 ± sd


def _static_colors(fig) -> dict[str, str]:
    return {line.get_label(): line.get_color() for ax in fig.axes for line in ax.get_lines()}


def _interactive_colors(model) -> dict[str, str]:
    from bokeh.models import Legend, Line

    out = {}
    for plot in model.select({"type": Legend}):
        for item in plot.items:
            for renderer in item.renderers:
                if isinstance(renderer.glyph, Line):
                    out[item.label["value"]] = renderer.glyph.line_color
    return out


@pytest.mark.parametrize("sweep", [SWEEP, SEEDED])
def test_one_point_keeps_one_colour_in_every_figure(home, sweep):
    data = SweepData(sweep, RunStore(home))
    static = _static_colors(data.plot_curves())
    interactive = _interactive_colors(data.interactive_figure())
    assert static and set(interactive) == set(static)
    assert interactive == static
    assert len(set(static.values())) == data.runs.group.nunique()  # one colour per point
    bars = data.plot_throughput().axes[0].patches
    names = [t.get_text() for t in data.plot_throughput().axes[0].get_yticklabels()]
    by_point = {n: np.round(b.get_facecolor()[:3], 3) for n, b in zip(names, bars, strict=True)}
    for label, color in static.items():
        point = label.split(" (")[0]
        point = point if point in by_point else groups.group_label(point)
        expected = np.round([int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)], 3)
        assert list(by_point[point]) == list(expected), label


def test_a_merge_in_the_sweep_is_neither_a_point_nor_a_seed(tmp_path):
    """A merge run sits in its members' sweep with its first member's recipe; the report
    shows it in its own section, so the points, their groups and their seeds are the
    training runs' alone."""
    store = RunStore(tmp_path)
    ids = write_seeded(store)
    member = ids[("bf16", 0)]
    recipe = store.run(member)["recipe"]
    sources = [{"run_id": member, "step": 4}]
    merge = store.create_run(f"{SEEDED}/soup", recipe, sweep=SEEDED, kind="merge", sources=sources)
    store.writer(merge, flush_every=None).close("succeeded")
    data = SweepData(SEEDED, store)
    assert merge not in set(data.runs.run_id) and len(data.runs) == len(ids)
    table = data.grouped_table().set_index("point")
    assert table.loc["preset=bf16"].runs == 3
    # grouped by kind too: the same recipe as a merge is not that member's replicate
    names, recipes = ["a", "b"], [{"train": {"seed": 0}}, {"train": {"seed": 0}}]
    assert groups.group(names, recipes) == ["a", "a"]
    assert groups.group(names, recipes, ["train", "merge"]) == ["a", "b"]
