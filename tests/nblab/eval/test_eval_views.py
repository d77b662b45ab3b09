"""The views of evaluations: SensitivityMap, PrecisionAdvisor (whose Apply fills a
RecipeBuilder and whose Measure is a batch job), RunMonitor, and the report's tables."""

from __future__ import annotations

import math

import pytest
from eval_helpers import debug

from nblab.eval.report import ADVICE_FILE, EvalReport, eval_runs, plot_sensitivity, read_json
from nblab.eval.run import run
from nblab.eval.source import eval_recipe, resolve_source
from nblab.report import load_sweep
from nblab.runs import RunStore
from nblab.train.trainer import train
from nblab.widgets import PrecisionAdvisor, RecipeBuilder, RunMonitor, SensitivityMap


@pytest.fixture(scope="module")
def scanned_home(tmp_path_factory):
    """A bf16 and an mxfp4 point of sweep "s", and the bf16 point's evaluations: mxfp4
    weights only and with activations, and a module scan in mxfp4 (made once: the tests
    only add runs that the others leave out)."""
    home = tmp_path_factory.mktemp("views") / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("NBLAB_HOME", str(home))
    try:
        store = RunStore(home)
        ids = {}
        for preset in ("bf16", "mxfp4"):
            recipe = debug(f"precision.preset={preset}", f"name=s/preset={preset}")
            ids[preset] = train(recipe, store=store, sweep="s").run_id
        source = resolve_source(ids["bf16"], store=store)
        for weights_only in (True, False):
            run(eval_recipe(source, precision="mxfp4", weights_only=weights_only), store=store)
        scan = run(eval_recipe(source, precision="mxfp4", scan="module"), store=store)
    finally:
        mp.undo()
    return home, ids, scan


@pytest.fixture
def store(scanned_home, monkeypatch) -> RunStore:
    home, _, _ = scanned_home
    monkeypatch.setenv("NBLAB_HOME", str(home))
    return RunStore(home)


@pytest.fixture
def scanned(scanned_home, store):
    _, ids, scan = scanned_home
    return ids, scan


def test_sensitivity_map_shows_delta_and_sqnr_per_module_and_role(store, scanned):
    ids, scan = scanned
    view = SensitivityMap(ids["bf16"])  # a training run: its newest scan
    assert view.scan_id == scan.run_id
    assert list(view.data.columns) == ["fwd"] and list(view.sqnr.columns) == ["fwd"]
    assert len(view.data) == 15  # every linear of gpt-debug, lm_head included
    assert view.data.loc["layers.1.mlp.down", "fwd"] == next(
        r.delta_loss for r in scan.scan.rows if r.module == "layers.1.mlp.down"
    )
    assert -1 <= view.correlation <= 1
    assert view.most_sensitive(1).delta_loss.iloc[0] == view.data.fwd.max()
    view.plot()  # renders: holoviews layout of two heatmaps and a scatter
    with pytest.raises(KeyError, match="has no sensitivity scan yet"):
        SensitivityMap(ids["mxfp4"])


def test_precision_advisor_apply_fills_a_recipe_builder(store, scanned):
    ids, scan = scanned
    builder = RecipeBuilder("gpt-debug", store=store)
    advisor = PrecisionAdvisor(ids["bf16"], builder=builder, store=store)
    advice = advisor.advise("mxfp4", budget=0.0)  # reuses the scan: no job
    assert advice.scan_run == scan.run_id and advisor.handle is None
    assert advisor.apply() is builder
    recipe = builder.recipe
    assert recipe.precision.preset == "mxfp4"
    assert recipe.precision.keep_high_precision == advice.patch
    assert recipe.train.steps == 12 and not recipe.eval.source  # the run's, to train
    assert "keep_high_precision" in advisor.table.value


def test_precision_advisor_measures_in_a_batch_job(store, scanned):
    ids, _ = scanned
    advisor = PrecisionAdvisor(ids["bf16"], store=store)
    advice = advisor.advise("mxfp4", bits=12)
    run_id = advisor.measure(wait=True)
    assert store.run(run_id)["status"] == "succeeded"
    assert (store.run_dir(run_id) / "output.ipynb").exists()  # papermill ran train.ipynb
    saved = read_json(store, run_id, ADVICE_FILE)
    assert saved["patch"] == advice.patch
    assert math.isfinite(advice.measured_delta)
    evals = eval_runs(store).set_index("run_id")
    assert evals.loc[run_id, "val_loss"] - advice.base_loss == pytest.approx(advice.measured_delta)


def test_run_monitor_marks_evaluations_and_draws_them_as_points(store, scanned):
    ids, scan = scanned
    monitor = RunMonitor([ids["bf16"], scan.run_id], keys=("val_loss",), autostart=False)
    assert monitor.legend[scan.run_id].startswith("✓ eval ")
    assert not monitor.legend[ids["bf16"]].startswith("✓ eval")
    glyphs = {r.name: type(r.glyph).__name__ for r in monitor.figure.renderers}
    assert glyphs[f"{monitor.names[scan.run_id]} val_loss"] == "Scatter"
    assert glyphs[f"{monitor.names[ids['bf16']]} val_loss"] == "Line"


def test_the_report_tables_of_a_sweep_with_evaluations(store, scanned):
    ids, scan = scanned
    section = EvalReport(load_sweep("s", store))
    ptq = section.ptq_table()
    assert list(ptq.format) == ["mxfp4"] and ptq.source.iloc[0] == "preset=bf16"
    logged = store.metrics(ids["bf16"], keys=["val_loss"]).value.iloc[-1]
    assert ptq.high_precision_val_loss.iloc[0] == round(logged, 4)
    gap = ptq.weights_act_val_loss.iloc[0] - ptq.high_precision_val_loss.iloc[0]
    assert ptq.gap_weights_act.iloc[0] == pytest.approx(gap, abs=2e-4)
    versus = section.ptq_vs_trained()
    assert list(versus.trained_point) == ["preset=mxfp4"]
    assert [run_id for run_id, _ in section.scans()] == [scan.run_id]
    plot_sensitivity(section.scans()[0][1])
