"""Backend dispatch: one entry point per op, `backend=` picks the implementation.

- "reference": the plain-torch oracle (reference.py), on any device.
- "triton": the Triton kernels (triton/quantize.py), bit for bit equal to the
  reference. On a CPU tensor they need the Triton interpreter (TRITON_INTERPRET=1
  set before triton is imported); without it this raises.
- "auto": Triton for CUDA tensors, the reference everywhere else.

A (spec, device, dtype) the kernels do not cover (a plain cast, an fp64 input, a
block that is not a power of two, ...) runs on the reference instead, with one
TritonFallbackWarning per distinct reason per process: the numbers are the
reference's either way. Hadamard specs (n in 16..128, dim -1 or 0) run fused.
quant_stats on Triton is one quantize pass that also sums the statistics: the
counts equal the reference's, SQNR and relative errors agree to float tolerance
(fp32 partial sums in another order).
"""

from __future__ import annotations

import os
import warnings

import torch

from . import reference
from .formats import QuantSpec
from .reference import QTensor, QuantStats

BACKENDS = ("auto", "reference", "triton")


class TritonFallbackWarning(UserWarning):
    """A Triton backend was asked for, but the reference ran (same numbers)."""


_warned: set[str] = set()  # fallback reasons already warned about in this process


def _interpreter_enabled() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _fallback(reason: str):
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"nblab_kernels: using the reference instead of Triton: {reason}",
            TritonFallbackWarning,
            stacklevel=4,
        )
    return reference


def _resolve(spec: QuantSpec | str, backend: str) -> QuantSpec:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not available; accepted: {', '.join(BACKENDS)}")
    if isinstance(spec, str):
        spec = QuantSpec.from_name(spec)
    elif not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec or a preset name, got {type(spec).__name__}")
    return spec


def _impl(x: torch.Tensor, spec: QuantSpec, backend: str, op: str):
    """The module that runs `op` for x: reference or the Triton wrappers."""
    if backend == "reference" or (backend == "auto" and x.device.type != "cuda"):
        return reference
    if x.device.type == "cpu" and not _interpreter_enabled():
        raise ValueError(
            f"backend='triton' got a CPU tensor but the Triton interpreter is off; set "
            f"TRITON_INTERPRET=1 before triton is imported, move x to a CUDA device, or use "
            f"backend='auto' or 'reference' (op {op}, x {tuple(x.shape)} {x.dtype})"
        )
    from .triton.plan import unsupported_reason  # imports no triton

    reason = unsupported_reason(x, spec)
    if reason is not None:
        return _fallback(f"{reason} ({spec.describe()})")
    try:
        from .triton import quantize as triton_impl
    except ImportError as err:  # triton missing or broken: numbers stay the reference's
        if backend == "triton":
            raise ValueError(f"backend='triton' but triton cannot be imported: {err}") from err
        return _fallback(f"triton cannot be imported ({err})")
    return triton_impl


def quantize(
    x: torch.Tensor,
    spec: QuantSpec | str,
    *,
    rbits: torch.Tensor | None = None,
    seed: int | None = None,
    backend: str = "auto",
) -> QTensor:
    spec = _resolve(spec, backend)
    return _impl(x, spec, backend, "quantize").quantize(x, spec, rbits=rbits, seed=seed)


def fake_quantize(
    x: torch.Tensor,
    spec: QuantSpec | str,
    *,
    rbits: torch.Tensor | None = None,
    seed: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    spec = _resolve(spec, backend)
    return _impl(x, spec, backend, "fake_quantize").fake_quantize(x, spec, rbits=rbits, seed=seed)


def quant_stats(
    x: torch.Tensor,
    spec: QuantSpec | str,
    *,
    rbits: torch.Tensor | None = None,
    seed: int | None = None,
    backend: str = "auto",
) -> QuantStats:
    spec = _resolve(spec, backend)
    return _impl(x, spec, backend, "quant_stats").quant_stats(x, spec, rbits=rbits, seed=seed)
