"""Backend dispatch: one entry point per op, `backend=` picks the implementation.

"auto" picks the fastest implementation that matches the reference bit for bit on
x's device; today that is the reference everywhere (the Triton kernels plug in
here). "reference" forces the plain-torch oracle.
"""

from __future__ import annotations

import torch

from . import reference
from .formats import QuantSpec
from .reference import QTensor, QuantStats

BACKENDS = ("auto", "reference")


def _resolve(spec: QuantSpec | str, backend: str):
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not available; accepted: {', '.join(BACKENDS)}")
    if isinstance(spec, str):
        spec = QuantSpec.from_name(spec)
    elif not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec or a preset name, got {type(spec).__name__}")
    return spec, reference


def quantize(
    x: torch.Tensor,
    spec: QuantSpec | str,
    *,
    rbits: torch.Tensor | None = None,
    seed: int | None = None,
    backend: str = "auto",
) -> QTensor:
    spec, impl = _resolve(spec, backend)
    return impl.quantize(x, spec, rbits=rbits, seed=seed)


def fake_quantize(
    x: torch.Tensor,
    spec: QuantSpec | str,
    *,
    rbits: torch.Tensor | None = None,
    seed: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    spec, impl = _resolve(spec, backend)
    return impl.fake_quantize(x, spec, rbits=rbits, seed=seed)


def quant_stats(
    x: torch.Tensor,
    spec: QuantSpec | str,
    *,
    rbits: torch.Tensor | None = None,
    seed: int | None = None,
    backend: str = "auto",
) -> QuantStats:
    spec, impl = _resolve(spec, backend)
    return impl.quant_stats(x, spec, rbits=rbits, seed=seed)
