"""Sweep reports over a fake sweep (written straight into a store) and a real tiny one."""

import html
import importlib.metadata
import json
import math
import re

import nbformat
import pandas as pd
import pytest
from fake_sweep import POINTS, SWEEP, write_run

from nblab import report
from nblab.runs import RunStore

ORDER = [  # by final val loss; then the diverged (val 8.0) and the failed (none) points
    "preset=bf16,lr=0.003",
    "preset=mxfp8,lr=0.003",
    "preset=nvfp4,lr=0.003",
    "preset=mxfp4,lr=0.01",
    "preset=mxfp4,lr=0.003",
]


@pytest.fixture(scope="module")
def fake_home(tmp_path_factory):
    """$NBLAB_HOME with sweep `fp4-study` (5 points, the bf16 one rerun: the first try
    is worse and must be ignored) and an unrelated sweep `other`."""
    home = tmp_path_factory.mktemp("nblab-home")
    store = RunStore(home)
    write_run(store, "preset=bf16,lr=0.003", POINTS["preset=bf16,lr=0.003"], offset=1.0)
    for point, spec in POINTS.items():
        write_run(store, point, spec)
    write_run(store, "base", POINTS["preset=bf16,lr=0.003"], sweep="other")
    store.close()
    return home


@pytest.fixture(scope="module")
def table(fake_home):
    return report.sweep_table(SWEEP, RunStore(fake_home)).set_index("point")


@pytest.fixture(scope="module")
def built(fake_home):
    """report.ipynb and report.html of the fake sweep, built once (a kernel start)."""
    ipynb, html_path = report.build_report(SWEEP, store=RunStore(fake_home), log_x=True)
    return ipynb, html_path, nbformat.read(ipynb, as_version=4), html_path.read_text()


# -- sweep_table ----------------------------------------------------------------------


def test_table_is_sorted_by_final_val_loss_with_failures_last(table):
    assert list(table.index) == ORDER
    assert list(table.status) == ["succeeded"] * 3 + ["diverged", "failed"]


def test_gap_is_measured_against_the_best_succeeded_bf16_point(table):
    # val losses 2.5 (bf16), 2.625, 2.75, 8.0: the gaps are exact in binary
    assert table.gap_to_bf16.iloc[:4].tolist() == [0.0, 0.125, 0.25, 5.5]
    assert math.isnan(table.gap_to_bf16["preset=mxfp4,lr=0.003"])  # no val loss at all


def test_the_latest_run_of_a_rerun_point_wins(fake_home, table):
    runs = RunStore(fake_home).runs(sweep=SWEEP)
    bf16 = runs[runs.name == f"{SWEEP}/preset=bf16,lr=0.003"]
    assert len(bf16) == 2 and len(table) == len(POINTS)
    assert table.run_id["preset=bf16,lr=0.003"] == bf16.run_id.iloc[-1]
    assert table.final_val_loss["preset=bf16,lr=0.003"] == 2.5  # the first try had 3.5


def test_metrics_steps_and_axes_per_point(table):
    row = table.loc["preset=nvfp4,lr=0.003"]
    assert (row.final_loss, row.final_val_loss, row.best_val_loss) == (2.2, 2.75, 2.75)
    assert (row.step, row.steps) == (4, 4)
    assert row.tokens_per_s == 2500.0  # median of 1000 and 4000
    assert (row.preset, row.lr) == ("nvfp4", 0.003)
    assert table.lr["preset=mxfp4,lr=0.01"] == 0.01
    # the diverged point's final loss is its last finite one, not the NaN at step 3
    assert table.final_loss["preset=mxfp4,lr=0.01"] == 9.0


def test_failures_carry_their_error_and_the_step_they_stopped_at(table):
    diverged, failed = table.loc["preset=mxfp4,lr=0.01"], table.loc["preset=mxfp4,lr=0.003"]
    assert diverged.error == "diverged at step 3: loss is nan"
    assert diverged.stopped_at == 3  # from the error text
    assert failed.error.startswith("RuntimeError: tile 16x16")
    assert failed.stopped_at == 2  # no "at step" in the error: the last step written
    assert table.error.iloc[:3].isna().all() and table.stopped_at.iloc[:3].isna().all()


def test_no_bf16_point_gives_nan_gaps_and_the_store_defaults_to_NBLAB_HOME(tmp_path, monkeypatch):
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path))
    write_run(RunStore(), "preset=nvfp4", POINTS["preset=nvfp4,lr=0.003"], sweep="fp4-only")
    table = report.sweep_table("fp4-only")
    assert table.point.tolist() == ["preset=nvfp4"]
    assert table.final_val_loss[0] == 2.75 and math.isnan(table.gap_to_bf16[0])
    assert "lr" not in table.columns  # nothing was swept


def test_unknown_sweep_names_it_and_lists_the_known_ones(fake_home, tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown sweep 'fp4-stdy'.*known sweeps: fp4-study, other"
    ):
        report.sweep_table("fp4-stdy", RunStore(fake_home))
    with pytest.raises(ValueError, match="unknown sweep 'x'.*none yet"):
        report.build_report("x", store=RunStore(tmp_path / "empty"))
    assert not (tmp_path / "empty" / "sweeps").exists()  # refused before any kernel


def test_a_sweep_name_that_is_no_folder_name_needs_out_dir(tmp_path):
    store = RunStore(tmp_path)
    write_run(store, "p", POINTS["preset=nvfp4,lr=0.003"], sweep="../up")
    with pytest.raises(ValueError, match=r"sweep name '\.\./up' cannot be a folder name"):
        report.build_report("../up", store=store)


# -- the report's parts -----------------------------------------------------------------


def test_base_recipe_drops_the_swept_fields_and_lists_them(fake_home):
    data = report.load_sweep(SWEEP, RunStore(fake_home))
    assert list(data.axes) == ["optimizer.lr", "precision.preset"]
    text = data.base_recipe()
    assert "#   precision.preset = bf16 | mxfp4 | mxfp8 | nvfp4" in text
    assert "# model parameters: 88,832" in text
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "preset" not in body and "lr" not in body and "[precision]" not in body
    assert 'flavour = "debug"' in body and "weight_decay = 0.1" in body


def test_quantization_summary_per_role_and_worst_layers(fake_home):
    data = report.load_sweep(SWEEP, RunStore(fake_home))
    by_role = data.sqnr_by_role()
    assert "preset=bf16,lr=0.003" not in by_role.index  # high precision: not quantized
    # mean over modules m=0..4 of 12 - m - r/10
    assert by_role.loc["preset=nvfp4,lr=0.003"].tolist() == [10.0, 9.9, 9.8]
    worst = data.worst_layers(5)
    nvfp4 = worst[worst.point == "preset=nvfp4,lr=0.003"]
    assert len(nvfp4) == 5 and len(worst) == 5 * 4
    assert nvfp4.module.tolist() == ["lm_head"] * 3 + ["layers.0.attn.qkv"] * 2
    assert nvfp4.sqnr.tolist() == [7.8, 7.9, 8.0, 8.8, 8.9]


def test_a_sweep_without_quantized_points_has_empty_quantization_tables(fake_home):
    data = report.load_sweep("other", RunStore(fake_home))
    assert data.quantized_stats().empty and data.sqnr_by_role().empty
    assert data.worst_layers().empty
    assert data.failures().empty and "No point failed" in data.failures_html()
    assert data.axes == {}


# -- build_report ---------------------------------------------------------------------


def test_build_report_writes_both_files_under_the_sweep_folder(fake_home, built):
    ipynb, html_path, _, _ = built
    folder = fake_home / "sweeps" / SWEEP
    assert (ipynb, html_path) == (folder / "report.ipynb", folder / "report.html")
    assert ipynb.stat().st_size > 0 and html_path.stat().st_size > 0


def test_the_notebook_ran_every_cell_without_error(built):
    _, _, nb, _ = built
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    injected = next(c for c in code if "injected-parameters" in c.metadata.get("tags", []))
    assert f'sweep = "{SWEEP}"' in injected.source and "log_x = True" in injected.source


def test_html_has_the_sweep_points_failures_recipes_and_versions(built):
    _, _, _, text = built
    assert f"<title>nblab sweep report: {SWEEP}</title>" in text
    assert f"Sweep report: {SWEEP}" in text
    for point in POINTS:
        assert point in text
    # the failure's full error, escaped, and the divergence with its step
    assert "does not divide in_features 40 of &lt;layers.0.mlp.up&gt;</pre>" in text
    assert "preset=mxfp4,lr=0.01: diverged at step 3" in text
    assert text.count("<details>") == len(POINTS)
    assert '\npreset = "nvfp4"\n' in text  # an exact recipe, in its <details>
    assert importlib.metadata.version("torch") in text
    assert re.search(r"<td>0\.125</td>", text)  # mxfp8's gap in the table
    assert "The ranking is from single runs" in text  # no seed axis: said in one line


def test_html_is_self_contained(built):
    _, _, nb, text = built
    pngs = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pngs) == 4  # curves, throughput, weights, SQNR heatmap
    assert text.count('<img src="data:image/png;base64,') == 4
    assert report.remote_references(text) == []
    assert "BEGIN bokeh.min.js" in text and "data-root-id" in text  # interactive, inlined
    assert not re.search(r"""<(script|link)[^>]*(src|href)=["']?https?:""", text)
    assert not re.search(r"""<(script|link)[^>]*(src|href)=["']?(?!data:)[^"'#>]+""", text)


def test_remote_references_finds_cdn_tags():
    page = '<script src="https://cdn.x/require.js"></script><link href="//cdn.x/a.css" rel=x>'
    assert len(report.remote_references(page)) == 2
    assert report.remote_references('<script>var a = "https://x";</script>') == []


# -- a real sweep ---------------------------------------------------------------------


def test_report_of_a_real_two_point_sweep(tmp_path, monkeypatch):
    train = pytest.importorskip("nblab.train.trainer").train
    from nblab.recipe import Recipe

    monkeypatch.setenv("NBLAB_HOME", str(tmp_path))
    store = RunStore()
    base = Recipe.preset("gpt-debug").with_overrides(
        ["train.steps=3", "metrics.stats_interval=1", "metrics.histogram_interval=0"]
    )
    results = {}
    for preset in ("bf16", "nvfp4"):
        recipe = base.with_overrides({"precision.preset": preset, "name": f"s/preset={preset}"})
        results[preset] = train(recipe, store=store, sweep="s")
    assert {r.status for r in results.values()} == {"succeeded"}

    ipynb, html_path = report.build_report("s", out_dir=tmp_path / "out")
    table = report.sweep_table("s").set_index("point")
    assert set(table.index) == {"preset=bf16", "preset=nvfp4"}
    assert table.step.tolist() == [3, 3] and table.preset.tolist() == list(table.index.str[7:])
    val = {p: results[p].metrics["val_loss"] for p in results}
    assert table.final_val_loss.to_dict() == {f"preset={p}": v for p, v in val.items()}
    assert table.gap_to_bf16["preset=nvfp4"] == pytest.approx(val["nvfp4"] - val["bf16"])
    assert table.index[0] == min(val, key=val.get).join(["preset=", ""])
    assert (table.tokens_per_s > 0).all()

    nb = nbformat.read(ipynb, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    text = html_path.read_text()
    assert "preset=bf16" in text and "preset=nvfp4" in text
    assert text.count('<img src="data:image/png;base64,') == 4  # with weights; nvfp4 has stats
    assert report.remote_references(text) == []
    assert html.escape("mean SQNR (dB) by role") in text
    assert json.loads(json.dumps(report.environment()))["nblab"] == importlib.metadata.version(
        "nblab"
    )
    assert not pd.isna(table.final_loss).any()


def test_weight_histograms_show_at_most_24_panels_and_one_line_without_any(tmp_path):
    """A 200-point sweep drew 200 empty panels when nothing recorded histograms (18 s of
    layout in its report); now one line says so, and at most MAX_WEIGHT_PANELS runs are
    drawn, the title saying how many of how many."""
    store = RunStore(tmp_path)
    spec = POINTS["preset=bf16,lr=0.003"]
    ids = [write_run(store, f"p{i:02d}", spec, sweep="many") for i in range(30)]
    none = report.SweepData("many", store).plot_weights()
    assert len(none.axes) == 1
    assert [t.get_text() for t in none.axes[0].texts] == ["no weight histograms recorded"]
    for run_id in ids[:26]:  # 26 of the 30 runs recorded histograms
        writer = store.writer(run_id, flush_every=None)
        writer.log_histogram(1, "layers.0.mlp.down", [0.0, 1.0, 2.0], [3, 4])
        writer.close("succeeded")
    fig = report.SweepData("many", store).plot_weights()
    drawn = [ax for ax in fig.axes if ax.get_visible()]
    assert len(drawn) == report.MAX_WEIGHT_PANELS == 24
    assert all(len(ax.lines) == 1 for ax in drawn)  # each a run that has its histogram
    assert fig.get_suptitle() == "weights of layers.0.mlp.down (the first 24 of 26 runs)"
