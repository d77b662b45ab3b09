"""Instruction data: the loss counts response tokens only, exact match grades greedy
decoding, a fine-tune keeps its base's tokenizer, bad files are named by field. And a LoRA
run goes out as merged weights (export_hf) or as the adapter alone in peft's format."""

from __future__ import annotations

import json

import pytest
import torch

from nblab import Recipe
from nblab.models.protocol import IGNORE_INDEX
from nblab.recipe import RecipeError
from nblab.train.data import AdditionDataset, CharTokenizer, build_data, build_dataset
from nblab.train.instruct import InstructDataset
from nblab.train.trainer import train


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_loss_counts_response_tokens_only(tmp_path):
    rows = [{"q": f"ab{i}", "a": "xyz"} for i in range(10)]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    ds = build_dataset(
        "instruct", path=path, val_fraction=0.5, prompt_field="q", response_field="a"
    )
    ds.examples["train"] = [(ds.encode("ab"), ds.encode("xyz"))]  # one example to draw
    x, y = ds.get_batch("train", 2, 10, torch.Generator().manual_seed(0))
    ids = {c: ds.encode(c)[0] for c in "abxyz"}
    # two examples fit in 11 tokens: a b x y z a b x y z, then one pad
    row = [ids[c] for c in "abxyzabxyz"]
    assert x[0].tolist() == row
    # targets: the next token where it is a response token, else ignored (the next
    # example's prompt and the pad are not learned)
    ign = IGNORE_INDEX
    assert y[0].tolist() == [ign, ids["x"], ids["y"], ids["z"], ign] * 2


def test_exact_match_grades_the_greedy_continuation_token_for_token():
    tok = CharTokenizer("ab=")
    ds = InstructDataset(
        [
            (p + "=", r)
            for p in ("a", "b", "ab", "ba", "aa", "bb", "aab", "bba")
            for r in ("b", "ab", "bb")
        ],
        tok,
        source="mem",
        val_fraction=0.5,
        seed=0,
    )

    class Always(torch.nn.Module):  # predicts token `b` everywhere
        def forward(self, idx):
            logits = torch.zeros(*idx.shape, 3)
            logits[..., tok.stoi["b"]] = 1.0
            return logits

    # the val examples whose response is all b's are right, the others wrong
    val = ds.examples["val"]
    right = sum(all(t == tok.stoi["b"] for t in r) for _, r in val)
    assert ds.exact_match(Always(), 256, "cpu") == pytest.approx(right / len(val))
    assert 0 < right < len(val)


def test_a_fine_tune_on_instruct_data_uses_its_base_runs_tokenizer(runs, store, tmp_path):
    add = AdditionDataset(digits=2)
    rows = [
        {"prompt": add.prompt(a, b), "response": add.answer(a, b)}
        for a in range(10)
        for b in range(10)
    ]
    path = _jsonl(tmp_path / "sums.jsonl", rows)
    recipe = Recipe.preset("gpt-debug").with_overrides(
        {
            "data.name": "instruct",
            "data.path": str(path),
            "model.init_from": runs.base,
            "finetune.method": "lora",
            "train.seq_len": 20,
            "train.batch_size": 8,
            "train.steps": 2,
            "eval.interval": 2,
            "eval.batches": 1,
            "metrics.stats_interval": 0,
            "metrics.histogram_interval": 0,
        }
    )
    ds = build_data(recipe)
    assert ds.tokenizer.chars == AdditionDataset.VOCAB  # the pretrained run's ids
    result = train(recipe, store=store)
    assert result.status == "succeeded"
    assert 0 <= result.metrics["val_accuracy"] <= 1


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"prompt": "a"}', "finetune.response_field"),
        ('{"prompt": "a", "response": 3}', "data.path"),
        ("not json", "data.path"),
    ],
)
def test_bad_instruct_files_are_refused_with_the_field_named(tmp_path, line, field):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "x", "response": "y"}\n' + line + "\n")
    with pytest.raises(RecipeError) as err:
        Recipe.preset("gpt-debug").with_overrides({"data.name": "instruct", "data.path": str(path)})
    assert [p[0] for p in err.value.problems] == [field]
    assert "bad.jsonl:2" in err.value.problems[0][2]


def test_a_lora_run_exports_merged_and_as_a_peft_adapter_that_peft_merges_the_same(
    runs, store, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from nblab.train.export import export_hf
    from nblab.train.finetuned import export_adapter

    lora = runs.members["lora"]
    export_hf(runs.base, tmp_path / "base", store=store)
    export_hf(lora, tmp_path / "merged", store=store)
    export_adapter(lora, tmp_path / "adapter", store=store)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["peft_type"] == "LORA"
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    theirs, ours = with_adapter.state_dict(), merged.state_dict()
    original = AutoModelForCausalLM.from_pretrained(tmp_path / "base").state_dict()
    assert set(theirs) == set(ours)
    changed = 0
    for name, tensor in ours.items():
        torch.testing.assert_close(theirs[name], tensor, rtol=0, atol=1e-6)
        changed += "q_proj" in name and not torch.equal(tensor, original[name])
    assert changed  # the adapter moved the attention weights
    with pytest.raises(ValueError, match="no adapter"):
        export_adapter(runs.members["full"], tmp_path / "none", store=store)
    # the same through the CLI: a sweep writes a folder per LoRA run, skips the full one
    from nblab.cli import main as cli

    assert cli(["export", "ft", "--adapter", str(tmp_path / "cli")]) == 0
    written = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert written == sorted(f"{point}-{runs.members[point]}" for point in ("lora", "lora-nvfp4"))
