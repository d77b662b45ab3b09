"""The quantization contract (NUMERICS.md) in plain torch: the oracle for every test.

Runs on any device. Everything is computed in fp32 in the order NUMERICS.md states,
and every power of two is built from its bits, so a kernel that follows the same
steps agrees bit for bit.

Pipeline of `quantize(x, spec)`:
  1. view x as 2-D (M, K) = (prod(leading dims), last dim), in fp32;
  2. optional random-sign Hadamard transform along spec.dim;
  3. group the elements (tensor / row / col / block / tile) as a (gm, bm, gk, bk)
     view, padding with zeros if the spec asks;
  4. per group: amax over the finite elements, a scale by the spec's rule, and
     "poisoned" if the group holds a NaN or Inf;
  5. scaled = x * multiplier, clamped to +-max and rounded onto the element grid
     (rne, or sr with one uint32 of random bits per element);
  6. codes in the storage type (fp4 packed two per byte, low nibble first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import philox
from .formats import (
    E8M0_BIAS,
    E8M0_EXP_RANGE,
    E8M0_NAN,
    POW2_EXP_RANGE,
    ElementFormat,
    QuantSpec,
)

_F32_MAX = torch.finfo(torch.float32).max
_TWO_32 = float(2**32)


def _div(num: torch.Tensor | float, den: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """IEEE fp32 division. torch computes `tensor / python_scalar` (and, on CUDA,
    division by a CPU scalar) as a multiplication by the reciprocal, which rounds
    differently; full-size operands on one device always divide exactly."""

    def full(v):
        return v.expand_as(like) if isinstance(v, torch.Tensor) else torch.full_like(like, v)

    return full(num) / full(den)


# ---------------------------------------------------------------------------
# Exact powers of two and the element grid
# ---------------------------------------------------------------------------


def pow2(e: torch.Tensor) -> torch.Tensor:
    """2^e as fp32, exact, built from the bits (e integer in [-149, 127])."""
    e = e.to(torch.int32)
    biased = (e + 127).clamp(min=1, max=254)
    normal = (biased << 23).view(torch.float32)
    if bool((e >= -126).all()):
        return normal
    # below 2^-126: 2^(e + 64) * 2^-64, a product of powers of two, still exact
    lifted = (((e + 64 + 127).clamp(min=1, max=254)) << 23).view(torch.float32) * 2.0**-64
    return torch.where(e >= -126, normal, lifted)


def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) for finite a > 0 (subnormals included), exact, as int32."""
    _, exp = torch.frexp(a)  # a = m * 2^exp with m in [0.5, 1)
    return exp.to(torch.int32) - 1


def round_to_grid(
    v: torch.Tensor,
    fmt: ElementFormat,
    rounding: str = "rne",
    rbits: torch.Tensor | None = None,
    *,
    saturate: bool = True,
) -> torch.Tensor:
    """Round fp32 values onto fmt's grid, saturating to +-max (saturate=False
    continues the grid past max instead: used to tell what clipping changed).

    rne: nearest, ties to even. sr: with a the magnitude, lo <= a < hi its grid
    neighbours and frac = (a - lo) / (hi - lo), the magnitude rounds up iff
    rbits < floor(frac * 2^32); so P(up) = frac (to 2^-32) and E[q] = v.
    NaN stays NaN.
    """
    a = v.abs().clamp(max=fmt.max) if saturate else v.abs()
    if fmt.kind == "int":
        step = torch.ones_like(a)
        if rounding == "rne":
            return torch.copysign(torch.round(a), v)  # torch.round: half to even
    elif rounding == "rne" and saturate and _binade_trick_fits(fmt, a):
        # RNE in one add: c = 2^(23 + spacing exponent) has an ulp of exactly the grid
        # spacing of a's binade, so a + c rounds a onto the grid (ties to even) and
        # subtracting c is exact. c is built from a's exponent bits.
        exponent = (a.view(torch.int32) & _EXP_MASK).clamp(min=(fmt.emin + 127) << 23)
        c = (exponent + ((23 - fmt.mbits) << 23)).view(torch.float32)
        return torch.copysign((a + c) - c, v)
    else:
        e = floor_log2(torch.where(a > 0, a, torch.ones_like(a))).clamp(min=fmt.emin)
        step = pow2(e - fmt.mbits)  # grid spacing in a's binade
    t = a / step  # exact: step is a power of two
    if rounding == "rne":
        q = torch.round(t)  # torch.round rounds half to even
    else:
        if rbits is None:
            raise ValueError("round_to_grid: rounding='sr' needs rbits")
        low = torch.floor(t)
        threshold = ((t - low) * _TWO_32).to(torch.int64)  # exact: frac has < 32 bits
        q = low + (rbits.to(torch.int64) < threshold).to(low.dtype)
    return torch.copysign(q * step, v)


_EXP_MASK = 0x7F800000


def _binade_trick_fits(fmt: ElementFormat, a: torch.Tensor) -> bool:
    """a + 2^(e + 23 - mbits) must stay a finite fp32 for every a we round."""
    top = math.floor(math.log2(fmt.max)) if math.isfinite(fmt.max) else 127
    return a.dtype == torch.float32 and top + 23 - fmt.mbits <= 126


def encode(q: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """Codes of values already on fmt's grid, in fmt.storage_dtype (unpacked).

    NaN becomes the format's NaN code where it has one; formats without NaN
    (fp6, fp4, int, eXmY) store 0 and rely on the group's NaN scale."""
    if fmt.torch_dtype is not None:
        return q.to(fmt.torch_dtype)  # exact: q is on the grid
    finite = torch.isfinite(q)
    q = torch.where(finite, q, torch.zeros_like(q))
    if fmt.kind == "int":
        return q.to(torch.int8)
    a = q.abs()
    normal = a >= fmt.min_normal
    e_unbiased = floor_log2(torch.where(normal, a, torch.ones_like(a)))
    mant_normal = (a / pow2(e_unbiased) - 1) * 2**fmt.mbits
    mant_sub = a / fmt.min_subnormal
    exp_code = torch.where(normal, e_unbiased + fmt.bias, 0)
    mant_code = torch.where(normal, mant_normal, mant_sub).to(torch.int32)
    code = (exp_code << fmt.mbits) | mant_code
    if fmt.signed:
        code = code | (torch.signbit(q).to(torch.int32) << (fmt.ebits + fmt.mbits))
    if fmt.has_nan:  # only the ue5m3 scale grid reaches here with a NaN code
        code = torch.where(finite, code, 2**fmt.bits - 1)
    return code.to(fmt.storage_dtype)


def decode(codes: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """fp32 values of unpacked codes."""
    if fmt.torch_dtype is not None or fmt.kind == "int":
        return codes.to(torch.float32)
    c = codes.to(torch.int32) & (2**fmt.bits - 1)
    exp_code = (c >> fmt.mbits) & (2**fmt.ebits - 1)
    mant = c & (2**fmt.mbits - 1)
    subnormal = mant.to(torch.float32) * fmt.min_subnormal
    normal = (mant + 2**fmt.mbits).to(torch.float32) * pow2(exp_code - fmt.bias - fmt.mbits)
    value = torch.where(exp_code == 0, subnormal, normal)
    if fmt.specials == "ieee":  # the ue5m3 scale grid; e4m3/e5m2 decode as torch dtypes
        value = torch.where(exp_code == 2**fmt.ebits - 1, torch.nan, value)
    if fmt.signed:
        sign = (c >> (fmt.ebits + fmt.mbits)) & 1
        value = torch.where(sign == 1, -value, value)
    return value


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """(..., K) uint8 codes -> (..., K/2) bytes, element 2i in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(
            f"fp4 packs two codes per byte along the last dim; shape {tuple(codes.shape)} "
            f"has an odd last dim {codes.shape[-1]}"
        )
    return (codes[..., 0::2] & 0xF) | ((codes[..., 1::2] & 0xF) << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)


# ---------------------------------------------------------------------------
# Random bits and the Hadamard transform
# ---------------------------------------------------------------------------


def random_bits(shape: torch.Size | tuple[int, ...], seed: int, device=None) -> torch.Tensor:
    """One uint32 (in int64) per element, element i (row-major) from Philox counter i."""
    numel = math.prod(shape)
    return philox.randint(seed, torch.arange(numel, device=device)).reshape(shape)


def hadamard_signs(n: int, seed: int = 0) -> torch.Tensor:
    """The random signs s of hadamard(n): bit 0 of Philox draw i for sign i."""
    bits = philox.randint(seed, torch.arange(n))
    return (1 - 2 * (bits & 1)).to(torch.float32)


def hadamard_matrix(n: int, seed: int = 0) -> torch.Tensor:
    """diag(s) H_n / sqrt(n) (Sylvester order), fp32: an orthogonal matrix."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return hadamard_signs(n, seed)[:, None] * h / math.sqrt(n)


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform over the last dim (x @ H_n), as
    log2(n) butterfly stages in a fixed order so kernels can reproduce it."""
    n = x.shape[-1]
    h = 1
    while h < n:
        pairs = x.reshape(*x.shape[:-1], n // (2 * h), 2, h)
        lo, hi = pairs[..., 0, :], pairs[..., 1, :]
        x = torch.stack([lo + hi, lo - hi], dim=-2).reshape(*x.shape[:-1], n)
        h *= 2
    return x


def _check_hadamard(shape: tuple[int, ...], n: int, dim: int) -> None:
    if n not in (16, 32, 64, 128):
        raise ValueError(f"hadamard n={n} is not allowed; accepted: 16, 32, 64, 128")
    size = shape[dim]
    if size % n:
        raise ValueError(
            f"hadamard({n}) needs dim {dim} of shape {tuple(shape)} to be a multiple of {n}, "
            f"got {size}"
        )


def _hadamard_2d(x2: torch.Tensor, n: int, seed: int, dim: int, inverse: bool) -> torch.Tensor:
    """fp32 (M, K) -> transform chunks of n along dim (-1: K, 0: M).

    forward: y = x @ (diag(s) H / sqrt(n)) = fwht(x * s) * (1/sqrt(n))
    inverse: x = y @ (H diag(s) / sqrt(n)) = fwht(y) * (1/sqrt(n)) * s
    """
    t = x2 if dim == -1 else x2.t()
    rows, size = t.shape
    chunks = t.reshape(rows, size // n, n)
    signs = hadamard_signs(n, seed).to(x2.device)
    inv_sqrt = torch.tensor(1 / math.sqrt(n), dtype=torch.float32)
    if inverse:
        out = _fwht(chunks) * inv_sqrt * signs
    else:
        out = _fwht(chunks * signs) * inv_sqrt
    out = out.reshape(rows, size)
    return out if dim == -1 else out.t().contiguous()


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    k = x.shape[-1] if x.dim() else 1
    return x.reshape(-1, k)


def hadamard_transform(x: torch.Tensor, n: int, seed: int = 0, dim: int = -1) -> torch.Tensor:
    """x @ (diag(s) H_n / sqrt(n)) in chunks of n along dim (-1: last dim, 0: the
    flattened leading dims); computed in fp32, returned in x's dtype."""
    x2 = _as_2d(x).float()
    _check_hadamard(tuple(x2.shape), n, dim)
    return _hadamard_2d(x2, n, seed, dim, inverse=False).reshape(x.shape).to(x.dtype)


def inverse_hadamard_transform(
    x: torch.Tensor, n: int, seed: int = 0, dim: int = -1
) -> torch.Tensor:
    x2 = _as_2d(x).float()
    _check_hadamard(tuple(x2.shape), n, dim)
    return _hadamard_2d(x2, n, seed, dim, inverse=True).reshape(x.shape).to(x.dtype)


# ---------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupLayout:
    """The (M, K) view padded to (Mp, Kp) and split as (gm, bm, gk, bk): gm x gk
    groups of bm x bk elements. Scales have shape (gm, gk)."""

    m: int
    k: int
    gm: int
    bm: int
    gk: int
    bk: int

    @property
    def padded(self) -> tuple[int, int]:
        return self.gm * self.bm, self.gk * self.bk

    @staticmethod
    def of(shape: tuple[int, ...], m: int, k: int, spec: QuantSpec) -> GroupLayout:
        g, b = spec.granularity, spec.block or 1

        def blocks(size: int, name: str) -> int:
            if size % b and spec.padding == "error":
                raise ValueError(
                    f"{name}={size} of shape {tuple(shape)} is not a multiple of block {b} "
                    f"({spec.describe()}); choose a block that divides it or padding='pad'"
                )
            return -(-size // b)

        if g == "tensor":
            return GroupLayout(m, k, 1, m, 1, k)
        if g == "row":
            return GroupLayout(m, k, m, 1, 1, k)
        if g == "col":
            return GroupLayout(m, k, 1, m, k, 1)
        if g == "tile":
            return GroupLayout(m, k, blocks(m, "rows"), b, blocks(k, "last dim"), b)
        if spec.dim == -1:
            return GroupLayout(m, k, m, 1, blocks(k, "last dim"), b)
        return GroupLayout(m, k, blocks(m, "rows"), b, k, 1)

    def split(self, x2: torch.Tensor) -> torch.Tensor:
        """(M, K) -> zero-padded (gm, bm, gk, bk) view."""
        mp, kp = self.padded
        if (mp, kp) != (self.m, self.k):
            x2 = torch.nn.functional.pad(x2, (0, kp - self.k, 0, mp - self.m))
        return x2.reshape(self.gm, self.bm, self.gk, self.bk)

    def merge(self, x4: torch.Tensor) -> torch.Tensor:
        """(gm, bm, gk, bk) -> (M, K), dropping the padding."""
        mp, kp = self.padded
        return x4.reshape(mp, kp)[: self.m, : self.k]


def _per_group(t: torch.Tensor) -> torch.Tensor:
    """(gm, gk) -> broadcastable over (gm, bm, gk, bk)."""
    return t[:, None, :, None]


# ---------------------------------------------------------------------------
# Scale rules: amax per group -> (multiplier applied before rounding, stored scale)
# ---------------------------------------------------------------------------


def _min_exp_covering(amax: torch.Tensor, limit: float) -> torch.Tensor:
    """Smallest integer k with limit * 2^k >= amax, exactly (amax > 0).

    With amax = ma 2^ea and limit = ml 2^el (mantissas in [0.5, 1)): k = ea - el,
    plus one when ma > ml. This is ceil(log2(amax / limit)) without the rounding
    of the division."""
    ma, ea = torch.frexp(amax)
    ml, el = math.frexp(limit)
    return (ea.to(torch.int32) - el + (ma > ml).to(torch.int32)).to(torch.int32)


def _e8m0_exponent(amax: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    elem = spec.element_format
    positive = amax > 0
    safe = torch.where(positive, amax, torch.ones_like(amax))
    if spec.rule == "rceil":
        e = _min_exp_covering(safe, elem.max)
    else:
        if spec.rule == "even":  # round amax to the element's mantissa width first
            mant, exp = torch.frexp(safe)
            rounded = torch.round(mant * 2 ** (elem.mbits + 1))
            e = exp.to(torch.int32) - 1 + (rounded == 2 ** (elem.mbits + 1)).to(torch.int32)
        else:
            e = floor_log2(safe)
            if spec.rule == "ceil":
                mant, _ = torch.frexp(safe)
                e = e + (mant != 0.5).to(torch.int32)
        e = e - elem.emax
    lo, hi = E8M0_EXP_RANGE
    return torch.where(positive, e, lo).clamp(lo, hi)


@dataclass
class _Scales:
    multiplier: torch.Tensor  # (gm, gk) fp32, applied to x before rounding
    stored: torch.Tensor  # (gm, gk) in the scale format's storage dtype
    dequant: tuple[str, torch.Tensor]  # ("div", inv) or ("mul", factor), as decoded
    tensor_scale: torch.Tensor | None = None  # NVFP4's fp32 s_t


def _scales(amax: torch.Tensor, poisoned: torch.Tensor, spec: QuantSpec) -> _Scales:
    elem, sfmt = spec.element_format, spec.scale_format
    nan = torch.full_like(amax, torch.nan)
    if sfmt.kind == "fp32":
        # inv = max / amax once per group; amax == 0 -> 1; kept finite for denormal amax
        inv = torch.where(amax > 0, _div(elem.max, amax, amax), 1.0).clamp(max=_F32_MAX)
        inv = torch.where(poisoned, nan, inv)
        return _Scales(inv, inv, ("div", inv))
    if sfmt.kind == "pow2":
        lo, hi = POW2_EXP_RANGE
        safe = torch.where(amax > 0, amax, torch.ones_like(amax))
        k = torch.where(amax > 0, _min_exp_covering(safe, elem.max), 0).clamp(lo, hi)
        inv = torch.where(poisoned, nan, pow2(-k))
        return _Scales(inv, inv, ("div", inv))
    if sfmt.kind == "e8m0":
        e = _e8m0_exponent(amax, spec)
        mult = torch.where(poisoned, nan, pow2(-e))
        stored = torch.where(poisoned, E8M0_NAN, e + E8M0_BIAS).to(torch.uint8)
        return _Scales(mult, stored, ("mul", torch.where(poisoned, nan, pow2(e))))
    return _two_level_scales(amax, poisoned, spec)


def _two_level_scales(amax: torch.Tensor, poisoned: torch.Tensor, spec: QuantSpec) -> _Scales:
    """NVFP4: an fp32 tensor scale s_t over small-float block scales s_b.

    s_t = amax_tensor / (scale_max * elem_max)   (amax_tensor == 0 -> 1)
    s_b = round_scale(clamp((amax_block / elem_max) / s_t, scale_min_normal, scale_max))
    multiplier = (1 / s_t) / s_b;  dequantized = (value * s_b) * s_t
    s_t is kept >= 2^-126 / scale_min_normal so the multiplier stays finite: that
    only changes tensors whose amax is below ~1e-33.
    """
    elem, grid = spec.element_format, spec.scale_format.grid
    amax_t = amax.amax()
    s_t = _div(amax_t, grid.max * elem.max, amax_t)
    s_t = torch.where(amax_t > 0, s_t, 1.0)
    s_t = s_t.clamp(min=2.0**-126 / grid.min_normal)
    if bool(poisoned.any()):  # one tensor-wide scale: the whole tensor is poisoned
        s_t = torch.full_like(s_t, torch.nan)
    ratio = _div(_div(amax, elem.max, amax), s_t, amax)
    s_b = round_to_grid(ratio.clamp(grid.min_normal, grid.max), grid)
    mult = _div(_div(1.0, s_t, s_t), s_b, s_b)
    return _Scales(mult, encode(s_b, grid), ("mul", s_b), s_t)


def _dequant_scale(qt: QTensor) -> tuple[str, torch.Tensor]:
    """How to apply the stored scales: ("div", inv) or ("mul", factor), (gm, gk) fp32."""
    sfmt = qt.spec.scale_format
    if sfmt.kind in ("fp32", "pow2"):
        return "div", qt.scale
    if sfmt.kind == "e8m0":
        byte = qt.scale.to(torch.int32)
        factor = pow2((byte - E8M0_BIAS).clamp(*E8M0_EXP_RANGE))
        return "mul", torch.where(byte == E8M0_NAN, torch.nan, factor)
    return "mul", decode(qt.scale, sfmt.grid)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QTensor:
    """A quantized tensor.

    codes: element codes in the storage type (torch float8 for e4m3/e5m2, int8 for
      int, uint8 otherwise; fp4 two per byte along the last dim, low nibble first),
      shaped like x (last dim halved when packed).
    scale: (gm, gk) per-group scales in the scale format's storage type: for fp32
      and pow2 scales the fp32 multiplier inv = max / amax (dequantize divides by
      it, as NUMERICS.md states); e8m0 bytes; ue4m3 as float8_e4m3fn; ue5m3 codes.
      None for plain casts.
    tensor_scale: NVFP4's fp32 s_t (a 0-d tensor), else None.
    Codes and scales live in the Hadamard-transformed domain when spec.hadamard.
    """

    codes: torch.Tensor
    scale: torch.Tensor | None
    tensor_scale: torch.Tensor | None
    spec: QuantSpec
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def layout(self) -> GroupLayout:
        k = self.shape[-1] if self.shape else 1
        return GroupLayout.of(self.shape, math.prod(self.shape) // k, k, self.spec)

    @staticmethod
    def of_kernel(x: torch.Tensor, spec: QuantSpec, codes, scale, tensor_scale) -> QTensor:
        """The QTensor of x from a kernel's outputs (the Triton and compiled backends'):
        codes as (rows, last dim) and float8 codes or ue4m3 scales as their bytes."""
        fmt, sfmt = spec.element_format, spec.scale_format
        if fmt.torch_dtype is not None:
            codes = codes.view(fmt.torch_dtype)
        shape = tuple(x.shape)
        codes = codes.reshape(shape[:-1] + (codes.shape[-1],)) if shape else codes.reshape(())
        if scale.dtype != sfmt.storage_dtype:
            scale = scale.view(sfmt.storage_dtype)
        return QTensor(codes, scale, tensor_scale, spec, shape, x.dtype)

    def element_values(self) -> torch.Tensor:
        """fp32 grid values of the codes (no scale), shaped (M, K)."""
        fmt = self.spec.element_format
        codes = unpack_fp4(self.codes) if fmt.packed else self.codes
        return _as_2d(decode(codes, fmt))

    def dequantize(self, dtype: torch.dtype | None = None, *, transformed: bool = False):
        """Back to a dense tensor of x's shape in `dtype` (default x's dtype). With a
        Hadamard spec the inverse transform is applied unless transformed=True."""
        dtype = dtype or self.dtype
        if self.spec.is_cast:
            return self.codes.to(dtype)
        how, scale = _dequant_scale(self)
        return _dequantize(
            self.element_values(),
            self.layout,
            how,
            scale,
            self.tensor_scale,
            self.spec,
            self.shape,
            dtype,
            transformed,
        )


def _dequantize(values, layout, how, scale, tensor_scale, spec, shape, dtype, transformed):
    """Grid values (M, K) times their group scales, inverse-transformed, as x was."""
    values = layout.split(values)
    if how == "div":
        out = values / _per_group(scale)
    else:
        out = values * _per_group(scale)
        if tensor_scale is not None:
            out = out * tensor_scale
    out = layout.merge(out)
    if spec.hadamard and not transformed:
        out = _hadamard_2d(out, spec.hadamard, spec.hadamard_seed, spec.dim, inverse=True)
    return out.reshape(shape).to(dtype)


def given_rbits(x2: torch.Tensor, spec: QuantSpec, rbits, seed) -> torch.Tensor | None:
    """Validate the SR arguments (one place for every backend); return the given
    random bits as uint32 values in int64, shaped like x2, or None."""
    if spec.rounding != "sr":
        if rbits is not None:
            raise ValueError(f"rbits given but QuantSpec.rounding={spec.rounding!r}; use 'sr'")
        return None
    if rbits is None:
        return None
    if seed is not None:
        raise ValueError("pass rbits or seed, not both")
    if rbits.numel() != x2.numel():
        raise ValueError(
            f"rbits has {rbits.numel()} elements; x has {x2.numel()} (one uint32 each)"
        )
    return rbits.reshape(x2.shape).to(device=x2.device, dtype=torch.int64) & 0xFFFFFFFF


def _rbits_for(x2: torch.Tensor, spec: QuantSpec, rbits, seed) -> torch.Tensor | None:
    bits = given_rbits(x2, spec, rbits, seed)
    if bits is not None or spec.rounding != "sr":
        return bits
    if seed is None:
        # No stream asked for: draw from torch's global generator (repeatable under
        # torch.manual_seed, one fast op). A seed selects the Philox stream that the
        # Triton kernels draw too, for bit-exact comparisons.
        return torch.randint(0, 2**32, x2.shape, dtype=torch.int64, device=x2.device)
    return random_bits(tuple(x2.shape), seed, device=x2.device)


@dataclass
class _GridResult:
    """Everything quantize computes before encoding: grid values q (M, K) in the
    transformed domain, the group scales and the scaled values before clipping."""

    q: torch.Tensor
    scales: _Scales
    layout: GroupLayout
    scaled: torch.Tensor  # (gm, bm, gk, bk)


def _to_grid(x: torch.Tensor, spec: QuantSpec, rbits, seed) -> _GridResult:
    if x.numel() == 0:
        raise ValueError(f"cannot quantize an empty tensor of shape {tuple(x.shape)}")
    x2 = _as_2d(x).float()
    m, k = x2.shape
    if spec.hadamard:
        _check_hadamard((m, k), spec.hadamard, spec.dim)
        x2 = _hadamard_2d(x2, spec.hadamard, spec.hadamard_seed, spec.dim, inverse=False)
    bits = _rbits_for(x2, spec, rbits, seed)
    layout = GroupLayout.of(tuple(x.shape), m, k, spec)
    x4 = layout.split(x2)
    amax = x4.abs().amax(dim=(1, 3))  # amax propagates NaN, and Inf is its own amax
    poisoned = ~torch.isfinite(amax)  # a poisoned group's amax is never used
    amax = torch.where(poisoned, 0.0, amax)
    scales = _scales(amax, poisoned, spec)
    scaled = x4 * _per_group(scales.multiplier)
    q = round_to_grid(layout.merge(scaled), spec.element_format, spec.rounding, bits)
    return _GridResult(q, scales, layout, scaled)


def _quantize(x: torch.Tensor, spec: QuantSpec, rbits, seed) -> tuple[QTensor, _GridResult | None]:
    shape = tuple(x.shape)
    if spec.is_cast:
        codes = x.to(spec.element_format.torch_dtype)
        return QTensor(codes, None, None, spec, shape, x.dtype), None
    grid = _to_grid(x, spec, rbits, seed)
    fmt = spec.element_format
    codes = encode(grid.q, fmt).reshape(shape)
    if fmt.packed:
        codes = pack_fp4(codes.reshape(shape or (1,)))
    scales = grid.scales
    return QTensor(codes, scales.stored, scales.tensor_scale, spec, shape, x.dtype), grid


def quantize(
    x: torch.Tensor, spec: QuantSpec, *, rbits: torch.Tensor | None = None, seed: int | None = None
) -> QTensor:
    """Quantize x by spec. For rounding='sr' pass rbits (one uint32 per element,
    any integer dtype) or seed (the Philox stream of tl.randint); with neither, the
    bits come from torch's global generator."""
    return _quantize(x, spec, rbits, seed)[0]


def fake_quantize(
    x: torch.Tensor, spec: QuantSpec, *, rbits: torch.Tensor | None = None, seed: int | None = None
) -> torch.Tensor:
    """quantize then dequantize: same shape and dtype as x. Skips the codes:
    decode(encode(q)) == q bit for bit, so the grid values are scaled directly."""
    if spec.is_cast:
        return x.to(spec.element_format.torch_dtype).to(x.dtype)
    if spec.element_format.packed and (x.dim() == 0 or x.shape[-1] % 2):
        return quantize(x, spec).dequantize()  # raises the packing error
    grid = _to_grid(x, spec, rbits, seed)
    how, scale = grid.scales.dequant
    return _dequantize(
        grid.q,
        grid.layout,
        how,
        scale,
        grid.scales.tensor_scale,
        spec,
        x.shape,
        x.dtype,
        transformed=False,
    )


@dataclass(frozen=True)
class QuantStats:
    """What quantizing one tensor cost. Fractions are of all elements."""

    sqnr_db: float
    # clipping changed the code: |x * multiplier| is past max by more than rounding
    # would move it (so amax mapped onto max by a float scale never counts)
    saturation: float
    underflow: float  # x != 0 but dequantized 0
    scale_exponents: dict[int, int]  # floor(log2(group scale)) -> groups
    rel_err_mean: float  # |x - dq| / |x| over x != 0
    rel_err_max: float
    # the sums behind sqnr_db (fp64 sums of x^2 and (x - dq)^2) and the element count:
    # what merge_quant_stats needs to combine the stats of a tensor's shards
    signal: float = math.nan
    noise: float = math.nan
    numel: int = 0


def merge_quant_stats(parts: list[QuantStats]) -> QuantStats:
    """The stats of one tensor from those of its disjoint pieces (e.g. the shards that
    the ranks of a tensor-parallel group quantized): SQNR from the summed energies,
    fractions weighted by element count, scale exponents counted over all pieces.
    rel_err_mean is weighted by element count too (the nonzero counts are not kept)."""
    if not parts:
        raise ValueError("merge_quant_stats needs at least one QuantStats")
    if len(parts) == 1:
        return parts[0]
    numel = sum(p.numel for p in parts)
    if numel == 0:
        raise ValueError("merge_quant_stats: the parts carry no element counts")

    def weighted(field: str) -> float:
        return sum(getattr(p, field) * p.numel for p in parts) / numel

    exponents: dict[int, int] = {}
    for p in parts:
        for e, n in p.scale_exponents.items():
            exponents[e] = exponents.get(e, 0) + n
    signal, noise = sum(p.signal for p in parts), sum(p.noise for p in parts)
    return QuantStats(
        sqnr_db=sqnr_db(signal, noise),
        saturation=weighted("saturation"),
        underflow=weighted("underflow"),
        scale_exponents=dict(sorted(exponents.items())),
        rel_err_mean=weighted("rel_err_mean"),
        rel_err_max=max(p.rel_err_max for p in parts),
        signal=signal,
        noise=noise,
        numel=numel,
    )


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise), with the edge cases every backend shares: no noise
    is +inf, no signal -inf, a NaN noise (a poisoned tensor) NaN, an infinite noise (a
    cast past its format's range, fp16 over 65504) -inf."""
    if noise == 0:
        return math.inf
    if signal == 0 or math.isnan(noise):
        return -math.inf if signal == 0 else math.nan
    if math.isinf(noise):
        return -math.inf
    return 10 * math.log10(signal / noise)


def quant_stats(
    x: torch.Tensor, spec: QuantSpec, *, rbits: torch.Tensor | None = None, seed: int | None = None
) -> QuantStats:
    qt, grid = _quantize(x, spec, rbits, seed)
    xf = x.detach().double().reshape(-1)
    dq = qt.dequantize(torch.float32).double().reshape(-1)
    err = xf - dq
    signal, noise = float((xf * xf).sum()), float((err * err).sum())
    sqnr = sqnr_db(signal, noise)
    nonzero = xf != 0
    rel = (err[nonzero].abs() / xf[nonzero].abs()) if bool(nonzero.any()) else xf.new_zeros(1)
    if grid is None:  # plain cast: no grid scale
        saturation = float((xf.abs() > spec.element_format.max).double().mean())
        exponents: dict[int, int] = {}
    else:
        fmt = spec.element_format
        unclipped = round_to_grid(grid.scaled.abs(), fmt, saturate=False)
        saturation = float((unclipped > fmt.max).double().sum() / xf.numel())
        exponents = _scale_exponents(qt)
    return QuantStats(
        sqnr_db=sqnr,
        saturation=saturation,
        underflow=float((nonzero & (dq == 0)).double().mean()),
        scale_exponents=exponents,
        rel_err_mean=float(rel.mean()),
        rel_err_max=float(rel.max()),
        signal=signal,
        noise=noise,
        numel=xf.numel(),
    )


def _scale_exponents(qt: QTensor) -> dict[int, int]:
    how, scale = _dequant_scale(qt)
    factor = 1 / scale if how == "div" else scale
    if qt.tensor_scale is not None:
        factor = factor * qt.tensor_scale
    factor = factor[torch.isfinite(factor) & (factor > 0)]
    exps, counts = torch.unique(floor_log2(factor), return_counts=True)
    return {int(e): int(c) for e, c in zip(exps.tolist(), counts.tolist(), strict=True)}
