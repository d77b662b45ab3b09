"""The formats a trained model is evaluated in, and what its weights then cost in bits.

An evaluation quantizes the forward GEMM only (y = x W^T): weights (role fwd_w) and,
unless weights_only, activations (role fwd_x). `eval.precision` names the format:

    forward_preset("nvfp4")      # a precision preset: its fwd_x / fwd_w specs, its keep list
    forward_preset("int4_b32")   # a QuantSpec name: that spec for x and W, the head kept high
    forward_preset(recipe.precision)   # "" in a recipe: its [precision] section

Bits per element count what serving the weights takes: the element's bits plus each
scale's stored bits over the elements it scales (NVFP4 also its fp32 tensor scale).
A weight kept in high precision counts HIGH_BITS, as bf16.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from nblab.precision.presets import (
    PRECISION_PRESETS,
    ROLES,
    PrecisionPreset,
    resolve_precision,
)
from nblab_kernels.formats import QUANT_PRESETS, QuantSpec

HIGH_BITS = 16.0  # a weight kept in high precision, served in bf16
FORWARD_ROLES = ("fwd_x", "fwd_w")


def format_names() -> list[str]:
    """Every name eval.precision takes: the precision presets, then the QuantSpec names
    that are not also a preset."""
    return [*PRECISION_PRESETS, *(n for n in QUANT_PRESETS if n not in PRECISION_PRESETS)]


def forward_preset(precision: Any) -> PrecisionPreset:
    """The forward roles (fwd_x, fwd_w) of a format, the others high, with its keep list.

    precision: a precision preset name, a QuantSpec name, or a [precision] section. A
    QuantSpec name quantizes x and W with that spec and keeps the model's head high, as
    every preset does. ValueError names an unknown format and lists the known ones."""
    if isinstance(precision, str):
        if precision in PRECISION_PRESETS:
            base = PRECISION_PRESETS[precision]
        elif precision in QUANT_PRESETS:
            spec = QUANT_PRESETS[precision]
            roles = {r: (spec if r in FORWARD_ROLES else None) for r in ROLES}
            return PrecisionPreset(
                precision, roles, ("lm_head",), f"{spec.describe()} on x and W of the forward"
            )
        else:
            raise ValueError(
                f"precision {precision!r} is unknown; accepted: {', '.join(format_names())}"
            )
    else:
        base = resolve_precision(precision)
    roles = {r: (base.roles[r] if r in FORWARD_ROLES else None) for r in ROLES}
    return PrecisionPreset(base.name, roles, base.keep_high_precision, base.description)


def weight_bits(spec: QuantSpec | None, out_features: int, in_features: int) -> float:
    """Bits per element of an (out, in) weight stored in `spec` (scales included, grouped
    along in_features as the forward GEMM reduces); HIGH_BITS for None."""
    if spec is None:
        return HIGH_BITS
    bits = float(spec.element_format.bits)
    if spec.is_cast:
        return bits
    numel = out_features * in_features
    scale_bits = _dtype_bits(spec.scale_format.storage_dtype)
    if spec.granularity == "tensor":
        groups = 1
    elif spec.granularity == "row":
        groups = out_features
    elif spec.granularity == "block":
        groups = out_features * math.ceil(in_features / spec.block)
    else:  # tile
        groups = math.ceil(out_features / spec.block) * math.ceil(in_features / spec.block)
    extra = 32 if spec.rule == "nvfp4" else 0  # NVFP4's fp32 tensor scale
    return bits + (groups * scale_bits + extra) / numel


def _dtype_bits(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits


def mean_bits(rows: list[tuple[int, float]]) -> float:
    """Bits per element over weights given as (elements, bits per element) pairs."""
    total = sum(n for n, _ in rows)
    return sum(n * b for n, b in rows) / total if total else math.nan


__all__ = [
    "FORWARD_ROLES",
    "HIGH_BITS",
    "format_names",
    "forward_preset",
    "mean_bits",
    "weight_bits",
]
