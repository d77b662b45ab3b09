"""A fine-tuned run's weights: as the plain model computes with them, or its LoRA adapter
alone in peft's format.

    recipe, state, step = dense_weights(run_id)    # {plain name: fp32 tensor}: W + B A alpha/r
    load_dense(model, recipe, path, vocab_size)    # into a plain model of the run's kind
    export_adapter(run_id, Path("adapter/"))       # adapter_model.safetensors + adapter_config.json

A LoRA run's checkpoint holds its model as it trained: peft's wrappers (`.base_layer`,
`lora_A`, `lora_B`) and, with finetune.base_format, the packed codes and scales. A plain
model of the same recipe is rebuilt, prepared the same way, loaded, and folded back
(nblab.finetune.dense_state_dict), so merging, evaluation and `export_hf` see every run
(full, LoRA, LoRA on a packed base) as the same plain model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from nblab import finetune
from nblab.models import build_model
from nblab.models.protocol import architecture
from nblab.recipe import Recipe
from nblab.runs import RunStore
from nblab.train import checkpoint
from nblab.train.data import build_data
from nblab.train.weights import resolve


def _vocab(recipe: Recipe) -> int:
    return build_data(recipe).vocab_size


def prepared_model(recipe: Recipe, vocab_size: int) -> nn.Module:
    """The model of `recipe` as its run trained it (LoRA wrappers, packed base), random
    weights (a checkpoint is loaded over them)."""
    model = build_model(recipe.model, vocab_size, recipe.train.seq_len, weights=False)
    finetune.prepare(model, recipe.finetune, architecture(model))
    return model


def load_dense(model: nn.Module, recipe: Recipe, path: Path, vocab_size: int) -> None:
    """Load checkpoint `path` of a run of `recipe` into `model`, a plain model of the same
    kind and shape: a full fine-tune's weights as they are, a LoRA run's folded back."""
    if recipe.finetune.method == "full":
        checkpoint.load_model(path, model)
        return
    twin = prepared_model(recipe, vocab_size)
    checkpoint.load_model(path, twin)
    model.load_state_dict(finetune.dense_state_dict(twin), strict=True)


def dense_weights(
    run_id: str, step: int | None = None, store: RunStore | None = None
) -> tuple[Recipe, dict[str, torch.Tensor], int]:
    """(recipe, {plain parameter name: fp32 tensor}, step) of run `run_id` at `step`
    (default: its latest checkpoint)."""
    store = store or RunStore()
    source = resolve(run_id if step is None else f"{run_id}:{step}", store)
    recipe = Recipe.from_toml(store.run(run_id)["recipe"])
    model = prepared_model(recipe, _vocab(recipe))
    checkpoint.load_model(Path(source.path), model)
    state = {k: v.float() for k, v in finetune.dense_state_dict(model).items()}
    return recipe, state, int(source.step)


def export_adapter(
    run_id: str, out: Path, *, step: int | None = None, store: RunStore | None = None
) -> Path:
    """Write run `run_id`'s LoRA adapter alone in peft's format: adapter_model.safetensors
    (keys base_model.model.<module>.lora_A.weight / lora_B.weight) and adapter_config.json.
    Module names are those of `export_hf`'s checkpoint (a GPT run's Llama names), so
    `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), out)` applies it
    to the base exported from the run it fine-tuned (model.init_from). A packed base's
    adapter was trained against the dequantized base: `export_hf` of this run writes the
    merged weights it computes with."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from nblab.models.gpt import GPT, llama_name

    store = store or RunStore()
    source = resolve(run_id if step is None else f"{run_id}:{step}", store)
    recipe = Recipe.from_toml(store.run(run_id)["recipe"])
    f = recipe.finetune
    if f.method != "lora":
        raise ValueError(
            f"run {run_id} is a {f.method} fine-tune (finetune.method={f.method!r}): it has no "
            f"adapter; export its weights with export_hf"
        )
    model = prepared_model(recipe, _vocab(recipe))
    checkpoint.load_model(Path(source.path), model)

    def hf_module(name: str) -> str:
        return llama_name(f"{name}.weight")[: -len(".weight")] if isinstance(model, GPT) else name

    tensors, modules = {}, []
    layers = finetune.lora.lora_layers(model)
    for name, layer in layers.items():
        hf = hf_module(name)
        modules.append(hf)
        for part in ("lora_A", "lora_B"):
            weight = getattr(layer, part)[finetune.lora.ADAPTER].weight.detach()
            tensors[f"base_model.model.{hf}.{part}.weight"] = weight.contiguous().cpu()
    base = recipe.model.init_from
    config = LoraConfig(
        r=f.r,
        lora_alpha=f.alpha,
        lora_dropout=f.dropout,
        target_modules=modules,
        # the exported base's layout: GPT-2's Conv1D stores W as (in, out)
        fan_in_fan_out=all(
            finetune.lora.stored_transposed(l.get_base_layer()) for l in layers.values()
        ),
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base if base and Path(base).is_dir() else None,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config.save_pretrained(str(out))
    meta = {"run_id": run_id, "step": source.step, "base": base, "base_format": f.base_format}
    (out / "nblab.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


__all__ = ["dense_weights", "export_adapter", "load_dense", "prepared_model"]
