"""Weights out and back in: `export_hf` writes a checkpoint transformers loads with the same
logits; model.init_from starts a run from an export or from a run's checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from nblab.models.protocol import architecture
from nblab.recipe import Recipe, RecipeError
from nblab.runs import RunStore
from nblab.train import checkpoint
from nblab.train.export import export_hf
from nblab.train.trainer import Trainer, train

QWEN = {
    "model.name": "hf",
    "model.architecture": "qwen2",  # biases on q/k/v, tied embeddings
    "model.config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path / "home"))
    return RunStore(tmp_path / "home")


def debug(*overrides, **sets) -> Recipe:
    base = Recipe.preset("gpt-debug").with_overrides(
        ["train.steps=3", "data.tokenizer=byte", "checkpoint.interval=2", "checkpoint.keep=3"]
    )
    return base.with_overrides(sets).with_overrides(list(overrides))


def trained_model(recipe: Recipe, run_dir, step: int):
    trainer = Trainer(recipe)
    checkpoint.load_model(run_dir / "checkpoints" / f"step_{step:07d}", trainer.model)
    return trainer.model.eval()


@pytest.mark.parametrize("kind", ["hf", "gpt"])
def test_export_loads_in_transformers_with_the_same_logits(store, tmp_path, kind):
    recipe = debug(**(QWEN if kind == "hf" else {}))
    run = train(recipe, store=store)
    out = export_hf(run.run_id, tmp_path / "export", store=store)
    meta = json.loads((out / "nblab.json").read_text())
    assert (meta["run_id"], meta["step"]) == (run.run_id, 3)
    loaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert type(loaded).__name__ == ("Qwen2ForCausalLM" if kind == "hf" else "LlamaForCausalLM")
    ours = trained_model(recipe, store.run_dir(run.run_id), 3)
    idx = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        theirs = loaded(input_ids=idx).logits
        mine = architecture(ours).logits(ours, idx)
    if kind == "hf":
        assert torch.equal(mine, theirs)
    else:  # the same math; RoPE's tables are computed a little differently
        torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=0)


@pytest.mark.parametrize("source", ["export", "run", "run:2"])
def test_init_from_starts_at_those_weights_and_records_them(store, tmp_path, source):
    first = train(debug(**QWEN), store=store)
    if source == "export":
        spec = str(export_hf(first.run_id, tmp_path / "export", store=store))
        expected = load_file(tmp_path / "export" / "model.safetensors")
    else:
        step = 2 if source == "run:2" else 3
        spec = first.run_id + (":2" if source == "run:2" else "")
        expected = trained_model(debug(**QWEN), store.run_dir(first.run_id), step).state_dict()
    recipe = debug(f"model.init_from={spec}", "train.steps=1", **QWEN)
    trainer = Trainer(recipe)
    for name, value in expected.items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    run = train(recipe, store=store)
    assert run.status == "succeeded"
    record = json.loads((store.run_dir(run.run_id) / "init_from.json").read_text())
    assert record["spec"] == spec
    assert "weights from" in (store.run_dir(run.run_id) / "plan.txt").read_text()


def test_bad_init_from_is_refused_naming_what_exists(store, tmp_path):
    run = train(debug(), store=store)  # checkpoints at steps 2 and 3
    cases = {
        f"{run.run_id}:5": "saved no step 5; saved steps: [2, 3]",
        "20990101-000000-0000": "neither a folder of *.safetensors nor a run",
        str(tmp_path): "holds no *.safetensors",
    }
    for spec, says in cases.items():
        with pytest.raises(RecipeError) as err:
            debug(f"model.init_from={spec}")
        assert err.value.problems[0][0] == "model.init_from"
        assert says in err.value.problems[0][2], err.value.problems


def test_weights_of_another_shape_name_the_first_that_differs(store):
    run = train(debug(), store=store)
    wider = debug(f"model.init_from={run.run_id}", "model.config.d_model=128")
    with pytest.raises(ValueError, match=r"'tok_emb.weight' has shape \(256, 64\).*\(256, 128\)"):
        Trainer(wider)


def test_nblab_export_hf_from_the_command_line(store, tmp_path, capsys):
    from nblab.cli import main as cli

    run = train(debug(), store=store)
    out = tmp_path / "cli-export"
    assert cli(["export", run.run_id, "--hf", str(out), "--step", "2"]) == 0
    assert json.loads((out / "nblab.json").read_text())["step"] == 2
    assert f"{run.run_id}: {out}" in capsys.readouterr().out
    assert cli(["export", run.run_id, "--hf", str(out), "--step", "7"]) == 2
    assert "saved no step 7; saved steps: [2, 3]" in capsys.readouterr().err
