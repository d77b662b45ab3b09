"""The model protocol and its kinds: a module of one's own (py), the [model] section in
recipes and overrides, `nblab run --dry-run`, and bad models refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nblab.cli import main as cli
from nblab.models import build_model, model_shape
from nblab.models.protocol import architecture, tied_weights
from nblab.recipe import Recipe, RecipeError
from nblab.runs import RunStore
from nblab.train.trainer import Trainer, dry_run

OWN = f"{Path(__file__).parent / 'own_model.py'}:build"


def own_recipe(*overrides: str) -> Recipe:
    return Recipe.preset("gpt-debug").with_overrides(
        [
            "model.name=py",
            f"model.factory={OWN}",
            "model.config.d_model=64",
            "model.config.n_blocks=2",
            "data.tokenizer=byte",
            "train.batch_size=8",
            "metrics.stats_interval=0",
            "metrics.histogram_interval=0",
            *overrides,
        ]
    )


def test_a_module_of_ones_own_finds_its_parts_and_trains_quantized():
    trainer = Trainer(own_recipe("precision.preset=mxfp8", "optimizer.lr=3e-3"))
    arch = architecture(trainer.model)
    assert (arch.blocks, arch.embedding, arch.head) == ("blocks", "emb", "out")
    assert set(trainer.plan.quantized) == {
        f"blocks.{i}.{name}" for i in range(2) for name in ("up", "down")
    }
    assert trainer.plan.skipped == {"out": "keep_high_precision 'lm_head'"}  # its head
    losses = [trainer.train_step() for _ in range(20)]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5, losses
    assert "tensor-parallel plan" in trainer.shape.tp_problem


def test_the_factory_gets_the_model_table_and_the_vocab():
    model = build_model(
        {"name": "py", "factory": OWN, "config": {"d_model": 32, "n_blocks": 3}},
        vocab_size=50,
        max_seq_len=16,
    )
    assert len(model.blocks) == 3 and model.emb.weight.shape == (50, 32)
    shape = model_shape({"name": "py", "factory": OWN, "config": {"d_model": 32}}, 50, 16)
    block = 2 * 32 + (32 * 128 + 128) + (128 * 32 + 32)  # LayerNorm, up, down
    assert shape.n_layers == 2
    assert shape.n_params == 50 * 32 + 2 * block + 32 * 50
    assert shape.n_lookup_params == 50 * 32  # the embedding: a lookup, not a matmul


def test_gpt_config_overrides_and_tied_weights_through_the_protocol():
    model = build_model(
        {"flavour": "debug", "config": {"n_layers": 3}}, vocab_size=11, max_seq_len=8
    )
    assert len(model.layers) == 3
    assert tied_weights(model) == {"lm_head.weight": "tok_emb.weight"}
    untied = build_model({"flavour": "debug", "tie_embeddings": False}, 11, 8)
    assert tied_weights(untied) == {}


def test_model_config_overrides_are_toml_values_and_round_trip():
    recipe = Recipe.preset("gpt-debug").with_overrides(
        ["model.config.n_layers=3", "model.config.rope_theta=5e5"]
    )
    assert recipe.model.config == {"n_layers": 3, "rope_theta": 500000.0}
    assert Recipe.from_toml(recipe.to_toml()) == recipe


def test_dry_run_lists_every_module_and_role_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path))
    text = dry_run(Recipe.preset("gpt-debug").with_overrides(["precision.preset=nvfp4"]))
    assert text.startswith("model gpt: ")
    assert "layers.0.attn.wq: fwd_x=e2m1 block16" in text
    assert "wgrad_dy=hadamard16 e2m1 block16 ue4m3/nvfp4 sr" in text
    assert "lm_head: high precision (keep_high_precision 'lm_head')" in text
    assert cli(["run", "gpt-debug", "--dry-run", "--set", "precision.preset=mxfp4"]) == 0
    assert "layers.1.mlp.down: fwd_x=e2m1 block32" in capsys.readouterr().out
    assert RunStore(tmp_path).runs().empty


@pytest.mark.parametrize(
    ("sets", "field"),
    [
        (["model.name=hf", "model.path=/no/such/folder"], "model.path"),
        (
            ["model.name=hf", "model.architecture=llama", "model.config.n_embd=64"],
            "model.config.n_embd",
        ),
        (["model.name=py", "model.factory=no_such_module_xyz:build"], "model.factory"),
        (["model.name=py", f"model.factory={OWN.replace(':build', ':nothing')}"], "model.factory"),
    ],
)
def test_bad_models_are_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys, sets, field
):
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path))
    args = ["run", "gpt-debug", *(a for s in sets for a in ("--set", s))]
    assert cli(args) == 2
    assert field in capsys.readouterr().err
    assert RunStore(tmp_path).runs().empty
    with pytest.raises(RecipeError) as err:
        Recipe.preset("gpt-debug").with_overrides(sets)
    assert field in [p[0] for p in err.value.problems]


def test_a_factory_that_returns_no_module_is_named():
    with pytest.raises(TypeError, match="returned str, not an nn.Module"):
        build_model({"name": "py", "factory": OWN.replace(":build", ":not_a_module")}, 10, 8)


def test_meta_build_allocates_nothing():
    with torch.device("meta"):
        model = build_model({"name": "py", "factory": OWN, "config": {}}, 10, 8)
    assert all(p.is_meta for p in model.parameters())


def test_the_llama_formats_sweep_validates_every_point():
    from nblab.sweep import Sweep

    sweep = Sweep.from_toml(Path(__file__).parents[3] / "sweeps" / "llama-formats.toml")
    points = sweep.expand()  # every point is a valid recipe, or this raises
    assert len(points) == 12
    recipe = points[0].recipe
    assert (recipe.model.name, recipe.model.architecture) == ("hf", "llama")
    shape = model_shape(recipe.model, 257, recipe.train.seq_len)
    assert 70e6 < shape.n_params < 80e6  # "about 76M parameters", as its comment says
