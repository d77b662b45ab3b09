"""scaled_matmul: a real low-precision GEMM where the hardware has one.

    y = scaled_matmul(nk.quantize(x, spec_x), nk.quantize(w, spec_w))  # x @ w^T

Both operands are quantized along the reduction dim K (x is (M, K), w is (N, K)).
FP8 (e4m3 / e5m2) with tensor-wise or row-wise scales runs torch._scaled_mm on GPUs
that have FP8 tensor cores (compute capability 8.9 and up); everything else
dequantizes and multiplies, which gives the same result within the GEMM's
accumulation tolerance.
"""

from __future__ import annotations

import torch

from .reference import QTensor

_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def _scale_for_mm(q: QTensor, rows: bool) -> torch.Tensor:
    """_scaled_mm's dequantization multiplier: the reciprocal of the stored inv
    (fp32 and pow2 scales store inv = max / amax), (M, 1) for x and (1, N) for w."""
    scale = (1.0 / q.scale.float()).contiguous()
    if q.spec.granularity == "tensor":
        return scale.reshape(())
    return scale.reshape(-1, 1) if rows else scale.reshape(1, -1)


def native_fp8_ok(a: QTensor, b: QTensor) -> bool:
    """Whether torch._scaled_mm can take these operands on this device."""
    specs = (a.spec, b.spec)
    if not all(q.codes.dtype in _FP8 and q.codes.is_cuda for q in (a, b)):
        return False
    if torch.cuda.get_device_capability(a.codes.device) < (8, 9):
        return False
    if any(s.hadamard or s.scale not in ("fp32", "pow2") or s.dim != -1 for s in specs):
        return False
    grans = {s.granularity for s in specs}
    return grans in ({"tensor"}, {"row"}) and len(a.shape) == len(b.shape) == 2


def scaled_matmul(a: QTensor, b: QTensor, out_dtype: torch.dtype = torch.bfloat16):
    """a @ b^T for quantized a (M, K) and b (N, K), in out_dtype."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"scaled_matmul reduces over the last dim: a {tuple(a.shape)} and b "
            f"{tuple(b.shape)} disagree ({a.shape[-1]} vs {b.shape[-1]})"
        )
    if native_fp8_ok(a, b):
        return torch._scaled_mm(
            a.codes,
            b.codes.t(),  # column-major second operand, as cuBLASLt wants
            scale_a=_scale_for_mm(a, rows=True),
            scale_b=_scale_for_mm(b, rows=False),
            out_dtype=out_dtype,
        )
    compute = torch.float32 if out_dtype in (torch.float32, torch.float64) else out_dtype
    if not a.codes.is_cuda:
        compute = torch.float32  # CPU matmuls in half precision are slow and inexact
    y = a.dequantize(compute) @ b.dequantize(compute).transpose(-1, -2)
    return y.to(out_dtype)
