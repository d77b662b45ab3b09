"""Fine-tuning: which weights train (full, or LoRA through peft) and how a frozen base is
stored (packed codes and scales). The recipe's [finetune] section says which:

    [finetune]
    method = "lora"                  # full (every parameter trains) | lora
    r = 8                            # LoRA rank; scaling alpha / r
    alpha = 16.0
    dropout = 0.0
    target_modules = ["layers.*.attn.*"]   # globs over linear module names; [] = every
                                           # linear of the model's blocks
    base_format = "nvfp4"            # lora only: the frozen base packed in this format

`prepare(model, section, arch)` does it to a built model after its precision plan (so a
packed or adapted linear keeps its QuantLinear roles) and returns a FinetunePlan, which
the run's plan.txt prints: the adapters, the trainable parameters, and the bytes the
packed base saves against bf16, measured from its buffers. Nothing here knows which model
it is: target names come from the model's module tree and its Architecture's block prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from nblab.finetune.lora import (
    apply_lora,
    count_trainable,
    dense_state_dict,
    linear_names,
    target_names,
)
from nblab.finetune.packed import PackedLinear, Storage, base_formats, pack_base, storage

Problem = tuple[str, Any, str]  # as nblab.recipe.Problem


@dataclass
class FinetunePlan:
    """What prepare() did: the method, the adapted modules, trainable and total
    parameters, and the packed base's storage (None when the base is not packed)."""

    method: str
    targets: list[str] = field(default_factory=list)
    trainable: int = 0
    total: int = 0
    r: int = 0
    alpha: float = 0.0
    storage: Storage | None = None

    def describe(self) -> str:
        if self.method == "full":
            return f"fine-tuning full: all {self.total:,} parameters train"
        share = self.trainable / self.total if self.total else 0.0
        lines = [
            f"fine-tuning lora r={self.r} alpha={self.alpha:g} (scaling {self.alpha / self.r:g})"
            f" on {len(self.targets)} linears: {self.trainable:,} adapter parameters train, "
            f"{share:.2%} of {self.total:,}; the optimizer sees only them"
        ]
        if self.storage is not None:
            lines.append(self.storage.describe())
        return "\n".join(lines)


def prepare(model: nn.Module, section: Any, arch: Any) -> FinetunePlan:
    """Apply a [finetune] section to `model` in place (after apply_precision): method
    "full" leaves it as it is; "lora" packs the blocks' linears when base_format is set,
    wraps the targets with LoRA and freezes everything else."""
    if section.method == "full":
        trainable, total = count_trainable(model)
        return FinetunePlan("full", trainable=trainable, total=total)
    targets = target_names(model, list(section.target_modules), block_prefix=arch.block_prefix)
    packed = None
    if section.base_format:
        base = [n for n in linear_names(model) if n.startswith(arch.block_prefix)]
        pack_base(model, base, section.base_format)
    apply_lora(model, targets, r=section.r, alpha=section.alpha, dropout=section.dropout)
    if section.base_format:
        packed = storage(model)
    trainable, total = count_trainable(model)
    return FinetunePlan("lora", targets, trainable, total, section.r, section.alpha, storage=packed)


def finetune_problems(recipe: Any) -> list[Problem]:
    """nblab.recipe.SOURCE_CHECKS: a base_format that is not a format (or asked of a full
    fine-tune), LoRA on several processes, target globs that match no linear of the model."""
    f = recipe.finetune
    out: list[Problem] = []
    if f.base_format and f.base_format not in base_formats():
        out.append(
            ("finetune.base_format", f.base_format, f"'' or one of {', '.join(base_formats())}")
        )
    elif f.base_format and f.method != "lora":
        out.append(
            (
                "finetune.base_format",
                f.base_format,
                "'' with finetune.method='full' (a full fine-tune trains the base weights, so "
                "they cannot be frozen as packed codes); or set finetune.method='lora'",
            )
        )
    if f.method != "lora":
        return out
    if recipe.parallel.nproc > 1:
        out.append(
            (
                "finetune.method",
                f.method,
                "'full' with parallel.nproc > 1: LoRA runs in one process",
            )
        )
    names = _model_linears(recipe)
    if names is not None:
        for glob in f.target_modules:
            try:
                target_names(names, [glob], block_prefix="")
            except ValueError as err:
                out.append(("finetune.target_modules", glob, str(err)))
    return out


def _model_linears(recipe: Any) -> list[str] | None:
    """The model's linear module names, from its config alone (None when the model cannot
    be built: model_problems names why)."""
    from nblab.models import embedding_rows, model_shape

    try:
        vocab = embedding_rows(recipe.model) or 256  # names do not depend on the vocabulary
        return [s.name for s in model_shape(recipe.model, vocab, recipe.train.seq_len).linears]
    except (ValueError, OSError, ImportError, TypeError):
        return None


def _size(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.3f} GB"
    return f"{n / 1e6:.3f} MB" if n >= 1e6 else f"{n:,.0f} bytes"


@dataclass(frozen=True)
class FinetuneMemory:
    """What LoRA changes in the planner's per-GPU memory, for the whole model: the base's
    parameters, the adapter parameters (the only ones with grads and optimizer state), the
    base weights held packed and their bytes."""

    base: int
    adapters: int
    packed: int
    packed_bytes: float

    def describe(self) -> str:
        total = self.base + self.adapters
        line = (
            f"lora: {self.adapters:,} adapter parameters train "
            f"({self.adapters / total:.2%} of {total:,})"
        )
        if self.packed:
            bf16 = 2 * self.packed
            line += (
                f"; packed base: {self.packed:,} weights in {_size(self.packed_bytes)} against "
                f"{_size(bf16)} in bf16, {_size(bf16 - self.packed_bytes)} saved"
            )
        return line

    def states(self, p_rank: float, optimizer_bytes: int) -> dict[str, float]:
        """params / grads / optimizer bytes of a rank holding p_rank of the base's
        parameters: the model's mix scaled to its share (adapters and packing are spread
        over every block, so this is an estimate, like the rest of the plan)."""
        share = p_rank / self.base if self.base else 0.0
        params = (self.base - self.packed) * 4 + self.packed_bytes + self.adapters * 4
        return {
            "params": share * params,
            "grads": share * self.adapters * 4,
            "optimizer": share * self.adapters * optimizer_bytes,
        }


def finetune_memory(
    recipe: Any, shape: Any, bytes_per_element: Callable[[Any], float]
) -> FinetuneMemory | None:
    """The planner's view of a lora recipe (None for full fine-tuning and pretraining): from
    the ModelShape's linears alone, nothing built. bytes_per_element(spec): what one packed
    weight takes (the planner's quant_bytes_per_element: element bits plus scale bits per
    group)."""
    f = getattr(recipe, "finetune", None)
    if f is None or f.method != "lora":
        return None
    import nblab_kernels as nk

    linears = list(shape.linears)
    targets = set(
        target_names(
            [s.name for s in linears], list(f.target_modules), block_prefix=shape.block_prefix
        )
    )
    adapters = sum(f.r * (s.in_features + s.out_features) for s in linears if s.name in targets)
    packed, packed_bytes = 0, 0.0
    if f.base_format:
        spec = nk.QuantSpec.from_name(f.base_format)
        per = bytes_per_element(spec)
        for s in linears:
            if s.block is not None:
                packed += s.in_features * s.out_features
                packed_bytes += per * s.in_features * s.out_features
    return FinetuneMemory(shape.n_params, adapters, packed, packed_bytes)


__all__ = [
    "FinetuneMemory",
    "FinetunePlan",
    "PackedLinear",
    "Storage",
    "base_formats",
    "dense_state_dict",
    "finetune_memory",
    "finetune_problems",
    "prepare",
    "storage",
]
