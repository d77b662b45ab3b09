"""LoRA through peft (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

    names = target_names(model, ["layers.*.attn.*"], block_prefix="layers.")
    apply_lora(model, names, r=8, alpha=16, dropout=0.0)   # in place; only adapters train
    dense_state_dict(model)       # the weights it computes with: W + B A alpha / r, plain names

peft's LoRA layers wrap the target linears in place (`inject_adapter_in_model`: the model
keeps its class, its Architecture and every other module), so the trainer, the precision
plan and the checkpoints see an ordinary module tree. A target may be a QuantLinear (its
roles then quantize the base GEMMs) or a PackedLinear (a packed frozen base): peft wraps
any nn.Linear. The adapters A (r, in) and B (out, r) are nn.Linear in high precision; peft
initialises A (Kaiming uniform) and B (zeros), so a fresh adapter changes nothing.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

import torch
from torch import nn

from nblab.finetune.packed import PackedLinear
from nblab.precision.linear import linear_shape

ADAPTER = "default"  # peft's adapter name; one adapter per model here
BASE_LAYER = ".base_layer"  # where peft moves the wrapped linear


def linear_names(model: nn.Module) -> list[str]:
    """Qualified names of every linear module (nn.Linear, Conv1D, QuantLinear,
    PackedLinear), in module order, peft's own adapters and wrappers left out."""
    out = []
    for name, module in model.named_modules():
        if linear_shape(module) is None or ".lora_" in name or name.endswith(BASE_LAYER):
            continue
        out.append(name)
    return out


def target_names(
    model_or_names: nn.Module | Iterable[str], globs: list[str], *, block_prefix: str
) -> list[str]:
    """The linear modules the globs name (fnmatch over qualified names), in module order;
    [] of globs names every linear of the blocks (those under block_prefix). A glob that
    matches no linear is a ValueError naming it and the linears there are."""
    names = (
        linear_names(model_or_names)
        if isinstance(model_or_names, nn.Module)
        else list(model_or_names)
    )
    if not globs:
        return [n for n in names if n.startswith(block_prefix)]
    for glob in globs:
        if not any(fnmatch.fnmatchcase(n, glob) for n in names):
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ValueError(
                f"target glob {glob!r} matches no linear module; the model's linears: {shown}"
            )
    return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]


def apply_lora(model: nn.Module, names: list[str], *, r: int, alpha: float, dropout: float):
    """Wrap each named linear with a peft LoRA layer (rank r, scaling alpha / r, dropout
    on the adapter's input), then freeze every parameter but the adapters'. Returns
    peft's LoraConfig (what an exported adapter's adapter_config.json holds)."""
    from peft import LoraConfig, inject_adapter_in_model

    if not names:
        raise ValueError("LoRA needs at least one target linear module")
    transposed = [stored_transposed(model.get_submodule(n)) for n in names]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        fan_in_fan_out=all(transposed),  # GPT-2's Conv1D stores W as (in, out)
        # a regex peft matches against each module's full name: exactly these modules
        target_modules="(?:" + "|".join(re.escape(n) for n in names) + ")",
        bias="none",
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter(name))
    return config


def is_adapter(name: str) -> bool:
    """Whether a parameter name is a LoRA adapter's (lora_A / lora_B)."""
    return ".lora_A." in name or ".lora_B." in name


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{wrapped module's name: peft LoRA layer} of a model."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_delta(layer: nn.Module) -> torch.Tensor:
    """B A alpha / r of one peft LoRA layer, (out, in) in fp32 (transposed for a weight
    stored (in, out), as Conv1D's)."""
    a = layer.lora_A[ADAPTER].weight.detach().float()  # (r, in)
    b = layer.lora_B[ADAPTER].weight.detach().float()  # (out, r)
    delta = (b @ a) * layer.scaling[ADAPTER]  # (out, in)
    return delta.t() if stored_transposed(layer.get_base_layer()) else delta


def stored_transposed(module: nn.Module) -> bool:
    """Whether a linear stores its weight (in, out), as transformers' Conv1D does (and a
    QuantLinear or PackedLinear standing in for one)."""
    shape = linear_shape(module)
    return bool(shape and shape[2])


def base_weight(module: nn.Module) -> torch.Tensor:
    """The weight a linear computes with, in fp32 (a PackedLinear's dequantized)."""
    if isinstance(module, PackedLinear):
        return module.dequantized(torch.float32)
    return module.weight.detach().float()


@torch.no_grad()
def dense_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as the plain model it adapts would hold them: every LoRA
    target's weight W + B A alpha / r (in fp32; W dequantized when packed), a packed
    linear's weight dequantized, the names without peft's `.base_layer`, no adapter
    tensors. A model without LoRA or packing gives its own state dict (detached)."""
    wrapped = lora_layers(model)
    packed = {n: m for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if is_adapter(key):
            continue
        owner, _, leaf = key.rpartition(".")
        if owner in packed and leaf in ("codes", "scale", "tensor_scale"):
            continue
        out[key.replace(BASE_LAYER + ".", ".")] = value.detach()
    for name, module in packed.items():
        out[name.replace(BASE_LAYER, "") + ".weight"] = base_weight(module)
    for name, layer in wrapped.items():
        key = f"{name}.weight"
        out[key] = base_weight(layer.get_base_layer()) + lora_delta(layer)
    return out


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), each tensor counted once; a packed base's
    weights count among all parameters (they are buffers, not Parameters)."""
    params = list(model.parameters())
    packed = sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, PackedLinear)
    )
    return sum(p.numel() for p in params if p.requires_grad), sum(
        p.numel() for p in params
    ) + packed


__all__ = [
    "ADAPTER",
    "apply_lora",
    "base_weight",
    "count_trainable",
    "dense_state_dict",
    "is_adapter",
    "linear_names",
    "lora_delta",
    "lora_layers",
    "target_names",
]
