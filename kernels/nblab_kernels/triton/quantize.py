"""Triton quantize / fake_quantize, bit for bit equal to `nblab_kernels.reference`.

One kernel family for every spec (plain casts aside). x is read through
its strides as the (M, K) view (no copy for transposed or sliced 2-D inputs). Each
program owns a BM x BK tile (see `plan.TilePlan`):

  pass 1 (`_amax_kernel`, only when needed): per-tile amax of the finite |x|, with
    "any non-finite" folded in as the bits of +Inf, atomic-maxed into int32 group
    cells (tensor / row / col groups larger than a tile) or into the tensor amax
    (NVFP4's s_t);
  pass 2 (`_quantize_kernel`): group amax (in the tile, or from pass 1) -> scale by
    the spec's rule -> scaled = x * multiplier -> clamp -> round (rne or sr) ->
    codes (fp4 packed two per byte) and scales, or, for fake_quantize, the
    dequantized value written in x's dtype.

Hadamard specs transform the tile right after the load, in both passes (the plan
makes n divide the tile along the transform dim): signs, then `_fwht_rows`, the
reference's butterfly stage by stage (reshape / permute / split / join, no tl.dot,
so every output is the same chain of fp32 adds), then the fp32 1/sqrt(n). For
fake_quantize the dequantized fp32 tile goes through the inverse before the store.

Statistics (quant_stats): the quantize launch with STATS also dequantizes and
writes one fp32 row per program (`_stats`): sum x^2, sum (x - dq)^2, saturated and
underflowed counts, amax, nonzero count, relative-error sum and max. The host sums
the rows in fp64; counts are exact, the sums agree with the reference's fp64 sums
to float tolerance.

Exactness: every step mirrors reference.py. Divisions use `tl.math.div_rn` (IEEE);
floor(log2) and powers of two come from the fp32 bits; rne of t >= 0 is
(t + 2^23) - 2^23; the element code is built from the integer grid index, so no
float8 conversion instruction is needed. bf16 is read and written through its
bits (RNE), since the interpreter truncates fp32 -> bf16 casts.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

from .. import reference
from ..formats import E8M0_BIAS, E8M0_EXP_RANGE, POW2_EXP_RANGE, QuantSpec
from ..reference import GroupLayout, QTensor, QuantStats
from .plan import TilePlan

_NAN_BITS: tl.constexpr = tl.constexpr(0x7FC00000)  # the NaN torch writes
_F32_MAX: tl.constexpr = tl.constexpr(torch.finfo(torch.float32).max)
POW2_LO: tl.constexpr = tl.constexpr(POW2_EXP_RANGE[0])
POW2_HI: tl.constexpr = tl.constexpr(POW2_EXP_RANGE[1])
E8M0_LO: tl.constexpr = tl.constexpr(E8M0_EXP_RANGE[0])
E8M0_HI: tl.constexpr = tl.constexpr(E8M0_EXP_RANGE[1])
E8M0_BIAS_: tl.constexpr = tl.constexpr(E8M0_BIAS)
_SCALE_KINDS = {"fp32": 0, "pow2": 1, "e8m0": 2, "float": 3}
_E8M0_RULES = {"floor": 0, "ceil": 1, "rceil": 2, "even": 3}
_OUT_KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


# ---------------------------------------------------------------------------
# Exact bit-level helpers
# ---------------------------------------------------------------------------


@triton.jit
def _pow2(e):
    """2^e as fp32 for int32 e in [-149, 127], built from the bits (reference.pow2)."""
    normal = ((tl.maximum(e, -126) + 127) << 23).to(tl.float32, bitcast=True)
    subnormal = (1 << tl.minimum(tl.maximum(e + 149, 0), 22)).to(tl.float32, bitcast=True)
    return tl.where(e >= -126, normal, subnormal)


@triton.jit
def _frexp(a):
    """(floor(log2 a), significand in [1, 2)) of a finite fp32 a > 0, subnormals included.
    A subnormal's integer mantissa converted to fp32 is normal and has its significand."""
    bits = a.to(tl.int32, bitcast=True)
    subnormal = ((bits >> 23) & 0xFF) == 0
    g = tl.where(subnormal, (bits & 0x7FFFFF).to(tl.float32), a)
    gbits = g.to(tl.int32, bitcast=True)
    e = ((gbits >> 23) & 0xFF) - 127 - tl.where(subnormal, 149, 0)
    sig = ((gbits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    return e, sig


@triton.jit
def _min_exp_covering(a, LIMIT_EXP: tl.constexpr, LIMIT_SIG: tl.constexpr):
    """Smallest k with limit * 2^k >= a (a > 0), limit = LIMIT_SIG * 2^LIMIT_EXP,
    LIMIT_SIG in [1, 2): reference._min_exp_covering on the bits."""
    fl, sig = _frexp(a)
    return fl - LIMIT_EXP + (sig > LIMIT_SIG).to(tl.int32)


@triton.jit
def _round_magnitude(a, rbits, EMIN: tl.constexpr, MBITS: tl.constexpr, IS_INT: tl.constexpr,
                     SR: tl.constexpr):  # fmt: skip
    """Round magnitudes a (finite, already clamped to [0, max]) onto the grid.

    Returns (q, e): the grid value is q * 2^(e - MBITS) with q an integer-valued fp32
    (ints: e = MBITS = 0, step 1). rne: ties to even; sr: up iff rbits < floor(frac * 2^32).
    """
    if IS_INT:
        e = tl.zeros_like(a).to(tl.int32)
        t = a
    else:
        fl, _sig = _frexp(tl.where(a > 0, a, 1.0))
        e = tl.maximum(fl, EMIN)
        t = a * _pow2(MBITS - e)  # exact: a power of two, result normal or exact subnormal
    if SR:
        low = tl.floor(t)
        up = rbits < ((t - low) * 4294967296.0).to(tl.int64)
        q = low + up.to(tl.float32)
    else:
        q = (t + 8388608.0) - 8388608.0  # exact round half to even for 0 <= t < 2^22
    return q, e


@triton.jit
def _grid_code(q, e, EMIN: tl.constexpr, MBITS: tl.constexpr):
    """Unsigned code of the grid value q * 2^(e - MBITS): (e - EMIN) * 2^MBITS + q also
    covers subnormals (e == EMIN, q < 2^MBITS) and the carry q == 2^(MBITS+1)."""
    qi = q.to(tl.int32)
    return tl.where(qi == 0, 0, ((e - EMIN) << MBITS) + qi)


@triton.jit
def _load_f32(ptrs, mask, X_BF16: tl.constexpr):
    """fp32 values of x; bf16 arrives as int16 bits (exact widening on every backend)."""
    if X_BF16:
        raw = tl.load(ptrs, mask=mask, other=0)
        return ((raw.to(tl.int32) & 0xFFFF) << 16).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _amax_bits(x):
    """|x| as int32 bits (monotone for non-negative floats); non-finite -> +Inf bits."""
    return tl.minimum(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0x7F800000)


@triton.jit
def _group_max(t, BM: tl.constexpr, BK: tl.constexpr, RM: tl.constexpr, RK: tl.constexpr):
    """(BM, BK) -> (RM, RK): max over each (BM/RM) x (BK/RK) group."""
    if (RM == 1 or RM == BM) and (RK == 1 or RK == BK):  # whole rows, columns or tile
        if RK == 1:
            t = tl.max(t, axis=1, keep_dims=True)
        if RM == 1:
            t = tl.max(t, axis=0, keep_dims=True)
        return t
    else:
        t4 = tl.reshape(t, [RM, BM // RM, RK, BK // RK])
        return tl.max(tl.max(t4, axis=3), axis=1)


@triton.jit
def _expand(g, BM: tl.constexpr, BK: tl.constexpr, RM: tl.constexpr, RK: tl.constexpr):
    """(RM, RK) per-group values -> (BM, BK), each broadcast over its group.

    Groups of whole rows, columns or the whole tile broadcast in the tile's own layout:
    through the 4-D reshape, the compiler shuffled every element of the statistics
    through shared memory (sm_90: a 7.5 MB PTX for a 64 x 128 tensor group; a row
    group's kernel spilled)."""
    if (RM == 1 or RM == BM) and (RK == 1 or RK == BK):
        return tl.broadcast_to(g, [BM, BK])
    else:
        g4 = tl.broadcast_to(tl.reshape(g, [RM, 1, RK, 1]), [RM, BM // RM, RK, BK // RK])
        return tl.reshape(g4, [BM, BK])


@triton.jit
def _group_index(pid, R: tl.constexpr, SPAN: tl.constexpr):
    """Group row (or column) indices of a program's R groups; a spanning group is 0."""
    if SPAN:
        return tl.zeros([R], tl.int32)
    else:
        return pid * R + tl.arange(0, R)


@triton.jit
def _tile(pid_m, pid_k, M, K, BM: tl.constexpr, BK: tl.constexpr):
    rm = pid_m * BM + tl.arange(0, BM)
    rk = pid_k * BK + tl.arange(0, BK)
    mask = (rm[:, None] < M) & (rk[None, :] < K)
    return rm.to(tl.int64), rk.to(tl.int64), mask


@triton.jit
def _fwht_rows(x, ROWS: tl.constexpr, COLS: tl.constexpr, LOG2N: tl.constexpr):
    """reference._fwht in chunks of 2^LOG2N along the last axis of a (ROWS, COLS) tile:
    the same stages in the same order, stage h mapping the pair (lo, hi) = (x[i],
    x[i + h]) of each 2h-run to (lo + hi, lo - hi). No tl.dot: each output is the
    same chain of fp32 additions as the reference's, so the result is bit for bit."""
    for s in tl.static_range(LOG2N):
        # h = 1 << s stays inline: a name bound to it would be rebound on each unrolled
        # stage, which the compiler refuses for `h: tl.constexpr` and turns into a
        # tensor (no shape) for a plain name; the interpreter accepted both
        t = tl.permute(tl.reshape(x, [ROWS, COLS // (2 << s), 2, 1 << s]), (0, 1, 3, 2))
        lo, hi = tl.split(t)  # (ROWS, COLS / 2H, H) each
        t = tl.permute(tl.join(lo + hi, lo - hi), (0, 1, 3, 2))
        x = tl.reshape(t, [ROWS, COLS])
    return x


@triton.jit
def _hadamard(x, signs_ptr, BM: tl.constexpr, BK: tl.constexpr, LOG2N: tl.constexpr,
              DIM0: tl.constexpr, INV_SQRT: tl.constexpr, INVERSE: tl.constexpr):  # fmt: skip
    """reference._hadamard_2d on a (BM, BK) tile whose chunks of n = 2^LOG2N along the
    transform dim (K, or M when DIM0) are whole: forward fwht(x * s) * (1/sqrt n),
    inverse fwht(y) * (1/sqrt n) * s. INV_SQRT is fp32 1/sqrt(n), exactly as stored."""
    if DIM0:
        t = tl.trans(x)  # (BK, BM): the chunks run along the last axis
        signs = tl.load(signs_ptr + tl.arange(0, BM) % (1 << LOG2N))
        if not INVERSE:
            t = t * signs[None, :]
        t = _fwht_rows(t, BK, BM, LOG2N) * INV_SQRT
        if INVERSE:
            t = t * signs[None, :]
        return tl.trans(t)
    else:
        signs = tl.load(signs_ptr + tl.arange(0, BK) % (1 << LOG2N))
        if not INVERSE:
            x = x * signs[None, :]
        x = _fwht_rows(x, BM, BK, LOG2N) * INV_SQRT
        if INVERSE:
            x = x * signs[None, :]
        return x


# ---------------------------------------------------------------------------
# Scale rules (reference._scales), on (RM, RK) group amax bits
# ---------------------------------------------------------------------------


@triton.jit
def _scales(abits, tbits, SCALE_KIND: tl.constexpr, RULE: tl.constexpr,
            ELEM_MAX: tl.constexpr, ELEM_EMAX: tl.constexpr, ELEM_MBITS: tl.constexpr,
            LIMIT_EXP: tl.constexpr, LIMIT_SIG: tl.constexpr,
            GRID_MAX: tl.constexpr, GRID_MIN: tl.constexpr, GRID_EMIN: tl.constexpr,
            GRID_MBITS: tl.constexpr, GRID_NAN: tl.constexpr, ST_DEN: tl.constexpr,
            ST_MIN: tl.constexpr):  # fmt: skip
    """Per group: (multiplier, dequant factor, stored scale, s_t).

    The multiplier is NaN for a poisoned group (NVFP4: for every group of a poisoned
    tensor). Dequantization divides by the factor for fp32/pow2 scales and multiplies
    by it (then by s_t) otherwise. stored is fp32 (fp32/pow2) or an int32 byte code.
    """
    nan = tl.full(abits.shape, _NAN_BITS, tl.int32).to(tl.float32, bitcast=True)
    poisoned = abits >= 0x7F800000
    amax = tl.where(poisoned, 0, abits).to(tl.float32, bitcast=True)
    positive = amax > 0
    safe = tl.where(positive, amax, 1.0)
    s_t = nan  # only NVFP4 has a tensor scale
    if SCALE_KIND == 0:  # fp32: inv = max / amax, kept finite
        inv = tl.where(positive, tl.math.div_rn(ELEM_MAX, safe), 1.0)
        inv = tl.where(poisoned, nan, tl.minimum(inv, _F32_MAX))
        return inv, inv, inv, s_t
    elif SCALE_KIND == 1:  # pow2: inv = 2^-k, k the smallest with max * 2^k >= amax
        k = tl.where(positive, _min_exp_covering(safe, LIMIT_EXP, LIMIT_SIG), 0)
        k = tl.minimum(tl.maximum(k, POW2_LO), POW2_HI)
        inv = tl.where(poisoned, nan, _pow2(-k))
        return inv, inv, inv, s_t
    elif SCALE_KIND == 2:  # e8m0
        if RULE == 2:  # rceil
            e = _min_exp_covering(safe, LIMIT_EXP, LIMIT_SIG)
        else:
            fl, sig = _frexp(safe)
            if RULE == 3:  # even: round amax to the element's mantissa width first
                r = (sig * (1 << ELEM_MBITS) + 8388608.0) - 8388608.0
                e = fl + (r == (2 << ELEM_MBITS)).to(tl.int32)
            elif RULE == 1:  # ceil
                e = fl + (sig != 1.0).to(tl.int32)
            else:  # floor
                e = fl
            e = e - ELEM_EMAX
        e = tl.minimum(tl.maximum(tl.where(positive, e, E8M0_LO), E8M0_LO), E8M0_HI)
        mult = tl.where(poisoned, nan, _pow2(-e))
        stored = tl.where(poisoned, 0xFF, e + E8M0_BIAS_)
        return mult, tl.where(poisoned, nan, _pow2(e)), stored, s_t
    else:  # two-level (NVFP4): s_t over a ue4m3 / ue5m3 block scale s_b
        t_poisoned = tbits >= 0x7F800000
        amax_t = tl.where(t_poisoned, 0, tbits).to(tl.float32, bitcast=True)
        s_t = tl.math.div_rn(amax_t, ST_DEN)
        s_t = tl.maximum(tl.where(amax_t > 0, s_t, 1.0), ST_MIN)
        ratio = tl.math.div_rn(tl.math.div_rn(amax, ELEM_MAX), s_t)
        ratio = tl.minimum(tl.maximum(ratio, GRID_MIN), GRID_MAX)
        q, e = _round_magnitude(ratio, 0, GRID_EMIN, GRID_MBITS, False, False)
        s_b = q * _pow2(e - GRID_MBITS)
        mult = tl.math.div_rn(tl.math.div_rn(1.0, s_t), s_b)
        mult = tl.where(t_poisoned, nan, mult)
        stored = tl.where(t_poisoned, GRID_NAN, _grid_code(q, e, GRID_EMIN, GRID_MBITS))
        s_t = tl.where(t_poisoned, nan, s_t)
        return mult, tl.where(t_poisoned, nan, s_b), stored, s_t


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


# The scale-grid extents only address scale stores: specializing on their values
# (== 1, multiple of 16) would only multiply the compiled variants.
@triton.jit(do_not_specialize=["GK_N"])
def _amax_kernel(x_ptr, sxm, sxk, M, K, amax_ptr, GK_N, signs_ptr,
                 BM: tl.constexpr, BK: tl.constexpr, RM: tl.constexpr, RK: tl.constexpr,
                 SPAN_M: tl.constexpr, SPAN_K: tl.constexpr, X_BF16: tl.constexpr,
                 HAD_LOG2N: tl.constexpr, HAD_DIM0: tl.constexpr,
                 HAD_INV_SQRT: tl.constexpr):  # fmt: skip
    """Pass 1: atomic max of each tile's group amax bits into amax_ptr[(gm, gk)]
    (of the Hadamard-transformed values when HAD_LOG2N > 0)."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm, rk, mask = _tile(pid_m, pid_k, M, K, BM, BK)
    x = _load_f32(x_ptr + rm[:, None] * sxm + rk[None, :] * sxk, mask, X_BF16)
    if HAD_LOG2N > 0:
        x = _hadamard(x, signs_ptr, BM, BK, HAD_LOG2N, HAD_DIM0, HAD_INV_SQRT, False)
    g = _group_max(_amax_bits(x), BM, BK, RM, RK)
    gi_m = _group_index(pid_m, RM, SPAN_M)
    gi_k = _group_index(pid_k, RK, SPAN_K)
    tl.atomic_max(amax_ptr + gi_m[:, None] * GK_N + gi_k[None, :], g, sem="relaxed")


# The seed arrives as two int32 halves, never specialized: one compiled kernel for
# every seed (a whole int64 seed would compile apart for seeds below 2^31, for seeds
# divisible by 16 and for seed 1).
@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "GM_N", "GK_N"])
def _quantize_kernel(
    x_ptr, sxm, sxk, M, K,
    rbits_ptr, seed_lo, seed_hi,  # SR bits (int64 uint32 values), or the Philox seed
    gamax_ptr, tamax_ptr,  # pass-1 group amax bits (spanning groups), tensor amax bits
    codes_ptr, scale_ptr, ts_ptr, out_ptr, signs_ptr, stats_ptr,
    GM_N, GK_N,  # scales shape (gm, gk)
    BM: tl.constexpr, BK: tl.constexpr, RM: tl.constexpr, RK: tl.constexpr,
    SPAN_M: tl.constexpr, SPAN_K: tl.constexpr,
    X_BF16: tl.constexpr, FAKE: tl.constexpr, STATS: tl.constexpr, OUT_KIND: tl.constexpr,
    SR: tl.constexpr, SEEDED: tl.constexpr,
    HAD_LOG2N: tl.constexpr, HAD_DIM0: tl.constexpr, HAD_INV_SQRT: tl.constexpr,
    ELEM_MAX: tl.constexpr, ELEM_EMIN: tl.constexpr, ELEM_MBITS: tl.constexpr,
    ELEM_EMAX: tl.constexpr, IS_INT: tl.constexpr, SIGN_SHIFT: tl.constexpr,
    NAN_CODE: tl.constexpr, PACKED: tl.constexpr,
    SCALE_KIND: tl.constexpr, RULE: tl.constexpr,
    LIMIT_EXP: tl.constexpr, LIMIT_SIG: tl.constexpr,
    GRID_MAX: tl.constexpr, GRID_MIN: tl.constexpr, GRID_EMIN: tl.constexpr,
    GRID_MBITS: tl.constexpr, GRID_NAN: tl.constexpr, ST_DEN: tl.constexpr,
    ST_MIN: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm, rk, mask = _tile(pid_m, pid_k, M, K, BM, BK)
    x_in = _load_f32(x_ptr + rm[:, None] * sxm + rk[None, :] * sxk, mask, X_BF16)
    x = x_in
    if HAD_LOG2N > 0:  # quantize the transformed values (codes live in that domain)
        x = _hadamard(x, signs_ptr, BM, BK, HAD_LOG2N, HAD_DIM0, HAD_INV_SQRT, False)

    # -- group amax (RM, RK) and scales ------------------------------------------
    gi_m = _group_index(pid_m, RM, SPAN_M)
    gi_k = _group_index(pid_k, RK, SPAN_K)
    gmask = (gi_m[:, None] < GM_N) & (gi_k[None, :] < GK_N)
    gofs = gi_m[:, None] * GK_N + gi_k[None, :]
    if SPAN_M or SPAN_K:
        abits = tl.load(gamax_ptr + gofs, mask=gmask, other=0)
    else:
        abits = _group_max(_amax_bits(x), BM, BK, RM, RK)
    tbits = abits  # unused unless two-level
    if SCALE_KIND == 3:
        tbits = tl.load(tamax_ptr + gofs * 0)
    mult, dq, stored, s_t = _scales(
        abits, tbits, SCALE_KIND, RULE, ELEM_MAX, ELEM_EMAX, ELEM_MBITS, LIMIT_EXP, LIMIT_SIG,
        GRID_MAX, GRID_MIN, GRID_EMIN, GRID_MBITS, GRID_NAN, ST_DEN, ST_MIN,
    )  # fmt: skip
    if not FAKE:
        owner = gmask  # a spanning group's scale is written by the first program along it
        if SPAN_M:
            owner = owner & ((gofs * 0 + pid_m) == 0)
        if SPAN_K:
            owner = owner & ((gofs * 0 + pid_k) == 0)
        if SCALE_KIND <= 1:
            tl.store(scale_ptr + gofs, stored, mask=owner)
        else:
            tl.store(scale_ptr + gofs, stored.to(tl.uint8), mask=owner)
        if SCALE_KIND == 3:
            first = (gi_m[:, None] == 0) & (gi_k[None, :] == 0) & owner
            tl.store(ts_ptr + gofs * 0, s_t, mask=first)

    # -- scale, clamp, round --------------------------------------------------------
    v = x * _expand(mult, BM, BK, RM, RK)
    poisoned = v != v  # NaN iff the group (or the NVFP4 tensor) is poisoned
    negative = v.to(tl.int32, bitcast=True) < 0
    a = tl.where(poisoned, 0.0, tl.minimum(tl.abs(v), ELEM_MAX))
    offs = rm[:, None] * K + rk[None, :]  # row-major index in (M, K): the SR stream
    if SR:
        if SEEDED:
            seed = (seed_hi.to(tl.int64) << 32) | (seed_lo.to(tl.int64) & 0xFFFFFFFF)
            rbits = tl.randint(seed, offs).to(tl.int64) & 0xFFFFFFFF
        else:
            rbits = tl.load(rbits_ptr + offs, mask=mask, other=0)
    else:
        rbits = 0
    q, e = _round_magnitude(a, rbits, ELEM_EMIN, ELEM_MBITS, IS_INT, SR)

    # Order matters for registers (the AOT compile spilled the statistics kernels of
    # 128 x 128 tiles): each tile-sized value is used up as early as it can be, the
    # saturation count with v, the codes with q and e, before the dequantization.
    row_ptr = stats_ptr + (pid_m * tl.num_programs(1) + pid_k) * 8
    if STATS:
        _stats_saturated(v, poisoned, mask, row_ptr, ELEM_MAX, ELEM_EMIN, ELEM_MBITS, IS_INT)
    if not FAKE:
        _store_codes(q, e, negative, poisoned, codes_ptr, offs, rm, mask, pid_k, M, K, BM, BK,
                     ELEM_EMIN, ELEM_MBITS, IS_INT, SIGN_SHIFT, NAN_CODE, PACKED)  # fmt: skip
    if FAKE or STATS:  # dequantize in the same pass, as reference.fake_quantize
        nan = tl.full([BM, BK], _NAN_BITS, tl.int32).to(tl.float32, bitcast=True)
        value = q * _pow2(e - ELEM_MBITS)
        # times -1.0, not -value: triton < 3.8 compiles -x as 0 - x, so -(+0.0) was +0.0
        # (a negative value that rounds to zero must be -0.0, as in the reference); the
        # product keeps the sign exactly, and costs no register that the select did not
        # (setting the sign bit by hand spilled 4-20 B in 10 specializations on sm_80..100)
        value = tl.where(negative, value * -1.0, value)
        dq_e = _expand(dq, BM, BK, RM, RK)
        if SCALE_KIND <= 1:
            out = tl.math.div_rn(value, dq_e)
        else:
            out = value * dq_e
            if SCALE_KIND == 3:
                out = out * _expand(s_t, BM, BK, RM, RK)
        out = tl.where(poisoned, nan, out)
        if HAD_LOG2N > 0:  # back to x's domain (NaN spreads over a poisoned chunk)
            out = _hadamard(out, signs_ptr, BM, BK, HAD_LOG2N, HAD_DIM0, HAD_INV_SQRT, True)
    if STATS:  # reference.quant_stats' sums and counts, one row per program
        _stats(x_in, out, mask, row_ptr)
    if FAKE:
        optrs = out_ptr + offs
        if OUT_KIND == 2:  # bf16 through its bits, round to nearest even
            bits = out.to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            bits = tl.where(out != out, 0x7FC0, bits)
            tl.store(optrs, bits.to(tl.int16), mask=mask)
        elif OUT_KIND == 1:
            tl.store(optrs, out.to(tl.float16), mask=mask)
        else:
            tl.store(optrs, out, mask=mask)


@triton.jit
def _store_codes(q, e, negative, poisoned, codes_ptr, offs, rm, mask, pid_k, M, K,
                 BM: tl.constexpr, BK: tl.constexpr, ELEM_EMIN: tl.constexpr,
                 ELEM_MBITS: tl.constexpr, IS_INT: tl.constexpr, SIGN_SHIFT: tl.constexpr,
                 NAN_CODE: tl.constexpr, PACKED: tl.constexpr):  # fmt: skip
    """The element codes: int8, one byte, or fp4 packed two a byte."""
    if IS_INT:
        qi = q.to(tl.int32)
        code = tl.where(poisoned, 0, tl.where(negative, -qi, qi))
        tl.store(codes_ptr + offs, code.to(tl.int8), mask=mask)
    else:
        code = _grid_code(q, e, ELEM_EMIN, ELEM_MBITS)
        code = code | (negative.to(tl.int32) << SIGN_SHIFT)
        code = tl.where(poisoned, NAN_CODE, code)
        if PACKED:  # two codes per byte along K, element 2i in the low nibble
            lo, hi = tl.split(tl.reshape(code & 0xF, [BM, BK // 2, 2]))
            byte = lo | (hi << 4)
            half = pid_k * (BK // 2) + tl.arange(0, BK // 2)
            pmask = (rm[:, None] < M) & (half[None, :] < K // 2)
            tl.store(codes_ptr + rm[:, None] * (K // 2) + half[None, :], byte.to(tl.uint8),
                     mask=pmask)  # fmt: skip
        else:
            tl.store(codes_ptr + offs, code.to(tl.uint8), mask=mask)


# Columns of the per-program statistics rows (fp32): sums over the tile's elements.
STAT_SIGNAL, STAT_NOISE, STAT_SATURATED, STAT_UNDERFLOW = 0, 1, 2, 3
STAT_AMAX, STAT_NONZERO, STAT_REL_SUM, STAT_REL_MAX = 4, 5, 6, 7
N_STATS = 8


@triton.jit
def _stats_saturated(v, poisoned, mask, row_ptr, ELEM_MAX: tl.constexpr,
                     ELEM_EMIN: tl.constexpr, ELEM_MBITS: tl.constexpr,
                     IS_INT: tl.constexpr):  # fmt: skip
    """The statistics row's saturated count: rne of |v| (the scaled value before
    clipping) on the grid continued past max lands above max, as
    reference round_to_grid(saturate=False)."""
    q, e = _round_magnitude(tl.where(poisoned, 0.0, tl.abs(v)), 0, ELEM_EMIN, ELEM_MBITS,
                            IS_INT, False)  # fmt: skip
    saturated = (q * _pow2(e - ELEM_MBITS) > ELEM_MAX) & mask
    tl.store(row_ptr + 2, tl.sum(tl.sum(saturated.to(tl.float32), axis=1), axis=0))


@triton.jit
def _stats(x, dq, mask, row_ptr):
    """One program's share of reference.quant_stats, in fp32 (the host sums in fp64),
    but the saturated count (_stats_saturated). x: the input, dq: the dequantized fp32
    value (inverse-transformed). underflow: x != 0 but dq == 0. The maxima are taken
    on the int32 bits of non-negative floats, so NaN wins as in torch."""
    err = x - dq
    nonzero = (x != 0) & mask
    rel = tl.where(nonzero, tl.math.div_rn(tl.abs(err), tl.abs(tl.where(nonzero, x, 1.0))), 0.0)
    zero = tl.zeros_like(x)
    tl.store(row_ptr + 0, tl.sum(tl.sum(tl.where(mask, x * x, zero), axis=1), axis=0))
    tl.store(row_ptr + 1, tl.sum(tl.sum(tl.where(mask, err * err, zero), axis=1), axis=0))
    tl.store(row_ptr + 3, tl.sum(tl.sum((nonzero & (dq == 0)).to(tl.float32), axis=1), axis=0))
    amax = tl.max(tl.max(tl.where(mask, x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0), axis=1),
                  axis=0)  # fmt: skip
    tl.store(row_ptr + 4, amax.to(tl.float32, bitcast=True))
    tl.store(row_ptr + 5, tl.sum(tl.sum(nonzero.to(tl.float32), axis=1), axis=0))
    tl.store(row_ptr + 6, tl.sum(tl.sum(rel, axis=1), axis=0))
    rel_max = tl.max(tl.max(rel.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1), axis=0)
    tl.store(row_ptr + 7, rel_max.to(tl.float32, bitcast=True))


# ---------------------------------------------------------------------------
# Python wrappers
# ---------------------------------------------------------------------------


def _limit(limit: float) -> tuple[int, float]:
    """limit = sig * 2^exp with sig in [1, 2)."""
    mant, exp = math.frexp(limit)
    return exp - 1, mant * 2


def _constants(spec: QuantSpec) -> dict:
    """The kernel's constexprs for one spec, read from formats.py."""
    fmt, sfmt = spec.element_format, spec.scale_format
    is_int = fmt.kind == "int"
    limit_exp, limit_sig = _limit(fmt.max)
    consts = dict(
        ELEM_MAX=float(fmt.max),
        ELEM_EMIN=0 if is_int else fmt.emin,
        ELEM_MBITS=0 if is_int else fmt.mbits,
        ELEM_EMAX=fmt.emax,
        IS_INT=is_int,
        SIGN_SHIFT=fmt.ebits + fmt.mbits,
        NAN_CODE=0x7F if fmt.has_nan else 0,
        PACKED=fmt.packed,
        SCALE_KIND=_SCALE_KINDS[sfmt.kind],
        RULE=_E8M0_RULES.get(spec.rule, 0),
        LIMIT_EXP=limit_exp,
        LIMIT_SIG=limit_sig,
        GRID_MAX=1.0,
        GRID_MIN=1.0,
        GRID_EMIN=0,
        GRID_MBITS=0,
        GRID_NAN=0,
        ST_DEN=1.0,
        ST_MIN=1.0,
    )
    grid = sfmt.grid
    if grid is not None:
        consts.update(
            GRID_MAX=float(grid.max),
            GRID_MIN=float(grid.min_normal),
            GRID_EMIN=grid.emin,
            GRID_MBITS=grid.mbits,
            GRID_NAN=2**grid.bits - 1 if grid.specials == "ieee" else 0x7F,
            ST_DEN=float(grid.max * fmt.max),
            ST_MIN=2.0**-126 / grid.min_normal,
        )
    return consts


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    k = x.shape[-1] if x.dim() else 1
    return x.reshape(-1, k)  # a view whenever strides allow (always for 2-D)


def _bits_view(x2: torch.Tensor) -> torch.Tensor:
    """bf16 is handed to the kernel as int16 bits."""
    return x2.view(torch.int16) if x2.dtype == torch.bfloat16 else x2


def _sr_bits(x2: torch.Tensor, spec: QuantSpec, rbits, seed):
    """(rbits as contiguous int64 uint32 values or None, seed or None), validated by
    reference.given_rbits.

    With neither, one Philox seed is drawn from torch's global generator (repeatable
    under torch.manual_seed) and the kernel draws its bits in place. The reference
    instead draws a full tensor of bits from that generator, so the two backends pick
    different (equally distributed) streams there; pass rbits or seed to compare."""
    bits = reference.given_rbits(x2, spec, rbits, seed)
    if bits is not None or spec.rounding != "sr":
        return (None if bits is None else bits.contiguous()), None
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    seed %= 2**64
    return None, seed - 2**64 if seed >= 2**63 else seed


def _int32_halves(seed: int) -> tuple[int, int]:
    """(low, high) 32 bits of a 64-bit seed, each as a signed int32 (the kernel's i32
    arguments; it puts the int64 back together)."""
    seed %= 2**64
    lo, hi = seed & 0xFFFFFFFF, seed >> 32
    return tuple(h - 2**32 if h >= 2**31 else h for h in (lo, hi))


_SIGNS: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _hadamard_args(spec: QuantSpec, dev: torch.device) -> tuple[torch.Tensor | None, dict]:
    """(signs of hadamard(n) as fp32 on dev, the kernels' Hadamard constexprs)."""
    n = spec.hadamard
    if not n:
        return None, dict(HAD_LOG2N=0, HAD_DIM0=False, HAD_INV_SQRT=1.0)
    key = (n, spec.hadamard_seed, dev)
    if key not in _SIGNS:
        _SIGNS[key] = reference.hadamard_signs(n, spec.hadamard_seed).to(dev)
    # the reference multiplies by torch.tensor(1 / sqrt(n), float32): that fp32 value
    inv_sqrt = float(np.float32(1 / math.sqrt(n)))
    return _SIGNS[key], dict(HAD_LOG2N=n.bit_length() - 1, HAD_DIM0=spec.dim == 0,
                             HAD_INV_SQRT=inv_sqrt)  # fmt: skip


def _launch(x: torch.Tensor, spec: QuantSpec, rbits, seed, fake: bool, stats: bool = False):
    """Validate as the reference does, then run pass 1 (if needed) and pass 2.
    Returns (codes, scale, tensor_scale, stats rows or None) for quantize, or the
    dequantized (M, K) tensor in x's dtype for fake_quantize."""
    if x.numel() == 0:
        raise ValueError(f"cannot quantize an empty tensor of shape {tuple(x.shape)}")
    shape = tuple(x.shape)
    x2 = _as_2d(x)
    m, k = x2.shape
    if spec.hadamard:
        reference._check_hadamard((m, k), spec.hadamard, spec.dim)
    layout = GroupLayout.of(shape, m, k, spec)  # raises on a block that does not divide
    fmt = spec.element_format
    if fmt.packed and (x.dim() == 0 or k % 2):
        raise ValueError(
            f"fp4 packs two codes per byte along the last dim; shape {shape} has an odd last "
            f"dim {k}"
        )
    bits, seed = _sr_bits(x2, spec, rbits, seed)
    plan = TilePlan.of(spec, m, k)
    consts = _constants(spec)
    two_level = consts["SCALE_KIND"] == 3
    dev = x.device
    signs, had = _hadamard_args(spec, dev)
    xk = _bits_view(x2)
    args = (xk, x2.stride(0), x2.stride(1), m, k)  # read through the strides: no copy
    grid = plan.grid(m, k)
    common = dict(BM=plan.bm, BK=plan.bk, X_BF16=x2.dtype == torch.bfloat16, **had)
    # launch options. fp fusion off: the rounding NUMERICS.md promises is the unfused
    # one (the interpreter's and the reference's). nblab_kernels.aot checks every
    # specialization's PTX for fma; a line may keep one only with an `exact-fma:`
    # comment saying why the result is the same.
    common.update(num_warps=plan.num_warps, enable_fp_fusion=False)
    span = dict(RM=plan.rm, RK=plan.rk, SPAN_M=plan.span_m, SPAN_K=plan.span_k)

    gamax = torch.zeros(layout.gm * layout.gk if plan.spans else 1, dtype=torch.int32, device=dev)
    tamax = torch.zeros(1, dtype=torch.int32, device=dev)
    dummy = torch.empty(1, dtype=torch.int64, device=dev)
    signs = dummy if signs is None else signs
    rows = torch.empty((grid[0] * grid[1], N_STATS), dtype=torch.float32, device=dev)
    if fake:
        out = torch.empty((m, k), dtype=x.dtype, device=dev)
        codes = scale = ts = dummy
    else:
        wide = spec.scale_format.kind in ("fp32", "pow2")
        scale = torch.empty(
            (layout.gm, layout.gk), dtype=torch.float32 if wide else torch.uint8, device=dev
        )
        codes = torch.empty(
            (m, k // 2 if fmt.packed else k),
            dtype=torch.int8 if consts["IS_INT"] else torch.uint8,
            device=dev,
        )
        ts = torch.empty((), dtype=torch.float32, device=dev)
        out = dummy

    # The interpreter runs on numpy, which warns where IEEE overflows on purpose
    # (max / subnormal amax -> inf, then clamped as the reference does).
    with np.errstate(over="ignore", invalid="ignore"):
        if plan.spans:  # pass 1: amax of the groups that span tiles
            _amax_kernel[grid](*args, gamax, layout.gk, signs, **span, **common)
        if two_level:  # pass 1: the tensor amax under NVFP4's s_t
            whole = dict(RM=1, RK=1, SPAN_M=True, SPAN_K=True)
            _amax_kernel[grid](*args, tamax, 1, signs, **whole, **common)
        _quantize_kernel[grid](
            *args,
            bits if bits is not None else dummy,
            *_int32_halves(seed if seed is not None else 0),
            gamax,
            tamax,
            codes,
            scale,
            ts,
            _bits_view(out),
            signs,
            rows,
            layout.gm,
            layout.gk,
            FAKE=fake,
            STATS=stats,
            OUT_KIND=_OUT_KINDS[x.dtype],
            SR=spec.rounding == "sr",
            SEEDED=seed is not None,
            **span,
            **consts,
            **common,
        )
    if fake:
        return out
    return codes, scale, ts if two_level else None, rows if stats else None


def quantize(
    x: torch.Tensor, spec: QuantSpec, *, rbits: torch.Tensor | None = None, seed: int | None = None
) -> QTensor:
    """Triton reference.quantize: the same QTensor, bit for bit."""
    return QTensor.of_kernel(x, spec, *_launch(x, spec, rbits, seed, fake=False)[:3])


def fake_quantize(
    x: torch.Tensor, spec: QuantSpec, *, rbits: torch.Tensor | None = None, seed: int | None = None
) -> torch.Tensor:
    """Triton reference.fake_quantize: quantize + dequantize in one pass, in x's dtype."""
    return _launch(x, spec, rbits, seed, fake=True).reshape(x.shape)


def quant_stats(
    x: torch.Tensor, spec: QuantSpec, *, rbits: torch.Tensor | None = None, seed: int | None = None
) -> QuantStats:
    """reference.quant_stats from one quantize pass: the kernel writes codes and scales
    and, per program, the fp32 sums and counts (`_stats`); they are summed here in fp64.
    Counts (saturation, underflow) are exact; SQNR and relative errors agree with the
    reference to float tolerance (fp32 products, another summation order)."""
    codes, scale, tensor_scale, rows = _launch(x, spec, rbits, seed, fake=False, stats=True)
    qt = QTensor.of_kernel(x, spec, codes, scale, tensor_scale)
    return stats_from_rows(rows, x.numel(), reference._scale_exponents(qt))


def stats_from_rows(rows: torch.Tensor, numel: int, exponents: dict[int, int]) -> QuantStats:
    """Per-program rows (P, N_STATS) -> QuantStats, with the reference's SQNR cases."""
    sums = rows.double().sum(dim=0).tolist()
    sqnr = reference.sqnr_db(sums[STAT_SIGNAL], sums[STAT_NOISE])
    nonzero = sums[STAT_NONZERO]
    return QuantStats(
        sqnr_db=sqnr,
        saturation=sums[STAT_SATURATED] / numel,
        underflow=sums[STAT_UNDERFLOW] / numel,
        scale_exponents=exponents,
        rel_err_mean=sums[STAT_REL_SUM] / nonzero if nonzero else 0.0,
        rel_err_max=float(rows[:, STAT_REL_MAX].double().max()) if nonzero else 0.0,
        signal=sums[STAT_SIGNAL],
        noise=sums[STAT_NOISE],
        numel=numel,
    )
