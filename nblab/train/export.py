"""A run's weights as a Hugging Face checkpoint: `nblab export RUN_ID --hf DIR`.

    export_hf("20261206-101500-1234", Path("exports/best"))          # latest checkpoint
    AutoModelForCausalLM.from_pretrained("exports/best")             # the same logits

A Hugging Face run (model.name = "hf") is saved as its own class; a run of nblab's GPT as
a LlamaForCausalLM, which it is (RMSNorm, RoPE in the "half split" layout, SwiGLU, GQA):
the same weights under Llama's names, the same logits up to float rounding. The weights
are the run's high-precision master weights, whatever its precision recipe (a recipe
quantizes GEMM operands on the fly; serve them quantized with `nblab eval`'s formats).
The tokenizer is saved beside them when the run's tokenizer can be (data.tokenizer bpe:N
or a tokenizer path), and nblab.json says which run and step the folder holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nblab.models import build_model
from nblab.models.gpt import GPT, llama_config, llama_name
from nblab.recipe import Recipe
from nblab.runs import RunStore
from nblab.train.finetuned import load_dense
from nblab.train.trainer import build_data
from nblab.train.weights import resolve


def export_hf(
    run_id: str, out: Path, *, step: int | None = None, store: RunStore | None = None
) -> Path:
    """Write run `run_id`'s weights at `step` (default: its latest checkpoint) to `out` with
    save_pretrained (safetensors), and its tokenizer when it has one. Returns `out`."""
    store = store or RunStore()
    source = resolve(run_id if step is None else f"{run_id}:{step}", store)
    recipe = Recipe.from_toml(store.run(run_id)["recipe"])
    if recipe.model.name == "py":
        raise ValueError(
            f"run {run_id} trains a model of your own (model.name='py'), which has no "
            f"transformers class; its weights are in {source.path}"
        )
    dataset = build_data(recipe)
    model = build_model(recipe.model, dataset.vocab_size, recipe.train.seq_len, weights=False)
    # a LoRA run's adapters folded in: W + B A alpha / r (a packed base dequantized)
    load_dense(model, recipe, Path(source.path), dataset.vocab_size)
    if isinstance(model, GPT):
        from transformers import LlamaForCausalLM

        hf = LlamaForCausalLM(llama_config(model.config))
        state = {llama_name(k): v for k, v in model.state_dict().items()}
        hf.load_state_dict(state, strict=True)
        model = hf
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        model.save_pretrained(out, safe_serialization=True)
    tokenizer = getattr(dataset, "tokenizer", None)
    saved_tokenizer = hasattr(tokenizer, "save")
    if saved_tokenizer:
        tokenizer.save(out)
    meta = {
        "run_id": run_id,
        "step": source.step,
        "recipe": recipe.name,
        "precision": recipe.precision.preset,
        "model": recipe.model.name,
        "finetune": recipe.finetune.method,
        "tokenizer": recipe.data.tokenizer if saved_tokenizer else None,
    }
    (out / "nblab.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


__all__ = ["export_hf"]
