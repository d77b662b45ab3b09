"""Scaled GEMMs of quantized operands: the hardware's own (torch._scaled_mm), or the
product of the dequantized operands, and how far apart the two may be.

    y = scaled_matmul(nk.quantize(x, spec_x), nk.quantize(w, spec_w))  # x @ w^T

Operands are quantized along the reduction dim K. Each is held (rows, K), or (K, rows)
when `kfirst` (the stored layout of W in dgrad, of dy and x in wgrad: quantized along
dim 0). What has a native GEMM (`native_problem` says why not otherwise):
  - FP8 (e4m3 / e5m2) with tensor-wise or per-row (along K) fp32 / pow2 scales:
    torch._scaled_mm on GPUs with FP8 tensor cores (sm_89 and up) and on the CPU
    (torch 2.13 runs both scalings there, in fp32, for every fp8 pair);
  - MXFP8 / MXFP4 (e8m0 scales over blocks of 32) and NVFP4 (ue4m3 over blocks of 16,
    times the fp32 tensor scales): block-scaled GEMMs that only sm_100 (Blackwell)
    has. These paths have not run on hardware yet: `probe` checks them on the device
    before anything trains with them.
Where both operands carry the same Hadamard transform the codes are multiplied in the
transformed domain: the transform is orthogonal, so it cancels in the product.

`gemm_tolerance` states how far a native GEMM may be from the dequantized product
without either being wrong; `probe` measures it on a device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .formats import QuantSpec
from .reference import QTensor, pack_fp4, unpack_fp4

_FP8_ELEMENTS = ("e4m3", "e5m2")


def native_kind(spec: QuantSpec) -> str | None:
    """The native GEMM family of one operand's (stored) spec, or None."""
    if spec.element in _FP8_ELEMENTS and spec.scale in ("fp32", "pow2"):
        if spec.granularity == "tensor":
            return "fp8 tensor-wise"
        if spec.granularity in ("row", "col"):  # col: quantized along dim 0, one per row
            return "fp8 row-wise"
    mx = spec.scale == "e8m0" and spec.granularity == "block" and spec.block == 32
    if mx and spec.element in ("e4m3", "e2m1"):
        return "mxfp8" if spec.element == "e4m3" else "mxfp4"
    if spec.rule == "nvfp4" and spec.scale == "ue4m3" and spec.block == 16:
        return "nvfp4"
    return None


def _describe_device(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"cuda sm_{major}{minor}"


def native_problem(a: QuantSpec, b: QuantSpec, device: torch.device) -> str:
    """Why torch._scaled_mm cannot multiply operands of these stored specs on `device`
    ('' when it can; `probe` then checks it on the device)."""
    ka, kb = native_kind(a), native_kind(b)
    for spec, kind in ((a, ka), (b, kb)):
        if kind is None:
            return (
                f"no native GEMM for {spec.describe()}: only fp8 e4m3/e5m2 with tensor or "
                f"row fp32/pow2 scales, mxfp8/mxfp4 (e8m0, blocks of 32) and nvfp4 have one"
            )
    if ka != kb:
        return f"the operands are scaled differently ({ka} and {kb})"
    if (a.hadamard, a.hadamard_seed) != (b.hadamard, b.hadamard_seed):
        return "the operands carry different Hadamard transforms"
    where = _describe_device(device)
    if ka.startswith("fp8"):
        if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
            return f"fp8 GEMMs need FP8 tensor cores (sm_89 and up); this device is {where}"
        if device.type not in ("cuda", "cpu"):
            return f"torch._scaled_mm does not run on {where}"
        return ""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 10:
        return f"{ka} block-scaled GEMMs need sm_100 (a Blackwell GPU); this device is {where}"
    if ka == "mxfp4" and not hasattr(torch, "float4_e2m1fn_x2"):
        return f"this torch ({torch.__version__}) has no float4_e2m1fn_x2"
    return ""


# ---------------------------------------------------------------------------
# the native GEMM
# ---------------------------------------------------------------------------


def _rows_k(t: torch.Tensor, kfirst: bool) -> torch.Tensor:
    """(rows, K) contiguous from a tensor held (rows, K), or (K, rows) when kfirst."""
    return (t.t() if kfirst else t).contiguous()


def _fp8_operand(q: QTensor, kfirst: bool, as_b: bool):
    """_scaled_mm's operand and dequantization multiplier: stored inv = max / amax,
    so the multiplier is 1 / inv; (rows, 1) for the first operand, (1, rows) for the
    second, a scalar tensor-wise."""
    scale = (1.0 / q.scale.float()).contiguous()
    if q.spec.granularity == "tensor":
        scale = scale.reshape(())
    else:
        scale = scale.reshape(1, -1) if as_b else scale.reshape(-1, 1)
    return _rows_k(q.codes, kfirst), scale


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """(rows, K / block) scales -> the swizzled 1-D layout of cuBLAS's block-scaled
    GEMMs ("1D block scaling factors layout"): zero-padded to 128-row x 4-column
    blocks, each stored as 32 x 16 with the element (r, c) of a block at
    (r % 32) * 16 + (r // 32) * 4 + c."""
    rows, cols = scales.shape
    nr, nc = -(-rows // 128), -(-cols // 4)
    padded = scales.new_zeros((nr * 128, nc * 4))
    padded[:rows, :cols] = scales
    blocks = padded.view(nr, 128, nc, 4).permute(0, 2, 1, 3)  # (nr, nc, 128, 4)
    return blocks.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(-1).contiguous()


def _block_operand(q: QTensor, kfirst: bool):
    """MX / NVFP4: codes (rows, K) (fp4 packed along K) and per-row block scales
    (rows, K / block) in cuBLAS's swizzled layout."""
    spec, codes, scale = q.spec, q.codes, q.scale
    if spec.element_format.packed:
        if kfirst:  # packed along the stored last dim (rows): repack along K
            codes = pack_fp4(unpack_fp4(codes).t().contiguous())
        codes = codes.view(torch.float4_e2m1fn_x2)
    else:
        codes = _rows_k(codes, kfirst)
    if kfirst:
        scale = scale.t()
    if spec.granularity == "tile":  # one scale per 16 x 16 tile: the same for each row
        scale = scale.repeat_interleave(spec.block, dim=0)
    if spec.scale == "e8m0":
        scale = scale.contiguous().view(torch.uint8)
        return codes, to_blocked(scale).view(torch.float8_e8m0fnu)
    return codes, to_blocked(scale.contiguous().view(torch.uint8)).view(torch.float8_e4m3fn)


def native_mm(
    a: QTensor,
    b: QTensor,
    out_dtype: torch.dtype,
    *,
    a_kfirst: bool = False,
    b_kfirst: bool = False,
) -> torch.Tensor:
    """A @ B^T with torch._scaled_mm: A (M, K) and B (N, K), each held (K, rows) when
    its *_kfirst is set. The caller has checked native_problem."""
    kind = native_kind(a.spec)
    if kind.startswith("fp8"):
        mat_a, scale_a = _fp8_operand(a, a_kfirst, as_b=False)
        mat_b, scale_b = _fp8_operand(b, b_kfirst, as_b=True)
        return torch._scaled_mm(
            mat_a, mat_b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype
        )
    mat_a, scale_a = _block_operand(a, a_kfirst)
    mat_b, scale_b = _block_operand(b, b_kfirst)
    if kind != "nvfp4":
        return torch._scaled_mm(
            mat_a, mat_b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype
        )
    y = torch._scaled_mm(
        mat_a, mat_b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.float32
    )
    return (y * (a.tensor_scale * b.tensor_scale)).to(out_dtype)


def dequantized_mm(
    a: QTensor,
    b: QTensor,
    out_dtype: torch.dtype,
    *,
    a_kfirst: bool = False,
    b_kfirst: bool = False,
) -> torch.Tensor:
    """The same product from the dequantized operands, multiplied in out_dtype (fp32
    on the CPU, where half-precision matmuls are slow and inexact)."""
    compute = out_dtype if a.codes.is_cuda else torch.float32
    da, db = a.dequantize(compute), b.dequantize(compute)
    da = da.t() if a_kfirst else da
    db = db.t() if b_kfirst else db
    return (da @ db.t()).to(out_dtype)


def scaled_matmul(a: QTensor, b: QTensor, out_dtype: torch.dtype = torch.bfloat16):
    """a @ b^T for quantized a (M, K) and b (N, K), in out_dtype: natively on CUDA
    where native_problem allows, else (the CPU included) from the dequantized
    operands, which gives the same result within gemm_tolerance."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"scaled_matmul reduces over the last dim: a {tuple(a.shape)} and b "
            f"{tuple(b.shape)} disagree ({a.shape[-1]} vs {b.shape[-1]})"
        )
    if native_fp8_ok(a, b):
        return native_mm(a, b, out_dtype)
    return dequantized_mm(a, b, out_dtype)


def native_fp8_ok(a: QTensor, b: QTensor) -> bool:
    """Whether scaled_matmul takes torch._scaled_mm for these operands: fp8 with
    tensor or row scales, on a CUDA device that has FP8 tensor cores."""
    if not (a.codes.is_cuda and len(a.shape) == len(b.shape) == 2):
        return False
    kind = native_kind(a.spec)
    return bool(kind and kind.startswith("fp8")) and not native_problem(
        a.spec, b.spec, a.codes.device
    )


# ---------------------------------------------------------------------------
# how far apart native and dequantized may be, and a probe that measures it
# ---------------------------------------------------------------------------

_UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def gemm_tolerance(k: int, dtype: torch.dtype) -> float:
    """The largest |native - dequantized| / (|A| @ |B|^T), elementwise, that rounding
    alone explains for a GEMM of reduction length k computed in `dtype`.

    Both compute the same exact sum of products of the dequantized operands. An
    fp32-accumulated dot product of length k errs by at most about k u32 times
    sum |a_i b_i| (Higham, Accuracy and Stability, Thm 3.4), u32 = 2^-24: 2 k u32 for
    the two. The emulated path rounds each dequantized operand to `dtype` (u each, so
    2u on a product) and both round the result to `dtype` (u each): 4u. The native
    path's scale reciprocal (1 / inv, fp32) and its product with the sum: 4 u32."""
    u = _UNIT_ROUNDOFF.get(dtype, 2.0**-24)
    return 2 * k * 2.0**-24 + 4 * u + 4 * 2.0**-24


def gemm_deviation(native: torch.Tensor, emulated: torch.Tensor, abs_product: torch.Tensor):
    """max |native - emulated| / (|A| @ |B|^T) (where that product is nonzero)."""
    diff = (native.float() - emulated.float()).abs()
    scale = abs_product.float()
    ratio = torch.where(scale > 0, diff / scale.clamp(min=1e-30), torch.where(diff > 0, 1e30, 0.0))
    return float(ratio.max())


@dataclass(frozen=True)
class Probe:
    """One native GEMM tried on a device against the dequantized product."""

    error: str  # why it did not run ('' when it ran)
    deviation: float = float("nan")  # gemm_deviation
    tolerance: float = float("nan")  # gemm_tolerance for the probe's k and dtype

    @property
    def ran(self) -> bool:
        return not self.error

    @property
    def exact(self) -> bool:
        """Within the accumulation tolerance of the dequantized product."""
        return self.ran and self.deviation <= self.tolerance


PROBE_SHAPE = (256, 256, 256)  # M, N, K: several 128-row scale blocks, K a multiple of 64


@functools.lru_cache(maxsize=256)
def probe(
    a: QuantSpec,
    b: QuantSpec,
    device: torch.device,
    dtype: torch.dtype,
    a_kfirst: bool = False,
    b_kfirst: bool = False,
) -> Probe:
    """Quantize random operands (rows of varied magnitude) with the stored specs a and
    b, multiply them natively and from the dequantized values in `dtype`, and compare
    within gemm_tolerance. Cached per process; a few milliseconds."""
    from . import ops

    problem = native_problem(a, b, device)
    if problem:
        return Probe(problem)
    m, n, k = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)

    def operand(rows: int, kfirst: bool) -> torch.Tensor:
        t = torch.randn(rows, k, generator=gen) * torch.exp2(
            torch.randint(-4, 5, (rows, 1), generator=gen).float()
        )
        t = t.t().contiguous() if kfirst else t
        return t.to(device=device, dtype=dtype)

    qa = ops.quantize(operand(m, a_kfirst), a, seed=1 if a.rounding == "sr" else None)
    qb = ops.quantize(operand(n, b_kfirst), b, seed=2 if b.rounding == "sr" else None)
    try:
        native = native_mm(qa, qb, dtype, a_kfirst=a_kfirst, b_kfirst=b_kfirst)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as err:  # the device or this torch lacks the path: say which
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return Probe(f"torch._scaled_mm failed: {first[:200]}")
    emulated = dequantized_mm(qa, qb, dtype, a_kfirst=a_kfirst, b_kfirst=b_kfirst)
    da, db = qa.dequantize(torch.float32).abs(), qb.dequantize(torch.float32).abs()
    da, db = (da.t() if a_kfirst else da), (db.t() if b_kfirst else db)
    deviation = gemm_deviation(native, emulated, da @ db.t())
    return Probe("", deviation, gemm_tolerance(k, dtype))
