"""`nblab export` to TensorBoard and MLflow, read back with the tools' own readers:
tensorboard's EventAccumulator and MlflowClient on a file store. Every row the store
holds must be there, at its step."""

import math
import os

import numpy as np
import pytest

from nblab.cli import main
from nblab.export import runs_of
from nblab.export.mlflow import params_of
from nblab.export.tensorboard import metric_tag, run_folder, stat_tags
from nblab.recipe import Recipe, dotted_fields
from nblab.runs import RunStore

SWEEP = "exp"
RECIPES = {
    "exp/preset=bf16": Recipe.preset("gpt-debug").with_overrides(["name=exp/preset=bf16"]),
    "exp/preset=nvfp4": Recipe.preset("gpt-debug").with_overrides(
        ["name=exp/preset=nvfp4", "precision.preset=nvfp4", "precision.keep_high_precision=[]"]
    ),
}
MODULES = ("layers.0.mlp.up", "layers.0.mlp.down")


def write_runs(store: RunStore) -> list[str]:
    """Two runs of sweep `exp`: metrics every step (a NaN loss in the failed one), stats
    of two modules x two roles every other step, histograms at steps 1 and 4."""
    ids = []
    for r, (name, recipe) in enumerate(RECIPES.items()):
        run_id = store.create_run(name, recipe.to_toml(), SWEEP, steps=4)
        writer = store.writer(run_id, flush_every=None)
        for step in range(1, 5):
            values = {"loss": 3.0 - 0.1 * step - r, "lr": 1e-3 * step, "tokens_per_s": 100.0}
            values |= {"grad_norm": 0.5 + step}
            if step % 2 == 0:
                values["val_loss"] = 3.2 - 0.1 * step
                for m, module in enumerate(MODULES):
                    for role in ("fwd_x", "fwd_w"):
                        writer.log_stats(step, module, role, 20.0 - m - step, 0.01 * m, 0.001)
            if r == 1 and step == 4:
                values["loss"] = math.nan
            writer.log_metrics(step, values)
            if step in (1, 4):
                for m, module in enumerate(MODULES):
                    counts = np.arange(8) * (m + 1) + step
                    writer.log_histogram(step, module, np.linspace(-0.4, 0.4, 9), counts)
        writer.close("succeeded" if r == 0 else "failed", error=None if r == 0 else "boom")
        ids.append(run_id)
    (store.run_dir(ids[0]) / "output.ipynb").write_text("{}")  # a batch job's notebook
    (store.home / "sweeps" / SWEEP).mkdir(parents=True)
    (store.home / "sweeps" / SWEEP / "report.html").write_text("<html></html>")
    return ids


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path / "home"))
    return RunStore()


def accumulator(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    everything = {"scalars": 0, "histograms": 0, "tensors": 0}  # 0: keep every event
    return EventAccumulator(str(folder), size_guidance=everything).Reload()


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6)


def assert_events_hold_the_store(store: RunStore, run_id: str, folder, *, walltimes: bool):
    acc = accumulator(folder)
    metrics = store.metrics(run_id)
    assert len(metrics) > 0
    for key, rows in metrics.groupby("key"):
        events = acc.Scalars(metric_tag(key))
        assert [e.step for e in events] == list(rows.step), key
        assert all(same(e.value, v) for e, v in zip(events, rows.value, strict=True)), key
        if walltimes:
            assert [e.wall_time for e in events] == pytest.approx(list(rows.time)), key
    stats = store.stats(run_id)
    assert len(stats) > 0
    for (module, role), rows in stats.groupby(["module", "role"]):
        for column, tag in stat_tags(module, role).items():
            events = acc.Scalars(tag)
            assert [e.step for e in events] == list(rows.step), tag
            assert [e.value for e in events] == pytest.approx(list(rows[column]), rel=1e-6)
    histograms = store.histograms(run_id)
    assert len(histograms) > 0
    for module, rows in histograms.groupby("module"):
        events = acc.Histograms(f"weights/{module}")
        assert [e.step for e in events] == list(rows.step), module
        for event, edges, counts in zip(events, rows.edges, rows.counts, strict=True):
            value = event.histogram_value
            assert list(value.bucket) == pytest.approx(counts)
            assert list(value.bucket_limit) == pytest.approx(edges[1:])
            assert (value.min, value.max, value.num) == pytest.approx(
                (edges[0], edges[-1], sum(counts))
            )
    text = acc.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "[optimizer]" in text and store.run(run_id)["recipe"].splitlines()[0] in text


# -- TensorBoard ----------------------------------------------------------------------


def test_tensorboard_export_of_a_sweep_holds_every_row(store, tmp_path, capsys):
    ids = write_runs(store)
    out = tmp_path / "tb"
    assert main(["export", SWEEP, "--tensorboard", str(out)]) == 0
    printed = capsys.readouterr().out
    for run_id in ids:
        run = store.run(run_id)
        folder = run_folder(out, run["name"], run_id)
        assert folder == out / SWEEP / run["name"].split("/")[1] / run_id
        assert str(folder) in printed
        assert_events_hold_the_store(store, run_id, folder, walltimes=True)
    # again: the earlier files are replaced, not added to (no doubled points)
    assert main(["export", ids[0], "--tensorboard", str(out)]) == 0
    folder = run_folder(out, store.run(ids[0])["name"], ids[0])
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert_events_hold_the_store(store, ids[0], folder, walltimes=True)


def test_live_tensorboard_events_of_a_real_run(store):
    train = pytest.importorskip("nblab.train.trainer").train
    recipe = Recipe.preset("gpt-debug").with_overrides(
        [
            "train.steps=2",  # a stats step costs seconds on 2 cores: one of them
            "precision.preset=mxfp8",
            "metrics.log_interval=1",
            "metrics.stats_interval=2",
            "metrics.histogram_interval=2",
            "eval.interval=2",
            "eval.batches=1",
            "metrics.tensorboard=true",
        ]
    )
    result = train(recipe, store=store)
    assert result.status == "succeeded"
    metrics = store.metrics(result.run_id)
    assert {"loss", "val_loss", "lr", "tokens_per_s", "grad_norm"} <= set(metrics.key)
    live = store.run_dir(result.run_id) / "tensorboard"
    assert_events_hold_the_store(store, result.run_id, live, walltimes=False)


def test_tensorboard_is_off_by_default_and_a_bool(store):
    assert Recipe.preset("gpt-debug").metrics.tensorboard is False
    with pytest.raises(ValueError, match=r"metrics.tensorboard: 'yes' -> true or false"):
        Recipe.preset("gpt-debug").with_overrides(["metrics.tensorboard=yes"])


# -- MLflow ---------------------------------------------------------------------------


def test_mlflow_export_to_a_file_store_holds_every_row(store, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    ids = write_runs(store)
    uri = tmp_path / "mlruns"
    assert main(["export", SWEEP, "--mlflow", str(uri)]) == 0
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # set only while exporting
    assert f"in experiment '{SWEEP}'" in capsys.readouterr().out
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri.as_uri())

    def exported():
        experiment = client.get_experiment_by_name(SWEEP)
        runs = client.search_runs([experiment.experiment_id])
        return {r.data.tags["nblab.run_id"]: r for r in runs}

    found = exported()
    assert set(found) == set(ids)
    for run_id, status in zip(ids, ("FINISHED", "FAILED"), strict=True):
        nblab_run, mlflow_run = store.run(run_id), found[run_id]
        assert mlflow_run.info.run_name == nblab_run["name"]
        assert mlflow_run.info.status == status
        tags = mlflow_run.data.tags
        preset = "bf16" if "bf16" in nblab_run["name"] else "nvfp4"
        assert (tags["nblab.sweep"], tags["nblab.preset"]) == (SWEEP, preset)
        assert tags["nblab.status"] == nblab_run["status"]
        # params: the flattened recipe, every field
        fields = dotted_fields(Recipe.from_toml(nblab_run["recipe"]).to_dict())
        fields.pop("name")
        assert set(mlflow_run.data.params) == set(fields)
        assert mlflow_run.data.params["precision.preset"] == preset
        assert mlflow_run.data.params == params_of(nblab_run["recipe"])
        # metrics: every row with its step
        metrics = store.metrics(run_id)
        for key, rows in metrics.groupby("key"):
            history = sorted(client.get_metric_history(mlflow_run.info.run_id, key), key=_step)
            assert [m.step for m in history] == list(rows.step), key
            assert all(same(m.value, v) for m, v in zip(history, rows.value, strict=True))
        artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
        expected = {"recipe.toml", "report.html"} | (
            {"output.ipynb"} if run_id == ids[0] else set()
        )
        assert artifacts == expected
    # exporting again replaces the earlier MLflow runs
    assert main(["export", SWEEP, "--mlflow", str(uri)]) == 0
    again = exported()
    assert set(again) == set(ids)
    assert {r.info.run_id for r in again.values()}.isdisjoint(
        {r.info.run_id for r in found.values()}
    )


def _step(metric):
    return metric.step


# -- the command ----------------------------------------------------------------------


def test_export_names_an_unknown_target_and_needs_a_destination(store, tmp_path, capsys):
    write_runs(store)
    assert main(["export", "nope", "--tensorboard", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'nope' is neither a run id nor a sweep" in err and SWEEP in err
    assert main(["export", SWEEP]) == 2
    assert "--tensorboard DIR or --mlflow URI" in capsys.readouterr().err
    assert runs_of(SWEEP, store) == list(store.runs(sweep=SWEEP).run_id)
