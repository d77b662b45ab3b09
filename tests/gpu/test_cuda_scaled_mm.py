"""Native scaled GEMMs (torch._scaled_mm) on the GPU against the product of the
dequantized operands, for every operand layout the QuantLinear uses, and what
precision.gemm=auto picks here. Each measured deviation (in units of
gemm_tolerance) is printed, for the gpu-check log.

bf16 (the dtype GPU runs train in) must be within the tolerance; fp32 output only within
REFUSE_FACTOR of it: FP8 tensor cores may accumulate in less than fp32 (auto then stays
emulated, which test_auto_choices_on_this_gpu shows).
"""

from __future__ import annotations

import pytest
import torch

import nblab_kernels as nk
from nblab.precision.gemm import LAYOUT, REFUSE_FACTOR, choose_gemms
from nblab.precision.linear import on_stored_layout
from nblab.precision.presets import get_preset
from nblab_kernels.matmul import (
    dequantized_mm,
    gemm_deviation,
    gemm_tolerance,
    native_mm,
    native_problem,
)

M, N, K = 2048, 1536, 1024
DEV = torch.device("cuda")


def _operand(rows: int, kfirst: bool, dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(rows, K, generator=gen) * torch.exp2(
        torch.randint(-4, 5, (rows, 1), generator=gen)
    )
    return (t.t().contiguous() if kfirst else t).to(DEV, dtype)


def _deviation(spec_a, spec_b, a_kfirst, b_kfirst, dtype) -> float:
    qa = nk.quantize(_operand(M, a_kfirst, dtype, 0), spec_a, seed=1)
    qb = nk.quantize(_operand(N, b_kfirst, dtype, 1), spec_b, seed=2)
    try:
        native = native_mm(qa, qb, dtype, a_kfirst=a_kfirst, b_kfirst=b_kfirst)
    except RuntimeError as err:  # a limit of this torch or device: auto falls back too
        pytest.skip(f"torch._scaled_mm refuses it here: {str(err).splitlines()[0]}")
    emulated = dequantized_mm(qa, qb, dtype, a_kfirst=a_kfirst, b_kfirst=b_kfirst)
    da, db = qa.dequantize(torch.float32).abs(), qb.dequantize(torch.float32).abs()
    da, db = (da.t() if a_kfirst else da), (db.t() if b_kfirst else db)
    return gemm_deviation(native, emulated, da @ db.t()) / gemm_tolerance(K, dtype)


PRESETS = ["fp8_tensorwise", "fp8_rowwise", "mxfp8", "mxfp4", "nvfp4"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("gemm", list(LAYOUT))
@pytest.mark.parametrize("preset", PRESETS)
def test_native_gemm_matches_the_dequantized_product(preset, gemm, dtype):
    roles = get_preset(preset).roles
    (ra, a_kfirst), (rb, b_kfirst) = LAYOUT[gemm]
    spec_a, spec_b = on_stored_layout(roles[ra], ra), on_stored_layout(roles[rb], rb)
    problem = native_problem(spec_a, spec_b, DEV)
    if problem:
        pytest.skip(problem)
    ratio = _deviation(spec_a, spec_b, a_kfirst, b_kfirst, dtype)
    print(f"\n{preset} {gemm} {dtype}: deviation {ratio:.3g} x gemm_tolerance")
    assert ratio <= (1.0 if dtype == torch.bfloat16 else REFUSE_FACTOR), ratio


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("preset", PRESETS)
def test_auto_choices_on_this_gpu(preset, dtype):
    roles = get_preset(preset).roles
    stored = {r: on_stored_layout(s, r) for r, s in roles.items()}
    choices = choose_gemms(stored, "auto", DEV, dtype)
    for gemm, choice in choices.items():
        print(f"\n{preset} {dtype} {gemm}: {choice.why}")
    if torch.cuda.get_device_capability() >= (8, 9) and preset.startswith("fp8"):
        assert dtype != torch.bfloat16 or all(c.native for c in choices.values())
