"""Which of a QuantLinear's three GEMMs run natively (precision.gemm), and why.

    emulated  every GEMM multiplies the fake-quantized operands in the training dtype
              (what nblab always did: any format, any device, bit for bit the reference)
    native    the hardware's scaled GEMM (torch._scaled_mm) of the quantized codes
              wherever the device runs it for the GEMM's two operands, emulated where
              it does not (the plan says why)
    auto      native on a GPU where it runs and its result is within the GEMM
              accumulation tolerance of the emulated one
              (nblab_kernels.matmul.gemm_tolerance), measured once per process on the
              device (matmul.probe); emulated elsewhere, and always on the CPU, which
              has no FP8 GEMM units: there torch's native kernel is itself an
              emulation, slower than nblab's (gpt-tiny fp8_tensorwise: 2.05x bf16's
              CPU time per step native, 1.50x emulated, benchmarks/train_step.py)

A native GEMM whose probe result is far outside that tolerance (more than
REFUSE_FACTOR times) is a wrong answer, not rounding: it is refused in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nblab.precision.presets import GEMM_MODES, GEMMS
from nblab_kernels import QuantSpec
from nblab_kernels.matmul import native_kind, probe

REFUSE_FACTOR = 64.0
# where auto may choose native: devices with low-precision GEMM hardware
AUTO_NATIVE_DEVICES = ("cuda",)

# each GEMM's operands (A, B) and whether each is held (K, rows): quantized along dim 0
LAYOUT = {
    "forward": (("fwd_x", False), ("fwd_w", False)),  # y  = x (T, in) @ W (out, in)^T
    "dgrad": (("dgrad_dy", False), ("dgrad_w", True)),  # dx = dy (T, out) @ W (out, in)
    "wgrad": (("wgrad_dy", True), ("wgrad_x", True)),  # dW = dy^T (out, T) @ x (T, in)
}
assert {g: {a, b} for g, ((a, _), (b, _)) in LAYOUT.items()} == {
    g: set(roles) for g, roles in GEMMS.items()
}


@dataclass(frozen=True)
class GemmChoice:
    native: bool
    why: str  # what runs and why, for the plan

    def __str__(self) -> str:
        return self.why


def choose_gemms(
    stored_specs: dict[str, QuantSpec | None],
    mode: str,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> dict[str, GemmChoice]:
    """The choice for each GEMM of a Linear whose roles have these (stored-layout)
    specs, trained on `device` in `dtype`."""
    if mode not in GEMM_MODES:
        raise ValueError(
            f"precision.gemm={mode!r} is not allowed; accepted: {', '.join(GEMM_MODES)}"
        )
    device = torch.device(device if device is not None else "cpu")
    return {g: _choose(stored_specs, g, mode, device, dtype) for g in LAYOUT}


def _choose(specs, gemm: str, mode: str, device: torch.device, dtype) -> GemmChoice:
    (ra, a_kfirst), (rb, b_kfirst) = LAYOUT[gemm]
    a, b = specs[ra], specs[rb]
    if a is None and b is None:
        return GemmChoice(False, "high precision")
    if mode == "emulated":
        return GemmChoice(False, "emulated")
    if a is None or b is None:
        return GemmChoice(False, f"emulated: {ra if a is None else rb} is in high precision")
    if mode == "auto" and device.type not in AUTO_NATIVE_DEVICES:
        return GemmChoice(
            False,
            f"emulated: {device.type} has no low-precision GEMM units, so native is no "
            f"faster there (precision.gemm=native runs it)",
        )
    p = probe(a, b, device, dtype, a_kfirst, b_kfirst)
    if not p.ran:
        return GemmChoice(False, f"emulated: {p.error}")
    ratio = p.deviation / p.tolerance
    measured = f"{ratio:.2g} of the accumulation tolerance on {device.type}"
    if ratio > REFUSE_FACTOR:
        return GemmChoice(False, f"emulated: the native result was off by {measured}")
    if mode == "auto" and ratio > 1:
        return GemmChoice(False, f"emulated: native is not exact ({measured})")
    return GemmChoice(True, f"native {native_kind(a)}: {measured}")
