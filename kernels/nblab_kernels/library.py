"""The quantizers as torch.library custom ops, so torch.compile sees them as one node.

  nblab::fake_quantize(Tensor x, str spec_json, int seed) -> Tensor
  nblab::quantize(Tensor x, str spec_json, int seed) -> (Tensor codes, Tensor scale,
                                                         Tensor tensor_scale)

`spec_json` is `spec_json(spec)` (the QuantSpec's fields as JSON) or a preset name.
`seed` selects the Philox stream of stochastic rounding (ignored for rne), so the op
is a pure function of its inputs. Each op runs `ops.*` with backend="auto": the
Triton kernels on CUDA, the reference on CPU, bit for bit the same numbers. The fake
(meta) implementations compute the output shapes and dtypes from the spec alone, so
a `torch.compile(fullgraph=True)` function calls the ops without graph breaks.

quantize returns plain tensors (a custom op cannot return a QTensor): a scale that the
spec does not have (plain casts) and a missing tensor scale are empty (0,) tensors;
`quantize` below wraps them back into a QTensor outside compiled code.

No autograd formula is registered: wrap the op in the straight-through estimator of
your choice where it is trained through.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import torch

from . import ops
from .formats import QuantSpec
from .reference import GroupLayout, QTensor

__all__ = ["fake_quantize", "quantize", "spec_from_json", "spec_json"]


def spec_json(spec: QuantSpec | str) -> str:
    """The op argument for spec: its fields as canonical JSON (a preset name is kept)."""
    if isinstance(spec, str):
        QuantSpec.from_name(spec)  # raises on an unknown name, listing the accepted ones
        return spec
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


@functools.lru_cache(maxsize=256)
def spec_from_json(text: str) -> QuantSpec:
    """Inverse of spec_json: a JSON object of QuantSpec fields, or a preset name."""
    if not text.lstrip().startswith("{"):
        return QuantSpec.from_name(text)
    fields = json.loads(text)
    known = {f.name for f in dataclasses.fields(QuantSpec)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"spec_json has unknown QuantSpec fields {unknown}; "
            f"accepted: {', '.join(sorted(known))}"
        )
    return QuantSpec(**fields)


def _seed_for(spec: QuantSpec, seed: int) -> int | None:
    return seed if spec.rounding == "sr" else None


def _fresh(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A custom op may not return its input or a view of it (an fp32 cast of fp32 x)."""
    out = out.contiguous()
    if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        out = out.clone()
    return out


# ---------------------------------------------------------------------------
# nblab::fake_quantize
# ---------------------------------------------------------------------------


@torch.library.custom_op("nblab::fake_quantize", mutates_args=())
def _fake_quantize_op(x: torch.Tensor, spec_json: str, seed: int) -> torch.Tensor:
    spec = spec_from_json(spec_json)
    out = ops.fake_quantize(x, spec, seed=_seed_for(spec, seed), backend="auto")
    return _fresh(out, x)


@_fake_quantize_op.register_fake
def _(x: torch.Tensor, spec_json: str, seed: int) -> torch.Tensor:
    return x.new_empty(x.shape)


# ---------------------------------------------------------------------------
# nblab::quantize
# ---------------------------------------------------------------------------


def _output_meta(x: torch.Tensor, spec: QuantSpec):
    """(codes shape, codes dtype, scale shape, scale dtype, tensor-scale shape): what
    reference.quantize returns for x, from the shapes alone."""
    fmt = spec.element_format
    shape = tuple(x.shape)
    if spec.is_cast:
        return shape, fmt.torch_dtype, (0,), torch.float32, (0,)
    k = shape[-1] if shape else 1
    layout = GroupLayout.of(shape, math.prod(shape) // k, k, spec)
    codes_shape = shape[:-1] + (k // 2,) if fmt.packed else shape
    if fmt.torch_dtype is not None:
        codes_dtype = fmt.torch_dtype
    else:
        codes_dtype = torch.int8 if fmt.kind == "int" else torch.uint8
    two_level = spec.scale_format.grid is not None
    scale_dtype = spec.scale_format.storage_dtype
    return (
        codes_shape,
        codes_dtype,
        (layout.gm, layout.gk),
        scale_dtype,
        (() if two_level else (0,)),
    )


@torch.library.custom_op("nblab::quantize", mutates_args=())
def _quantize_op(
    x: torch.Tensor, spec_json: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    spec = spec_from_json(spec_json)
    qt = ops.quantize(x, spec, seed=_seed_for(spec, seed), backend="auto")
    scale = qt.scale if qt.scale is not None else x.new_empty((0,), dtype=torch.float32)
    ts = qt.tensor_scale if qt.tensor_scale is not None else x.new_empty((0,), dtype=torch.float32)
    return _fresh(qt.codes, x), scale.contiguous(), ts.contiguous()


@_quantize_op.register_fake
def _(x: torch.Tensor, spec_json: str, seed: int):
    codes_shape, codes_dtype, scale_shape, scale_dtype, ts_shape = _output_meta(
        x, spec_from_json(spec_json)
    )
    return (
        x.new_empty(codes_shape, dtype=codes_dtype),
        x.new_empty(scale_shape, dtype=scale_dtype),
        x.new_empty(ts_shape, dtype=torch.float32),
    )


# ---------------------------------------------------------------------------
# Python entry points
# ---------------------------------------------------------------------------


def fake_quantize(x: torch.Tensor, spec: QuantSpec | str, seed: int = 0) -> torch.Tensor:
    """torch.ops.nblab.fake_quantize. In compiled code pass a str (spec_json(spec) or a
    preset name) computed outside, so that nothing but the op is traced."""
    text = spec if isinstance(spec, str) else spec_json(spec)
    return torch.ops.nblab.fake_quantize(x, text, seed)


def quantize(x: torch.Tensor, spec: QuantSpec | str, seed: int = 0) -> QTensor:
    """torch.ops.nblab.quantize, wrapped into the reference's QTensor (eager only)."""
    text = spec if isinstance(spec, str) else spec_json(spec)
    spec = spec_from_json(text)
    codes, scale, ts = torch.ops.nblab.quantize(x, text, seed)
    return QTensor(
        codes,
        scale if not spec.is_cast else None,
        ts if ts.dim() == 0 else None,
        spec,
        tuple(x.shape),
        x.dtype,
    )
