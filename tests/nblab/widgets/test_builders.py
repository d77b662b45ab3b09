import time

import pytest

import nblab.widgets.recipe_builder as recipe_builder
import nblab.widgets.sweep_builder as sweep_builder
from nblab.batch.sweeps import SweepHandle
from nblab.recipe import Recipe
from nblab.widgets import RecipeBuilder, SweepBuilder

# -- RecipeBuilder -------------------------------------------------------------------

# (field, bad value, words of the message beside that field)
BAD_FIELDS = [
    ("train.steps", "abc", "an integer >= 1"),
    ("optimizer.lr", "-1", "a number in (0, 10]"),
    ("parallel.nproc", "2", "dp_replicate=1 * dp_shard=1 * tp=1 * pp=1 = 1"),
    ("precision.roles.fwd_x", "bogus", '"high" or a QuantSpec preset name'),
    ("optimizer.betas", "0.9", "a list of 2 numbers"),
]


@pytest.mark.parametrize(("path", "bad", "words"), BAD_FIELDS)
def test_bad_field_gets_a_message_and_recipe_stays_last_valid(store, path, bad, words):
    builder = RecipeBuilder(Recipe.preset("gpt-debug"))
    builder.set("train.steps", 7)  # a valid edit first: it becomes .recipe
    assert builder.recipe.train.steps == 7 and builder.messages == {}
    builder.set(path, bad)
    assert list(builder.messages) == [path]
    assert words in builder.messages[path]
    assert words in builder._notes[path].value.replace("&quot;", '"').replace("&gt;", ">")
    assert builder.recipe.train.steps == 7 and builder.recipe.problems() == []
    assert "7" in builder.preview.value  # the preview shows the last valid recipe


def test_the_model_kinds_show_their_own_fields_and_check_sources_live(store, tmp_path):
    builder = RecipeBuilder(Recipe.preset("gpt-debug"))
    assert builder.visible("model.flavour") and not builder.visible("model.path")
    builder.set("model.name", "hf")
    assert builder.visible("model.path") and builder.visible("model.architecture")
    assert not builder.visible("model.flavour") and not builder.visible("model.factory")
    builder.set("model.path", str(tmp_path / "nowhere"))
    assert "no such folder" in builder.messages["model.path"]
    builder.set("model.path", "")
    builder.set("model.architecture", "llama")
    builder.set("model.config", "{hidden_size = 64, num_hidden_layers = 2, hidden_sise = 3}")
    assert "did you mean 'hidden_size'" in builder.messages["model.config"]
    builder.set(
        "model.config", "{hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2}"
    )
    builder.set("data.tokenizer", "byte")
    assert builder.messages == {}
    assert builder.recipe.model.config == {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
    }
    builder.set("model.name", "py")
    assert builder.visible("model.factory") and not builder.visible("model.architecture")
    builder.set("model.architecture", "")
    builder.set("model.factory", "no_such_module_xyz:build")
    assert "does not import" in builder.messages["model.factory"]


def test_fixing_the_field_clears_its_message(store):
    builder = RecipeBuilder("gpt-debug")
    builder.set("train.steps", "abc")
    builder.set("train.steps", "12")
    assert builder.messages == {} and builder.recipe.train.steps == 12


def test_roles_keep_list_and_preset_dropdown(store):
    builder = RecipeBuilder("gpt-debug")
    builder.set("precision.preset", "nvfp4")
    builder.set("precision.roles.dgrad_dy", "high")
    builder.set("precision.roles.fwd_x", "{rounding = 'sr'}")
    builder.set("precision.keep_high_precision", "lm_head, layers.1.*")
    recipe = builder.recipe
    assert recipe.precision.preset == "nvfp4"
    assert recipe.precision.roles == {"fwd_x": {"rounding": "sr"}, "dgrad_dy": "high"}
    assert recipe.precision.keep_high_precision == ["lm_head", "layers.1.*"]
    assert (
        Recipe.from_toml(
            builder.preview.value.split(">", 1)[1]
            .rsplit("<", 1)[0]
            .replace("&quot;", '"')
            .replace("&#x27;", "'")
        )
        == recipe
    )
    builder.preset.value = "gpt-tiny"  # loading a preset refills every field
    assert builder.recipe == Recipe.preset("gpt-tiny")
    assert builder.fields["precision.roles.fwd_x"].value == ""


def test_save_writes_the_valid_recipe(store, tmp_path):
    builder = RecipeBuilder("gpt-debug")
    builder.set("train.steps", 5)
    builder.set("train.batch_size", "x")  # invalid: the file holds the last valid recipe
    path = builder.save(tmp_path / "r.toml")
    assert Recipe.from_toml(path).train.steps == 5


def test_run_button_launches_one_job_without_waiting(store, monkeypatch):
    submitted = []

    class FakeLauncher:
        def __init__(self, jobs, store):
            self.store = store

        def submit(self, run_ids):
            submitted.extend(run_ids)

    monkeypatch.setattr(recipe_builder, "LocalLauncher", FakeLauncher)
    builder = RecipeBuilder("gpt-debug")
    builder.run_button.click()
    handle = builder.handle
    assert submitted == [handle.run_id]
    assert store.run(handle.run_id)["status"] == "queued"
    assert Recipe.from_toml(store.run(handle.run_id)["recipe"]) == builder.recipe
    assert builder.monitor.source.run_ids() == [handle.run_id]


def test_sweep_button_hands_the_recipe_to_a_sweep_builder(store):
    builder = RecipeBuilder("gpt-debug")
    builder.set("train.steps", 3)
    builder.sweep_button.click()
    assert builder.sweep_builder.recipe.train.steps == 3


# -- SweepBuilder --------------------------------------------------------------------


def test_sweep_preview_counts_points_and_shows_errors(store):
    builder = SweepBuilder(Recipe.preset("gpt-debug"), name="s1")
    assert builder.preview() == 1  # no axes: the base alone
    builder.presets.value = ("bf16", "mxfp8", "nvfp4", "mxfp4")
    assert len(builder.points) == 4
    builder.axes.value = "optimizer.lr=1e-3,3e-3"
    assert len(builder.points) == 8 and "8 points" in builder.count.value
    assert builder.points[0].name == "preset=bf16,lr=1e-3"
    builder.axes.value = "optimizer.lr=1e-3,bad"
    assert builder.points == [] and "optimizer.lr: 'bad' -> a number in (0, 10]" in builder.error
    assert builder.launch_button.disabled
    builder.axes.value = "optimizer.bogus=1"
    assert "did you mean" in builder.error


def test_launch_returns_the_handle_at_once(store, monkeypatch):
    calls = []

    def fake_run_sweep(sweep, *, launcher, jobs, wait, store):
        calls.append((sweep.name, len(sweep), jobs, wait, launcher))
        ids = [store.create_run(p.name, p.recipe.to_toml(), sweep.name) for p in sweep.expand()]
        return SweepHandle(sweep.name, ids, store)

    monkeypatch.setattr(sweep_builder, "run_sweep", fake_run_sweep)
    builder = SweepBuilder("gpt-debug", name="s2", presets=("bf16", "nvfp4"), jobs=2)
    handle = builder.launch()
    assert calls == [("s2", 2, 2, False, None)]  # None: the local launcher
    assert builder.handle is handle and len(handle.run_ids) == 2
    assert set(builder.monitor.status) == set(handle.run_ids)
    assert builder.launcher.options == ("local", "slurm")


def test_real_tiny_launch(store):
    recipe = Recipe.preset("gpt-debug").with_overrides(
        ["train.steps=2", "eval.interval=0", "metrics.histogram_interval=0"]
    )
    builder = SweepBuilder(recipe, name="real", presets=("bf16",))
    t0 = time.monotonic()
    handle = builder.launch(autostart=False)
    assert time.monotonic() - t0 < 5  # returns before the job trains
    status = handle.wait(timeout=100)
    assert list(status.status) == ["succeeded"], status.error.tolist()
    builder.monitor.refresh()
    loss = builder.monitor.data[handle.run_ids[0]]
    assert loss[loss.key == "loss"].step.max() == 2
