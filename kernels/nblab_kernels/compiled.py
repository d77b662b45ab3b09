"""The "compiled" backend: reference.py's numbers, bit for bit, from fused CPU kernels.

`torch.compile` (inductor) turns each quantizer into one or two vectorised passes over
x instead of the reference's thirty-odd eager ops. The steps are the reference's, in
the same order, written so that they compile to one graph and round the same way:

- no data-dependent branch: both sides of reference.pow2's `if` are computed and the
  right one is picked per element;
- exponents and mantissas come from the fp32 bits (as in the Triton kernels), which
  also covers subnormals exactly;
- no division by a constant: inductor rewrites `x / c` as `x * (1 / c)`, which rounds
  differently, so every number a spec contributes (max, bias, ...) enters the graph
  as a tensor, never as a constant;
- group amax of |x| in floats, NaN propagating: a non-finite amax is exactly the
  reference's "poisoned" group (a NaN or Inf in it).

A graph specialises on a `Structure` (the op, the scale rule, the rounding, the group
shape, the transform) and on the sizes its groups run along (`_static_sizes`), never
on the element format's numbers or the number of rows, so MXFP8 and MXFP4 share one
graph, and a graph compiles once per process (inductor's on-disk cache makes later
processes cheaper). Each gets its own code object, hence its own dynamo cache and
recompile limit. Groups along dim 0 run on x^T (`_transposable`), and fake_quantize's
Hadamard transforms run in C around the graph (`_fake_apart`, c_kernels): the same
operations in the same order, where inductor's code for them was slow. fake_quantize of
a large tensor whose small groups' scales take a division runs as two graphs (`_call`),
the scales and then the elements, its group amax in C where the groups lie along
contiguous rows.

Stochastic rounding: with `rbits` or `seed` the bits are the reference's. With
neither, one Philox seed is drawn from torch's global generator and the kernel draws
its bits in place, as the Triton kernels do: repeatable under torch.manual_seed, but a
different (equally distributed) stream from the reference, which draws a whole tensor
of bits (3 ns an element, single-threaded, more than the rest of the quantizer).

quant_stats: one pass that also sums the statistics in fp64; the counts equal the
reference's, SQNR and relative errors agree to float tolerance (another summation
order), as for the Triton kernels.

What it does not cover runs on the reference (see `unsupported_reason`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import threading
import types
from dataclasses import dataclass

import torch

from . import c_kernels, philox, reference
from .formats import E8M0_BIAS, E8M0_EXP_RANGE, POW2_EXP_RANGE, QuantSpec
from .reference import GroupLayout, QTensor, QuantStats

INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_EXP_MASK = 0x7F800000


class CompileError(RuntimeError):
    """torch.compile could not build or run a graph (no C++ compiler, ...); the
    exception it raised is the __cause__."""


_MANT_MASK = 0x7FFFFF
_F32_MAX = torch.finfo(torch.float32).max


def unsupported_reason(x: torch.Tensor, spec: QuantSpec) -> str | None:
    """Why the compiled kernels do not quantize x by spec (None: they do)."""
    if spec.is_cast:
        return f"plain cast element={spec.element!r} is a dtype cast, not a kernel"
    if x.device.type != "cpu":
        return f"device {x.device} is not supported; the compiled backend is for CPU tensors"
    if x.dtype not in INPUT_DTYPES:
        return f"input dtype {x.dtype} is not supported; compiled kernels take fp32, bf16, fp16"
    if spec.element_format.bits > 8:
        return f"element={spec.element!r} has {spec.element_format.bits} bits; at most 8"
    if x.requires_grad and torch.is_grad_enabled():
        return "x requires grad: the reference keeps autograd's view of the ops"
    return None


# ---------------------------------------------------------------------------
# What a graph specialises on, and the numbers it takes as inputs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Structure:
    """The part of a spec (and op) that shapes the graph; everything else is data."""

    op: str  # "fake" | "quantize" | "stats"
    int_elem: bool
    elem_code: str  # quantize only: a torch float8 dtype's name ("float8_e4m3fn"), "float", "int"
    packed: bool
    scale: str  # fp32 | pow2 | e8m0 | float (two-level)
    rule: str
    grid_code: str  # two-level scale grid: a torch float8 dtype's name (ue4m3) or "ieee"/"finite"
    granularity: str
    block: int | None
    dim: int
    pad: bool  # padding="pad": groups may overhang the tensor (else the sizes divide)
    rounding: str  # "rne" | "sr_bits" | "sr_seed"
    hadamard: int
    # "" or how x^T is made (see _transposable): "graph" (the pipeline transposes) or
    # "eager" (x arrives transposed); sr_seed counts elements in the caller's order
    transposed: str = ""
    # (ebits, mbits, signed): the bit layout of the codes _small_float_codes writes, which
    # its shifts need as constants: quantize's sub-byte float elements, a two-level
    # scale's grid without a torch dtype (ue5m3)
    code_layout: tuple[int, int, bool] = ()
    grid_layout: tuple[int, int, bool] = ()
    # "" (the whole op in one graph), or a graph of fake_quantize in two (_call):
    # "scales" or "amax_scales" (each group's multiplier and dequant factor, from x or
    # from a given group amax), then "elements" (given those)
    phase: str = ""

    @property
    def name(self) -> str:
        """A Python identifier naming the structure (the compiled function's name)."""
        parts = [self.op, "int" if self.int_elem else "float", self.scale, self.rule]
        parts += [self.granularity, str(self.block or 0), f"dim{abs(self.dim)}", self.rounding]
        if self.hadamard:
            parts.append(f"h{self.hadamard}")
        if self.op == "quantize":
            parts += [self.elem_code, "packed" if self.packed else "bytes"]
            parts += _layout_name(self.code_layout)
        if self.scale == "float":
            parts += [self.grid_code, *_layout_name(self.grid_layout)]
        if self.pad:
            parts.append("pad")
        if self.transposed:
            parts.append(f"t{self.transposed}")
        if self.phase:
            parts.append(self.phase)
        return "nblab_" + "_".join(parts)

    @staticmethod
    def of(spec: QuantSpec, op: str, rounding: str, transposed: str = "") -> Structure:
        fmt, sfmt = spec.element_format, spec.scale_format
        grid = sfmt.grid
        elem_code = "int" if fmt.kind == "int" else _dtype_name(fmt.torch_dtype) or "float"
        return Structure(
            op=op,
            int_elem=fmt.kind == "int",
            elem_code=elem_code,
            packed=fmt.packed,
            scale=sfmt.kind,
            rule=spec.rule,
            grid_code="" if grid is None else _dtype_name(grid.torch_dtype) or grid.specials,
            granularity=spec.granularity,
            block=spec.block,
            # dim places blocks; a tile or whole-dim group is the same along either dim
            dim=spec.dim if spec.granularity == "block" or spec.hadamard else -1,
            pad=spec.padding == "pad",
            rounding=rounding,
            hadamard=spec.hadamard,
            transposed=transposed,
            code_layout=_layout(fmt) if op == "quantize" and elem_code == "float" else (),
            grid_layout=_layout(grid) if grid is not None and grid.torch_dtype is None else (),
        )


def _layout(fmt) -> tuple[int, int, bool]:
    return (fmt.ebits, fmt.mbits, fmt.signed)


def _layout_name(layout: tuple) -> list[str]:
    if not layout:
        return []
    ebits, mbits, signed = layout
    return [f"{'s' if signed else 'u'}e{ebits}m{mbits}"]


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "" if dtype is None else str(dtype).removeprefix("torch.")


# positions in the int32 / fp32 number vectors a graph reads
_I = {
    n: i
    for i, n in enumerate(
        (
            "emin",
            "mbits",
            "emax",
            "limit_log2",
            "limit_mant",
            "g_emin",
            "g_mbits",
        )
    )
}
_F = {n: i for i, n in enumerate(("max", "g_max", "g_min", "st_den", "st_min", "inv_sqrt"))}


def _numbers(spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 numbers, fp32 numbers) of the spec's formats, as the reference uses them."""
    fmt, grid = spec.element_format, spec.scale_format.grid
    is_int = fmt.kind == "int"
    limit_mant, limit_exp = math.frexp(fmt.max)  # max = mant * 2^exp, mant in [0.5, 1)
    ints = dict(
        emin=0 if is_int else fmt.emin,
        mbits=0 if is_int else fmt.mbits,
        emax=fmt.emax,
        limit_log2=limit_exp - 1,
        limit_mant=int(limit_mant * 2**24) & _MANT_MASK,  # its fp32 mantissa field
        g_emin=0,
        g_mbits=0,
    )
    floats = dict(max=fmt.max, g_max=1.0, g_min=1.0, st_den=1.0, st_min=1.0, inv_sqrt=1.0)
    if grid is not None:
        ints.update(g_emin=grid.emin, g_mbits=grid.mbits)
        floats.update(g_max=grid.max, g_min=grid.min_normal, st_den=grid.max * fmt.max)
        floats.update(st_min=2.0**-126 / grid.min_normal)
    if spec.hadamard:  # the reference multiplies by torch.tensor(1 / sqrt(n)): that fp32
        floats.update(inv_sqrt=1 / math.sqrt(spec.hadamard))
    i = torch.tensor([ints[n] for n in _I], dtype=torch.int32)
    f = torch.tensor([floats[n] for n in _F], dtype=torch.float32)
    return i, f


# ---------------------------------------------------------------------------
# Exact bit-level helpers (traced into the graph)
# ---------------------------------------------------------------------------


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def _f32(b: torch.Tensor) -> torch.Tensor:
    return b.view(torch.float32)


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """reference.pow2 without its branch: 2^e for int32 e in [-149, 127], both of its
    cases computed and one picked per element. Every shift is by a constant, which
    the vectorised code needs (a shift by a tensor runs element by element)."""
    normal = _f32(((e + 127).clamp(1, 254)) << 23)
    lifted = _f32(((e + 64 + 127).clamp(1, 254)) << 23) * 2.0**-64  # exact
    return torch.where(e >= -126, normal, lifted)


def _frexp(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(floor(log2 a), the 23-bit mantissa field of a normalised) for finite a > 0,
    subnormals included: a subnormal's integer mantissa is a normal fp32 with the
    same significand."""
    b = _bits(a)
    subnormal = (b >> 23) == 0
    g = _bits(torch.where(subnormal, (b & _MANT_MASK).to(torch.float32), a))
    return (g >> 23) - 127 - 149 * subnormal.to(torch.int32), g & _MANT_MASK


def _min_exp_covering(amax: torch.Tensor, ni) -> torch.Tensor:
    """reference._min_exp_covering(amax, max): smallest k with max * 2^k >= amax."""
    log2, mant = _frexp(amax)
    return log2 - ni[_I["limit_log2"]] + (mant > ni[_I["limit_mant"]]).to(torch.int32)


def _rne_binade(v: torch.Tensor, vmax, emin, mbits) -> torch.Tensor:
    """reference.round_to_grid, rne and saturating, for a small float format: one add
    of 2^(23 + spacing exponent) built from a's exponent bits."""
    a = torch.minimum(v.abs(), vmax)
    exponent = torch.maximum(_bits(a) & _EXP_MASK, (emin + 127) << 23)
    c = _f32(exponent + ((23 - mbits) << 23))
    return torch.copysign((a + c) - c, v)


def _round_elements(v: torch.Tensor, s: Structure, ni, nf, rbits) -> torch.Tensor:
    """reference.round_to_grid(v, element, rounding, rbits), saturating."""
    vmax, emin, mbits = nf[_F["max"]], ni[_I["emin"]], ni[_I["mbits"]]
    if s.rounding == "rne":
        if s.int_elem:
            return torch.copysign(torch.round(torch.minimum(v.abs(), vmax)), v)
        return _rne_binade(v, vmax, emin, mbits)
    a = torch.minimum(v.abs(), vmax)
    if s.int_elem:
        step = torch.ones_like(a)
    else:
        log2, _ = _frexp(torch.where(a > 0, a, 1.0))
        step = _pow2(torch.maximum(log2, emin) - mbits)
    t = a / step  # exact: step is a power of two
    low = torch.floor(t)
    threshold = ((t - low) * 4294967296.0).to(torch.int64)
    q = low + (rbits < threshold).to(low.dtype)
    return torch.copysign(q * step, v)


def _round_unsaturated(v: torch.Tensor, s: Structure, ni) -> torch.Tensor:
    """reference.round_to_grid(v, element, saturate=False) (rne): what quant_stats
    compares with max to count saturation."""
    a = v.abs()
    if s.int_elem:
        step = torch.ones_like(a)
    else:
        log2, _ = _frexp(torch.where(a > 0, a, 1.0))
        step = _pow2(torch.maximum(log2, ni[_I["emin"]]) - ni[_I["mbits"]])
    return torch.copysign(torch.round(a / step) * step, v)


def _element_codes(q: torch.Tensor, s: Structure) -> torch.Tensor:
    """reference.encode(q, element): int8 for ints, else uint8 bytes."""
    if s.int_elem:
        return torch.where(torch.isfinite(q), q, 0.0).to(torch.int8)
    if s.elem_code != "float":  # a torch float8 dtype: the reference's own cast (exact)
        return q.to(getattr(torch, s.elem_code)).view(torch.uint8)
    return _small_float_codes(q, *s.code_layout).to(torch.uint8)


def _small_float_codes(q: torch.Tensor, ebits: int, mbits: int, signed: bool) -> torch.Tensor:
    """reference.encode of grid values q in a float format of at most 8 bits, from q's
    fp32 bits: a normal q's exponent and top mantissa bits sit side by side there, so
    its code is one shift and one subtraction (the reference's floor_log2, division and
    multiplication gave the same integers at 25x the time); a subnormal's is an exact
    product. Non-finite q is stored as +0, as the reference does."""
    bias = 2 ** (ebits - 1) - 1  # <= 127: the format's normals are fp32 normals
    b = _bits(torch.where(torch.isfinite(q), q, 0.0))
    magnitude = b & 0x7FFFFFFF
    normal = magnitude >= (1 - bias + 127) << 23  # |q| >= the smallest normal
    code_normal = (magnitude >> (23 - mbits)) - ((127 - bias) << mbits)
    # |q| / the smallest subnormal: an exact integer below 2^mbits
    code_subnormal = (_f32(magnitude) * 2.0 ** (mbits - 1 + bias)).to(torch.int32)
    code = torch.where(normal, code_normal, code_subnormal)
    if signed:
        code = code | ((b < 0).to(torch.int32) << (ebits + mbits))
    return code


# ---------------------------------------------------------------------------
# The pipeline (one graph per Structure)
# ---------------------------------------------------------------------------


def _hadamard(x2, signs, inv_sqrt, n: int, dim: int, inverse: bool) -> torch.Tensor:
    """reference._hadamard_2d with the signs and fp32 1/sqrt(n) as inputs."""
    t = x2 if dim == -1 else x2.t()
    rows, size = t.shape
    chunks = t.reshape(rows, size // n, n)
    if inverse:
        out = reference._fwht(chunks) * inv_sqrt * signs
    else:
        out = reference._fwht(chunks * signs) * inv_sqrt
    out = out.reshape(rows, size)
    return out if dim == -1 else out.t().contiguous()


def _group_sizes(s: Structure, m, k) -> tuple:
    """GroupLayout.of's (gm, bm, gk, bk). The sizes were checked eagerly: unless the
    spec pads they divide, and an exact division keeps the loops simple (inductor
    vectorises them; the ceiling division of padding leaves them scalar)."""
    b = s.block or 1

    def blocks(size):
        if s.pad:
            return -(-size // b)
        torch._check(size % b == 0)  # checked eagerly; lets the compiler simplify
        return size // b

    if s.granularity == "tensor":
        return 1, m, 1, k
    if s.granularity == "row":
        return m, 1, 1, k
    if s.granularity == "col":
        return 1, m, k, 1
    if s.granularity == "tile":
        return blocks(m), b, blocks(k), b
    if s.dim == -1:
        return m, 1, blocks(k), b
    return blocks(m), b, k, 1


def _split(x2, sizes, pad: bool) -> torch.Tensor:
    """GroupLayout.split: (M, K) -> (gm, bm, gk, bk), zero-padded if the spec pads."""
    gm, bm, gk, bk = sizes
    if pad:
        m, k = x2.shape
        x2 = torch.nn.functional.pad(x2, (0, gk * bk - k, 0, gm * bm - m))
    return x2.reshape(gm, bm, gk, bk)


def _merge(x4, m, k, pad: bool) -> torch.Tensor:
    """GroupLayout.merge: (gm, bm, gk, bk) -> (M, K), dropping any padding."""
    gm, bm, gk, bk = x4.shape
    out = x4.reshape(gm * bm, gk * bk)
    return out[:m, :k] if pad else out


def _divides(s: Structure) -> bool:
    """Whether values are dequantized by dividing by the factor (fp32 and pow2 scales,
    as reference._scales says) rather than multiplying."""
    return s.scale in ("fp32", "pow2")


def _scales(amax, poisoned, s: Structure, ni, nf):
    """reference._scales: (multiplier, dequant factor, stored, tensor scale)."""
    nan = torch.full_like(amax, torch.nan)
    positive = amax > 0
    safe = torch.where(positive, amax, 1.0)
    if s.scale == "fp32":
        inv = torch.where(positive, nf[_F["max"]] / safe, 1.0).clamp(max=_F32_MAX)
        inv = torch.where(poisoned, nan, inv)
        return inv, inv, inv, None
    if s.scale == "pow2":
        lo, hi = POW2_EXP_RANGE
        k = torch.where(positive, _min_exp_covering(safe, ni), 0).clamp(lo, hi)
        inv = torch.where(poisoned, nan, _pow2(-k))
        return inv, inv, inv, None
    if s.scale == "e8m0":
        if s.rule == "rceil":
            e = _min_exp_covering(safe, ni)
        else:
            log2, mant = _frexp(safe)
            if s.rule == "even":  # amax rounded to the element's mantissa width, carry
                mbits = ni[_I["mbits"]]
                sig = _f32(mant | 0x3F800000) * _pow2(mbits)  # in [2^m, 2^(m+1))
                rounded = (sig + 8388608.0) - 8388608.0
                log2 = log2 + (rounded == _pow2(mbits + 1)).to(torch.int32)
            elif s.rule == "ceil":
                log2 = log2 + (mant != 0).to(torch.int32)
            e = log2 - ni[_I["emax"]]
        lo, hi = E8M0_EXP_RANGE
        e = torch.where(positive, e, lo).clamp(lo, hi)
        mult = torch.where(poisoned, nan, _pow2(-e))
        stored = torch.where(poisoned, 0xFF, e + E8M0_BIAS).to(torch.uint8)
        return mult, torch.where(poisoned, nan, _pow2(e)), stored, None
    # two-level (NVFP4): reference._two_level_scales, every divisor a tensor
    amax_t = amax.amax()
    s_t = amax_t / nf[_F["st_den"]]
    s_t = torch.where(amax_t > 0, s_t, 1.0)
    s_t = torch.maximum(s_t, nf[_F["st_min"]])
    s_t = torch.where(poisoned.any(), torch.nan, s_t)
    g_max, g_min = nf[_F["g_max"]], nf[_F["g_min"]]
    ratio = (amax / nf[_F["max"]]) / s_t
    # ratio is NaN only under a poisoned s_t; keep that NaN's bits (clamp would, but
    # the vectorised minimum / maximum return a NaN of their own, with the sign set)
    clamped = torch.where(torch.isnan(ratio), ratio, torch.clamp(ratio, g_min, g_max))
    s_b = _rne_binade(clamped, g_max, ni[_I["g_emin"]], ni[_I["g_mbits"]])
    mult = (1.0 / s_t) / s_b
    if s.grid_code.startswith("float8"):  # ue4m3 stored as float8_e4m3fn: a cast, exact
        stored = s_b.to(getattr(torch, s.grid_code)).view(torch.uint8)
    else:  # the reference's encode: a NaN scale (a poisoned tensor) is the grid's NaN
        ebits, mbits, signed = s.grid_layout
        nan_code = 2 ** (int(signed) + ebits + mbits) - 1 if s.grid_code == "ieee" else 0
        code = _small_float_codes(s_b, *s.grid_layout)
        stored = torch.where(torch.isfinite(s_b), code, nan_code).to(torch.uint8)
    return mult, s_b, stored, s_t


def _scales_of(amax, s: Structure, ni, nf):
    """_scales of the groups with this amax: a float amax propagates NaN, and +Inf is
    above every finite value, so a group with a NaN or Inf is exactly a non-finite amax."""
    poisoned = ~torch.isfinite(amax)
    return _scales(torch.where(poisoned, 0.0, amax), poisoned, s, ni, nf)


def _pipeline(s: Structure, x2, ni, nf, signs, rbits, seed, scales=None):
    """The reference's quantize / fake_quantize / quant_stats of x2 (fp32, (M, K)). For
    fake_quantize in two graphs (_call): the "scales" phase returns the (multiplier,
    dequant factor, tensor scale) of x2's groups, the "amax_scales" phase the same of a
    given group amax (x2 is then that amax), and the "elements" phase is fake_quantize
    given those `scales`."""
    if s.phase == "amax_scales":
        mult, factor, _, s_t = _scales_of(x2, s, ni, nf)
        return mult, factor, s_t
    if s.transposed == "graph":  # inductor transposes in tiles: twice an eager copy's speed
        x2 = x2.t().contiguous()
        rbits = None if rbits is None else rbits.t().contiguous()
    m, k = x2.shape
    xt = x2
    if s.hadamard:
        xt = _hadamard(x2, signs, nf[_F["inv_sqrt"]], s.hadamard, s.dim, inverse=False)
    if s.rounding == "sr_seed":
        # element (i, j)'s counter: its index in the caller's row-major order, written as
        # a broadcast sum (a transposed arange view made inductor store Philox's four
        # int64 words between two loops: 2 ms more a 2048 x 512 call)
        rows = torch.arange(m, dtype=torch.int64, device=x2.device)[:, None]
        cols = torch.arange(k, dtype=torch.int64, device=x2.device)[None, :]
        offsets = cols * m + rows if s.transposed else rows * k + cols
        rbits = philox.randint(seed, offsets)
    sizes = _group_sizes(s, m, k)
    x4 = _split(xt, sizes, s.pad)
    if s.phase == "elements":
        mult, factor, s_t = scales
    else:
        # (an amax of the int32 bits of |x|, the same numbers, ran 14x slower here:
        # inductor's int reductions are not vectorised; amax.c does it so)
        mult, factor, stored, s_t = _scales_of(x4.abs().amax(dim=(1, 3)), s, ni, nf)
        if s.phase == "scales":
            return mult, factor, s_t
    scaled = x4 * mult[:, None, :, None]
    if s.pad:  # the reference rounds the (M, K) view, then pads again to dequantize
        q = _round_elements(_merge(scaled, m, k, True), s, ni, nf, rbits)
        values = _split(q, sizes, True)
    else:  # elementwise: stay in the group view (one pass, no reshape back and forth)
        bits4 = None if rbits is None else rbits.reshape(x4.shape)
        values = _round_elements(scaled, s, ni, nf, bits4)
        q = values.reshape(m, k)
    if s.op == "quantize":
        # fp4 pairs are packed after the graph (_pack_pairs): fused into it, every
        # element's arithmetic read x at a stride of 2 and ran 9x slower
        return _element_codes(q, s), stored, s_t
    if _divides(s):
        out = values / factor[:, None, :, None]
    else:
        out = values * factor[:, None, :, None]
        if s_t is not None:
            out = out * s_t
    out = _merge(out, m, k, s.pad)
    if s.hadamard:
        out = _hadamard(out, signs, nf[_F["inv_sqrt"]], s.hadamard, s.dim, inverse=True)
    if s.op == "fake":
        return out
    return _stats_sums(x2, out, scaled, s, ni, nf), stored, s_t


def _stats_sums(x2, dq, scaled, s: Structure, ni, nf) -> torch.Tensor:
    """fp64 [signal, noise, saturated, underflow, nonzero, rel sum, rel max] of
    reference.quant_stats (x2 is the input before any transform)."""
    xd, dqd = x2.double(), dq.double()
    err = xd - dqd
    nonzero = xd != 0
    rel = torch.where(nonzero, err.abs() / torch.where(nonzero, xd.abs(), 1.0), 0.0)
    saturated = _round_unsaturated(scaled.abs(), s, ni) > nf[_F["max"]]
    return torch.stack(
        [
            (xd * xd).sum(),
            (err * err).sum(),
            saturated.sum().double(),
            (nonzero & (dq == 0)).sum().double(),
            nonzero.sum().double(),
            rel.sum(),
            rel.max(),
        ]
    )


_graphs: dict[tuple, object] = {}
# Philox's ten rounds exceed inductor's op count for keeping a value in registers: it
# stored four int64 words an element between loops (2 ms of a 2048 x 512 call). Raised
# for the sr_seed graphs only: elsewhere it recomputes each group's scale per element.
_PHILOX_OPTIONS = {"realize_opcount_threshold": 4000}
_lock = threading.Lock()


def _static_sizes(s: Structure, m: int, k: int) -> tuple[int | None, int | None]:
    """The sizes a graph specialises on (None: dynamic). The sizes the groups or the
    Hadamard chunks run along are static: a symbolic size there leaves inductor index
    arithmetic it cannot simplify (k / (k / 16) for a block of 16), and its loops
    scalar. A model has a handful of such sizes (d_model, the MLP width, ...); the
    number of rows (tokens) stays dynamic."""
    along_k = s.granularity == "tile" or (s.granularity == "block" and s.dim == -1)
    along_m = s.granularity == "tile" or (s.granularity == "block" and s.dim == 0)
    if s.hadamard:
        along_k, along_m = along_k or s.dim == -1, along_m or s.dim == 0
    if s.transposed and s.rounding == "sr_seed":  # Philox counts x's elements: a stride
        along_k = along_m = True  # of the transposed view's size, which must be a number
    return (m if along_m else None, k if along_k else None)


def _graph(s: Structure, static: tuple[int | None, int | None]):
    """The compiled pipeline for one structure and its static sizes, made on first use."""
    key = (s, static)
    if key in _graphs:
        return _graphs[key]
    with _lock:
        if key not in _graphs:

            def run(x2, ni, nf, signs, rbits, seed, scales=None):
                return _pipeline(s, x2, ni, nf, signs, rbits, seed, scales)

            # a code object of its own: dynamo keeps compiled graphs (and counts
            # recompiles) per code object, so structures never evict each other
            name = s.name + "".join(f"_{d}{n}" for d, n in zip("mk", static, strict=True) if n)
            code = run.__code__.replace(co_name=name)
            fn = types.FunctionType(code, run.__globals__, name, run.__defaults__, run.__closure__)
            # static but for the dims _run marks dynamic: with dynamic=True dynamo would
            # also make the structure's ints (the block size) symbolic, and inductor
            # leaves loops over a symbolic block scalar
            options = _PHILOX_OPTIONS if s.rounding == "sr_seed" else None
            _graphs[key] = torch.compile(fn, dynamic=False, fullgraph=True, options=options)
        return _graphs[key]


# fake_quantize of a large tensor in small groups whose scales take a division (fp32
# scales, and NVFP4's two levels) runs as two graphs, each group's multiplier and dequant factor,
# then the elements: in one graph inductor recomputed each group's scale, divisions
# included, at the head of the group's element loop (2048 x 512, one thread: NVFP4 and
# its 16 x 16 tiles, fp8 128-blocks and int4 32-blocks ran 1.6-2x slower). Where the
# groups are blocks along contiguous rows, C takes their amax (amax.c, 2.5x inductor's).
# MX scales gain nothing (2048 x 128: 1.3x slower), nor do 128 x 128 tiles (a scale
# per 16384 elements), nor small tensors, where the extra calls (~20 us each) would not
# pay. Nor does more than one thread: the one graph's element loop then runs in
# parallel, the scalar part split with it, while the amax and the short scales graph
# add serial time (2 threads, NVFP4 and fp8 128-blocks: 1.1-1.3x slower at 2048 x 128
# and 2048 x 512). Single-threaded is how sweeps run on the CPU (a job per core).
TWO_GRAPHS_MIN_NUMEL = 2**17
TWO_GRAPHS_MAX_GROUP = 256  # elements


def _in_two(s: Structure, x2: torch.Tensor) -> bool:
    group = {"block": s.block, "tile": (s.block or 0) ** 2}.get(s.granularity, 0)
    return (
        s.op == "fake"
        and not s.hadamard
        and s.scale in ("fp32", "float")
        and 0 < group <= TWO_GRAPHS_MAX_GROUP
        and x2.numel() >= TWO_GRAPHS_MIN_NUMEL
        and torch.get_num_threads() == 1
    )


def _c_amax_fits(s: Structure, x2: torch.Tensor) -> bool:
    """Whether x2's groups are blocks along its contiguous rows, of a size amax.c takes."""
    return (
        s.granularity == "block"
        and s.dim == -1
        and not s.pad
        and s.transposed != "graph"
        and s.block % 16 == 0
        and x2.is_contiguous()
    )


def _call(s: Structure, static, x2, ni, nf, signs, rbits, seed):
    """The graph of s on x2, or fake_quantize's two (_in_two)."""
    if not _in_two(s, x2):
        return _graph(s, static)(x2, ni, nf, signs, rbits, seed)
    # the scales do not depend on the rounding, nor on how x^T arrived: rne and sr roles
    # share their graph
    transposed = s.transposed if s.transposed == "graph" else ""
    of_scales = dataclasses.replace(s, phase="scales", rounding="rne", transposed=transposed)
    amax = c_kernels.group_amax(x2, s.block) if _c_amax_fits(s, x2) else None
    if amax is None:
        scales = _graph(of_scales, static)(x2, ni, nf, None, None, None)
    else:  # in the groups' shape, (M, K / block)
        amax = _dynamic_rows(amax.view(x2.shape[0], -1), static)
        of_amax = dataclasses.replace(of_scales, phase="amax_scales")
        scales = _graph(of_amax, static)(amax, ni, nf, None, None, None)
    scales = tuple(t if t is None else _dynamic_rows(t, static) for t in scales)
    elements = _graph(dataclasses.replace(s, phase="elements"), static)
    return elements(x2, ni, nf, None, rbits, seed, scales)


def _dynamic_rows(t: torch.Tensor, static) -> torch.Tensor:
    """t, laid out as the pipeline's (M, K) or as its groups (an entry a group), with the
    dims that stay dynamic (static's None: the rows) marked so."""
    for dim, size in enumerate(static):
        if size is None and dim < t.dim():
            torch._dynamo.maybe_mark_dynamic(t, dim)
    return t


def _fake_apart(s: Structure, static, x2, ni, nf, signs, rbits, seed) -> torch.Tensor:
    """fake_quantize under a Hadamard transform with the transforms in C (c_kernels) around
    the quantizer's graph: the same operations in the same order as _pipeline's one
    graph, so the same bits, at a third of the time (inductor compiles the butterflies
    into short scalar loops: NVFP4's wgrad roles ran at 7.8 and 18.8 ns an element).
    Without a C compiler, the one graph."""
    n, inv_sqrt = s.hadamard, float(nf[_F["inv_sqrt"]])
    xt = c_kernels.hadamard(x2, n, signs, inv_sqrt, inverse=False)
    if xt is None:
        return _graph(s, static)(x2.contiguous(), ni, nf, signs, rbits, seed)
    xt = _dynamic_rows(xt, static)
    q = _call(dataclasses.replace(s, hadamard=0), static, xt, ni, nf, None, rbits, seed)
    return c_kernels.hadamard(q, n, signs, inv_sqrt, inverse=True)


# ---------------------------------------------------------------------------
# Public API (reference.py's signatures)
# ---------------------------------------------------------------------------


def _run(x: torch.Tensor, spec: QuantSpec, rbits, seed, op: str):
    """Validate as the reference does, then run the graph. Returns (graph output, x2)."""
    if x.numel() == 0:
        raise ValueError(f"cannot quantize an empty tensor of shape {tuple(x.shape)}")
    x2 = reference._as_2d(x)
    m, k = x2.shape
    if spec.hadamard:
        reference._check_hadamard((m, k), spec.hadamard, spec.dim)
    bits = reference.given_rbits(x2, spec, rbits, seed)
    GroupLayout.of(tuple(x.shape), m, k, spec)  # raises on a block that does not divide
    rounding, seed_t = spec.rounding, None
    if rounding == "sr":
        if bits is not None:
            rounding, bits = "sr_bits", bits.contiguous()
        else:
            if seed is None:  # one Philox seed from torch's generator (module docstring)
                seed = int(torch.randint(0, 2**62, (1,)).item())
            seed %= 2**64
            rounding, seed_t = "sr_seed", torch.tensor(seed - 2**64 if seed >= 2**63 else seed)
    transposed = _transposable(spec, op)
    if transposed:
        spec = spec.replace(dim=-1)
    if transposed == "eager":
        x2, bits = x2.t(), None if bits is None else bits.t().contiguous()
        m, k = k, m
    s, ni, nf, signs = _prepared(spec, op, rounding, transposed)
    # the sizes of the (M, K) the pipeline quantizes; "graph" inputs keep x's layout
    swap = transposed == "graph"
    static = _static_sizes(s, k, m) if swap else _static_sizes(s, m, k)
    apart = s.hadamard and s.op == "fake" and s.dim == -1 and static[1] is not None
    x2 = x2.detach().to(torch.float32)
    if not (apart and transposed == "eager" and x2.t().is_contiguous()):
        x2 = x2.contiguous()  # (else the C transform reads x^T in place)
    for t in (x2, bits) if bits is not None else (x2,):  # other sizes: the same graph
        for dim, size in enumerate(static):
            if size is None:
                torch._dynamo.maybe_mark_dynamic(t, 1 - dim if swap else dim)
    try:
        with torch.no_grad():
            if apart:
                out = _fake_apart(s, static, x2, ni, nf, signs, bits, seed_t)
            else:
                out = _call(s, static, x2, ni, nf, signs, bits, seed_t)
    except Exception as err:  # every input was validated above: this is the compiler
        raise CompileError(f"{type(err).__name__} compiling {s.name}") from err
    if transposed:  # back to x's layout
        if op == "fake":  # a view: a copy back costs as much as the graph's own pass
            return out.t(), x2
        sums, stored, s_t = out
        return (sums, stored.t() if stored.dim() == 2 else stored, s_t), x2
    return out, x2


def _transposable(spec: QuantSpec, op: str) -> str:
    """How to run a spec whose groups or Hadamard chunks run along dim 0 on x^T along
    dim -1 ("": not at all): the same groups, elements and bits, but contiguous in
    memory, where inductor vectorises (along dim 0 the wgrad roles ran at 2.5-22 ns an
    element, several times their dim -1 twins). Inside the graph ("graph"), except
    under a Hadamard transform, which inductor then fuses with the transposed reads
    and runs 1.6x slower than on x^T transposed before ("eager"). Row and column groups
    would swap, and quantize's codes keep x's layout (pairs packed along its last
    dim): those stay as they are."""
    if op == "quantize" or spec.dim != 0 or spec.padding == "pad":
        return ""
    if spec.granularity == "block" or (spec.hadamard and spec.granularity in ("tensor", "tile")):
        return "eager" if spec.hadamard else "graph"
    return ""


@functools.lru_cache(maxsize=512)
def _prepared(spec: QuantSpec, op: str, rounding: str, transposed: str = ""):
    """(structure, int numbers, float numbers, Hadamard signs) of one spec and op, made
    once: a training step makes a hundred calls or more."""
    signs = reference.hadamard_signs(spec.hadamard, spec.hadamard_seed) if spec.hadamard else None
    return Structure.of(spec, op, rounding, transposed), *_numbers(spec), signs


def quantize(
    x: torch.Tensor, spec: QuantSpec, *, rbits: torch.Tensor | None = None, seed: int | None = None
) -> QTensor:
    """reference.quantize: the same QTensor, bit for bit."""
    fmt = spec.element_format
    if fmt.packed and (x.dim() == 0 or x.shape[-1] % 2):
        return reference.quantize(x, spec, rbits=rbits, seed=seed)  # raises its error
    (codes, stored, s_t), _ = _run(x, spec, rbits, seed, "quantize")
    if fmt.packed:
        codes = _pack_pairs(codes)
    return QTensor.of_kernel(x, spec, codes, stored, s_t)


def _pack_pairs(codes: torch.Tensor) -> torch.Tensor:
    """reference.pack_fp4 of contiguous (M, K) 4-bit codes, K even: each pair of bytes
    read as one little-endian int16 (element 2i its low byte), so every access is
    contiguous (4.6x the speed of the strided form)."""
    if sys.byteorder != "little":
        return reference.pack_fp4(codes)
    pairs = codes.contiguous().view(torch.int16)
    return ((pairs & 0xF) | ((pairs >> 4) & 0xF0)).to(torch.uint8)


def fake_quantize(
    x: torch.Tensor, spec: QuantSpec, *, rbits: torch.Tensor | None = None, seed: int | None = None
) -> torch.Tensor:
    """reference.fake_quantize: quantize and dequantize in one graph, in x's dtype."""
    if spec.element_format.packed and (x.dim() == 0 or x.shape[-1] % 2):
        return reference.fake_quantize(x, spec, rbits=rbits, seed=seed)  # raises its error
    out, _ = _run(x, spec, rbits, seed, "fake")
    return out.reshape(x.shape).to(x.dtype)


def quant_stats(
    x: torch.Tensor, spec: QuantSpec, *, rbits: torch.Tensor | None = None, seed: int | None = None
) -> QuantStats:
    """reference.quant_stats from one pass: counts equal, sums to float tolerance."""
    if spec.element_format.packed and (x.dim() == 0 or x.shape[-1] % 2):
        return reference.quant_stats(x, spec, rbits=rbits, seed=seed)  # raises its error
    (sums, stored, s_t), _ = _run(x, spec, rbits, seed, "stats")
    signal, noise, saturated, underflow, nonzero, rel_sum, rel_max = sums.tolist()
    numel = x.numel()
    if spec.scale_format.storage_dtype != stored.dtype:
        stored = stored.view(spec.scale_format.storage_dtype)
    # _scale_exponents reads the spec and the scales only: the codes are not needed
    qt = QTensor(torch.empty(0), stored, s_t, spec, tuple(x.shape), x.dtype)
    return QuantStats(
        sqnr_db=reference.sqnr_db(signal, noise),
        saturation=saturated / numel,
        underflow=underflow / numel,
        scale_exponents=reference._scale_exponents(qt),
        rel_err_mean=rel_sum / nonzero if nonzero else 0.0,
        rel_err_max=rel_max if nonzero else 0.0,
        signal=signal,
        noise=noise,
        numel=numel,
    )
