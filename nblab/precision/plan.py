"""apply_precision: swap a model's linear modules for QuantLinear, by plan.

Linear modules are nn.Linear and transformers' Conv1D (GPT-2), as
nblab.precision.linear.linear_shape says. The plan report says, for every one, which
spec each role got, or why the module stayed in high precision (a keep_high_precision
entry, or a dimension the spec's block does not divide), and for each of its three
GEMMs whether it runs natively or emulated, and why (precision.gemm, nblab.precision.gemm).

Block entries of keep_high_precision (first:N, last:N, last:P%) count the model's repeated
blocks, whose modules are named f"{block_prefix}{i}." (the model protocol says the prefix:
"layers." for nblab's GPT, "model.layers." for a Llama). The entry "lm_head" stands for the
model's output head whatever its name (`head`), so the presets keep every model's head
in high precision, as torchao and TransformerEngine do.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import nblab_kernels as nk
from nblab.precision.gemm import choose_gemms
from nblab.precision.linear import QuantLinear, linear_shape, on_stored_layout
from nblab.precision.presets import (
    ROLES,
    PrecisionPreset,
    get_preset,
    keep_blocks,
    parse_keep_token,
    resolve_precision,
)
from nblab_kernels.ops import AUTO_COMPILED_MIN_NUMEL

HEAD_TOKEN = "lm_head"  # a keep_high_precision glob that also means the model's head


@dataclass
class ModulePlan:
    module: str
    in_features: int
    out_features: int
    quantized: bool
    specs: dict[str, str] = field(default_factory=dict)  # role -> describe() or "high"
    reason: str = ""
    gemms: dict[str, str] = field(default_factory=dict)  # GEMM -> native or emulated, why
    quantizer: str = ""  # the backend its quantizers run on, where the plan knows the tokens


@dataclass
class PlanReport:
    preset: PrecisionPreset
    modules: list[ModulePlan]
    gemm: str = "emulated"  # precision.gemm, and where it was decided
    gemm_on: str = "cpu, float32"
    backend: str = "auto"  # precision.backend

    @property
    def quantized(self) -> list[str]:
        return [m.module for m in self.modules if m.quantized]

    @property
    def skipped(self) -> dict[str, str]:
        return {m.module: m.reason for m in self.modules if not m.quantized}

    def rows(self) -> list[dict[str, Any]]:
        """One row per module, for a DataFrame or a table."""
        return [
            {
                "module": m.module,
                "shape": f"{m.out_features}x{m.in_features}",
                **m.specs,
                "reason": m.reason,
                **{f"gemm_{g}": why for g, why in m.gemms.items()},
            }
            for m in self.modules
        ]

    def __str__(self) -> str:
        whys = list(dict.fromkeys(w for m in self.modules for w in m.gemms.values()))
        native = sum(w.startswith("native") for m in self.modules for w in m.gemms.values())
        lines = [
            f"precision {self.preset.name}: {len(self.quantized)} of "
            f"{len(self.modules)} Linear modules quantized; precision.gemm={self.gemm} on "
            f"{self.gemm_on}: {native} of {sum(len(m.gemms) for m in self.modules)} GEMMs native"
        ]
        quantizers = [m.quantizer for m in self.modules if m.quantizer]
        if quantizers:
            counts = ", ".join(f"{b} for {quantizers.count(b)}" for b in dict.fromkeys(quantizers))
            big = f"2^{AUTO_COMPILED_MIN_NUMEL.bit_length() - 1}"
            why = (
                f"; compiled (torch.compile) for layers whose activations have >= {big} "
                "elements: the first steps compile them"
                if "compiled" in quantizers and self.backend == "auto"
                else ""
            )
            lines.append(f"quantizers (precision.backend={self.backend}): {counts}{why}")
        for m in self.modules:
            if m.quantized:
                specs = ", ".join(f"{r}={s}" for r, s in m.specs.items())
                gemms = ", ".join(
                    f"{g} {w.split(' ')[0].rstrip(':')} [{whys.index(w) + 1}]"
                    for g, w in m.gemms.items()
                )
                lines.append(f"  {m.module}: {specs}; GEMMs {gemms}")
            else:
                lines.append(f"  {m.module}: high precision ({m.reason})")
        lines += [f"  [{i}] {w}" for i, w in enumerate(whys, 1)]
        return "\n".join(lines)


def _as_preset(precision: Any) -> PrecisionPreset:
    if isinstance(precision, PrecisionPreset):
        return precision
    if isinstance(precision, str):
        return get_preset(precision)
    return resolve_precision(precision)


def _block_of(name: str, block_prefix: str) -> int | None:
    match = re.match(rf"^{re.escape(block_prefix)}(\d+)\.", name)
    return int(match.group(1)) if match else None


def count_blocks(names, block_prefix: str) -> int:
    """The number of blocks among module names (1 + the largest block index)."""
    found = [b for n in names if (b := _block_of(n, block_prefix)) is not None]
    return max(found) + 1 if found else 0


def keeping_token(
    name: str,
    preset: PrecisionPreset,
    n_blocks: int,
    block_prefix: str = "layers.",
    head: str = HEAD_TOKEN,
) -> str:
    """The keep_high_precision entry (a glob, first:N, last:N or last:P%) that keeps
    module `name` of a model with `n_blocks` blocks in high precision, or ''."""
    block = _block_of(name, block_prefix)
    for token in preset.keep_high_precision:
        parsed = parse_keep_token(token)
        if parsed.kind == "glob":
            if fnmatch.fnmatchcase(name, parsed.pattern):
                return token
            if parsed.pattern == HEAD_TOKEN and name == head:
                return token
        elif block is not None and block in keep_blocks([token], n_blocks):
            return token
    return ""


def _kept_by(
    name: str, preset: PrecisionPreset, n_blocks: int, block_prefix: str, head: str
) -> str:
    """Why `name` stays in high precision by a keep entry, or ''."""
    token = keeping_token(name, preset, n_blocks, block_prefix, head)
    if not token or parse_keep_token(token).kind == "glob":
        return f"keep_high_precision {token!r}" if token else ""
    block = _block_of(name, block_prefix)
    return f"block {block} of {n_blocks} kept by keep_high_precision {token!r}"


def _shape_problem(in_f: int, out_f: int, role: str, spec) -> str:
    """Why `spec` cannot quantize this role's weight-side dims, or ''. Token dims
    (batch x seq) are checked when the tensor arrives."""
    stored = on_stored_layout(spec, role)
    if stored is None or stored.padding == "pad" or stored.block is None:
        return ""
    b = stored.block
    # the weight-side dims each role's blocks run along (a tile runs along both)
    along, across = {
        "fwd_x": ("in", None),
        "fwd_w": ("in", "out"),
        "dgrad_dy": ("out", None),
        "dgrad_w": ("out", "in"),
        "wgrad_x": (None, "in"),
        "wgrad_dy": (None, "out"),
    }[role]
    sizes = {"in": ("in_features", in_f), "out": ("out_features", out_f)}
    dims = [sizes[along]] if along else []
    if stored.granularity == "tile" and across:
        dims.append(sizes[across])
    for dim_name, size in dims:
        if size % b:
            return f"{dim_name}={size} is not a multiple of block {b} ({role}: {spec.describe()})"
    if stored.hadamard:
        for dim_name, size in dims:
            if size % stored.hadamard:
                return f"{dim_name}={size} is not a multiple of hadamard {stored.hadamard} ({role})"
    return ""


def apply_precision(
    model: nn.Module,
    precision: Any,
    backend: str = "auto",
    *,
    block_prefix: str = "layers.",
    head: str = HEAD_TOKEN,
    gemm: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    tokens: int | None = None,
) -> PlanReport:
    """Swap every linear module of `model` (nn.Linear or Conv1D, in place) for a
    QuantLinear as `precision` says: a preset name, a PrecisionPreset, or a [precision]
    section / mapping. Modules kept in high precision stay as they are. block_prefix and
    head: where the model keeps its blocks and its output head (see the module doc).
    `gemm` (default: the section's precision.gemm, else "emulated") chooses native or
    emulated GEMMs for training on `device` (default cpu) in `dtype`. `tokens`, the rows
    of a layer's input in one call, lets the report say which backend each layer's
    quantizers run on (nblab_kernels.layer_backend). Returns the plan report."""
    if linear_shape(model) is not None:
        raise ValueError("apply_precision swaps submodules: wrap a bare nn.Linear in a module")
    if gemm is None:
        gemm = _section_gemm(precision)
    device = torch.device(device if device is not None else "cpu")
    preset = _as_preset(precision)
    linears = [
        (name, module, dims)
        for name, module in model.named_modules()
        if not isinstance(module, QuantLinear) and (dims := linear_shape(module)) is not None
    ]
    n_blocks = count_blocks((name for name, _ in model.named_modules()), block_prefix)
    plans: list[ModulePlan] = []
    swaps: list[tuple[str, nn.Module, list[str]]] = []
    for name, module, (in_f, out_f, _) in linears:
        plan = ModulePlan(name, in_f, out_f, quantized=False)
        if preset.is_high_precision:
            plan.reason = f"preset {preset.name} is high precision"
        else:
            plan.reason = _kept_by(name, preset, n_blocks, block_prefix, head) or next(
                (p for r in ROLES if (p := _shape_problem(in_f, out_f, r, preset.roles[r]))), ""
            )
        if not plan.reason:
            plan.quantized = True
            plan.specs = {r: s.describe() if s else "high" for r, s in preset.roles.items()}
            stored = {r: on_stored_layout(s, r) for r, s in preset.roles.items()}
            choices = choose_gemms(stored, gemm, device, dtype)
            plan.gemms = {g: c.why for g, c in choices.items()}
            swaps.append((name, module, [g for g, c in choices.items() if c.native]))
            if tokens is not None:
                chosen = nk.layer_backend_for(backend, device.type, tokens * in_f)
                plan.quantizer = chosen if chosen != "auto" else nk.auto_backend(device.type)
        plans.append(plan)
    for name, module, native in swaps:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear.from_linear(module, preset.roles, backend, native))
    on = f"{device.type}, {str(dtype).removeprefix('torch.')}"
    return PlanReport(preset, plans, gemm=gemm, gemm_on=on, backend=backend)


def _section_gemm(precision: Any) -> str:
    """precision.gemm of a [precision] section or mapping; "emulated" for a preset."""
    if isinstance(precision, Mapping):
        return precision.get("gemm", "auto")
    return getattr(precision, "gemm", "emulated")


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
