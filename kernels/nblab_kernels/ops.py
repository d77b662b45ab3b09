"""Backend dispatch: one entry point per op, `backend=` picks the implementation.

- "reference": the plain-torch oracle (reference.py), on any device.
- "triton": the Triton kernels (triton/quantize.py), bit for bit equal to the
  reference. On a CPU tensor they need the Triton interpreter (TRITON_INTERPRET=1
  set before triton is imported); without it this raises.
- "compiled": fused CPU kernels from torch.compile (compiled.py), bit for bit equal to
  the reference. Compiling costs seconds per process for each graph (less once
  inductor's on-disk cache has it); when it cannot compile (no C++ compiler) the
  reference runs, with a warning.
- "auto": Triton for CUDA tensors, the reference on the CPU, where one call costs less
  than compiling a graph for it. Where calls repeat, `layer_backend` picks:
  QuantLinear runs a layer whose activations have at least AUTO_COMPILED_MIN_NUMEL
  elements on the compiled kernels (all six operands), as it quantizes them every step.
  NBLAB_AUTO_COMPILED=0 in the environment keeps "auto" on the reference there too
  (the test suite sets it, so that only the compiled backend's own tests compile).

Stochastic rounding without rbits or seed draws one Philox seed from torch's
generator in the Triton and compiled kernels, a whole tensor of bits in the
reference: all repeatable under torch.manual_seed, but different streams.

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

BACKENDS = ("auto", "reference", "triton", "compiled")

# A CPU layer whose activations have at least this many elements runs "auto" on the
# compiled kernels (gpt-tiny: 2048 tokens x 128 and up, a 5x faster step); a small
# model's (gpt-debug: 128 x 64) stay on the reference, so short runs and tests pay no
# compile time.
AUTO_COMPILED_MIN_NUMEL = 2**18
AUTO_COMPILED_ENV = "NBLAB_AUTO_COMPILED"


def layer_backend(backend: str, activations: torch.Tensor) -> str:
    """The backend for every operand of a layer called every step, whose activations
    (tokens x in_features) are `activations`: "auto" becomes "compiled" for a large
    CPU layer, anything else stays as it is."""
    return layer_backend_for(backend, activations.device.type, activations.numel())


def auto_backend(device_type: str) -> str:
    """What "auto" runs for one call on a device_type tensor: Triton on CUDA, the
    reference elsewhere."""
    return "triton" if device_type == "cuda" else "reference"


def layer_backend_for(backend: str, device_type: str, numel: int) -> str:
    """layer_backend for activations of `numel` elements on a `device_type` device (a
    plan says so before anything runs)."""
    if backend != "auto" or device_type != "cpu":
        return backend
    if os.environ.get(AUTO_COMPILED_ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return backend
    return "compiled" if numel >= AUTO_COMPILED_MIN_NUMEL else backend


class TritonFallbackWarning(UserWarning):
    """A Triton or compiled backend was asked for, but the reference ran (same numbers)."""


_warned: set[str] = set()  # fallback reasons already warned about in this process


def _interpreter_enabled() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _fallback(reason: str, instead_of: str = "Triton"):
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"nblab_kernels: using the reference instead of {instead_of}: {reason}",
            TritonFallbackWarning,
            stacklevel=4,
        )
    return reference


_compile_failure: str | None = None  # why torch.compile failed in this process, once it did


def _compiled(x: torch.Tensor, spec: QuantSpec):
    """The compiled backend for x, or the reference with a warning."""
    from . import compiled

    if _compile_failure:  # warned once already, when it failed
        return _fallback(_compile_failure, "the compiled kernels")
    reason = compiled.unsupported_reason(x, spec)
    if reason is None:
        return _CompiledOrReference
    return _fallback(f"{reason} ({spec.describe()})", "the compiled kernels")


class _CompiledOrReference:
    """compiled.<op>, or, when compiling fails (no C++ compiler, ...), the reference from
    then on in this process, warned once."""

    @staticmethod
    def _call(op: str, x, spec, **kw):
        global _compile_failure
        from . import compiled

        try:
            return getattr(compiled, op)(x, spec, **kw)
        except compiled.CompileError as err:
            _compile_failure = f"torch.compile failed: {err.__cause__ or err}"
            _fallback(_compile_failure, "the compiled kernels")
            return getattr(reference, op)(x, spec, **kw)

    @classmethod
    def quantize(cls, x, spec, **kw):
        return cls._call("quantize", x, spec, **kw)

    @classmethod
    def fake_quantize(cls, x, spec, **kw):
        return cls._call("fake_quantize", x, spec, **kw)

    @classmethod
    def quant_stats(cls, x, spec, **kw):
        return cls._call("quant_stats", x, spec, **kw)


def _resolve(spec: QuantSpec | str, backend: str) -> QuantSpec:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not available; accepted: {', '.join(BACKENDS)}")
    if isinstance(spec, str):
        spec = QuantSpec.from_name(spec)
    elif not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec or a preset name, got {type(spec).__name__}")
    return spec


def _impl(x: torch.Tensor, spec: QuantSpec, backend: str, op: str):
    """The module that runs `op` for x: the reference, the compiled kernels or the
    Triton wrappers."""
    if backend == "reference":
        return reference
    if backend == "compiled":
        return _compiled(x, spec)
    if backend == "auto" and auto_backend(x.device.type) == "reference":
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
