"""Triton quantize / fake_quantize == reference, bit for bit (run under TRITON_INTERPRET=1).

Codes are compared as bytes, scales and tensor scales as bit patterns, dequantized
values as bit patterns with NaN positions equal. Shapes stay small: the interpreter
costs about a millisecond per program.
"""

from __future__ import annotations

import math

import pytest
import torch

from nblab_kernels import QUANT_PRESETS, QuantSpec, reference
from nblab_kernels.triton import plan
from nblab_kernels.triton import quantize as tq

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PRESETS = [name for name, spec in QUANT_PRESETS.items() if not spec.is_cast]
ROUNDINGS = ("rne", "sr_rbits", "sr_seed")


# ---------------------------------------------------------------------------
# comparisons
# ---------------------------------------------------------------------------


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def assert_float_bits_equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Same dtype, shape, NaN positions, and bit patterns everywhere else."""
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b), f"{what}: NaN positions differ"
    a, b = a.masked_fill(nan_a, 0), b.masked_fill(nan_b, 0)
    diff = (_bits(a) != _bits(b)).nonzero()
    assert diff.numel() == 0, f"{what}: {len(diff)} differ, first at {diff[0].tolist()}"


def assert_same_qtensor(ref: reference.QTensor, got: reference.QTensor) -> None:
    assert got.codes.dtype == ref.codes.dtype and got.codes.shape == ref.codes.shape
    diff = (_bits(ref.codes) != _bits(got.codes)).nonzero()
    assert diff.numel() == 0, f"codes: {len(diff)} differ, first at {diff[0].tolist()}"
    assert got.scale.dtype == ref.scale.dtype and got.scale.shape == ref.scale.shape
    assert torch.equal(_bits(ref.scale), _bits(got.scale)), "scales differ"
    if ref.tensor_scale is None:
        assert got.tensor_scale is None
    else:
        assert got.tensor_scale.shape == ref.tensor_scale.shape
        assert torch.equal(_bits(ref.tensor_scale), _bits(got.tensor_scale)), "tensor scale"
    assert (got.spec, got.shape, got.dtype) == (ref.spec, ref.shape, ref.dtype)
    assert_float_bits_equal(ref.dequantize(), got.dequantize(), "dequantized")


def check(x: torch.Tensor, spec: QuantSpec, rbits=None, seed=None) -> reference.QTensor:
    """Triton quantize and fake_quantize both equal the reference; returns the QTensor."""
    ref = reference.quantize(x, spec, rbits=rbits, seed=seed)
    got = tq.quantize(x, spec, rbits=rbits, seed=seed)
    assert_same_qtensor(ref, got)
    fake_ref = reference.fake_quantize(x, spec, rbits=rbits, seed=seed)
    fake_got = tq.fake_quantize(x, spec, rbits=rbits, seed=seed)
    assert_float_bits_equal(fake_ref, fake_got, "fake_quantize")
    return got


def _sr(spec: QuantSpec, rounding: str, shape, seed: int = 7) -> tuple[QuantSpec, dict]:
    if rounding == "rne":
        return spec.replace(rounding="rne"), {}
    spec = spec.replace(rounding="sr")
    if rounding == "sr_seed":
        return spec, {"seed": seed}
    gen = torch.Generator().manual_seed(seed)
    return spec, {"rbits": torch.randint(0, 2**32, shape, generator=gen, dtype=torch.int64)}


def _shape(spec: QuantSpec) -> tuple[int, int]:
    if spec.block == 128:
        return (128, 128)
    if spec.granularity == "tile":
        return (32, 32)
    return (32, 64)


def _randn(shape, dtype, seed=0) -> torch.Tensor:
    """Values over several binades, so scales and subnormal grid points both occur."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * torch.exp2(torch.randint(-6, 6, shape, generator=gen))
    return x.to(dtype)


# ---------------------------------------------------------------------------
# every preset x input dtype x rounding
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", PRESETS)
def test_preset_matches_reference(name, dtype, rounding):
    shape = _shape(QUANT_PRESETS[name])
    spec, kw = _sr(QUANT_PRESETS[name], rounding, shape)
    check(_randn(shape, dtype), spec, **kw)


FORMAT_SPECS = {
    # every e8m0 rule on every element format
    **{
        f"{elem}_e8m0_{rule}": QuantSpec(elem, "e8m0", "block", 16, rule=rule)
        for elem in ("e4m3", "e5m2", "e3m2", "e2m3", "e2m1", "int8", "int4")
        for rule in ("floor", "ceil", "rceil", "even")
    },
    # generic eXmY (all finite, <= 8 bits)
    **{
        f"{elem}_{scale}": QuantSpec(elem, scale, "block", 32)
        for elem in ("e1m6", "e3m4", "e5m1", "e6m1", "e7m0", "e3m0")
        for scale in ("fp32", "e8m0")
    },
    "e2m1_ue5m3": QuantSpec("e2m1", "ue5m3", "block", 16, rule="nvfp4"),
    "e4m3_ue4m3_two_level": QuantSpec("e4m3", "ue4m3", "block", 32, rule="nvfp4"),
    "e3m2_ue5m3_tile": QuantSpec("e3m2", "ue5m3", "tile", 16, rule="nvfp4"),
    "e5m2_pow2_block": QuantSpec("e5m2", "pow2", "block", 8),
    "e2m1_pow2_row": QuantSpec("e2m1", "pow2", "row"),
    "e4m3_fp32_col": QuantSpec("e4m3", "fp32", "col"),
    "int8_pow2_col": QuantSpec("int8", "pow2", "col"),
    "int4_fp32_tensor": QuantSpec("int4", "fp32", "tensor"),
    "e8m0_tile16": QuantSpec("e4m3", "e8m0", "tile", 16),
    "block64": QuantSpec("e4m3", "fp32", "block", 64),
}


# block maxima where the rules differ: powers of two (ceil), mantissas that round up
# into the next binade at 1, 2 or 3 mantissa bits, ties included (even)
AMAX_MANTISSAS = (1.0, 1.25, 1.5, 1.75, 1.875, 1.9375, 1 + 2**-10, 2 - 2**-12)


def _rule_input(shape, seed=1) -> torch.Tensor:
    """Random values, with one element of every 16 set to a chosen block maximum."""
    x = _randn(shape, torch.float32, seed=seed)
    rows = torch.arange(shape[0])
    mant = torch.tensor(AMAX_MANTISSAS)[rows % len(AMAX_MANTISSAS)]
    amax = mant * torch.exp2(8.0 + rows % 5 - 2) * (1 - 2 * (rows % 2))
    x[:, ::16] = amax[:, None]
    return x


@pytest.mark.parametrize("rounding", ("rne", "sr_rbits"))
@pytest.mark.parametrize("name", FORMAT_SPECS)
def test_format_and_rule_matches_reference(name, rounding):
    spec, kw = _sr(FORMAT_SPECS[name], rounding, (32, 64))
    check(_rule_input((32, 64)), spec, **kw)


# ---------------------------------------------------------------------------
# special values, as named cases
# ---------------------------------------------------------------------------

SPECIAL_SPECS = ["mxfp8", "mxfp4", "nvfp4", "fp8_e4m3_row", "fp8_e5m2_tensor", "int4_b32"]


@pytest.mark.parametrize("name", SPECIAL_SPECS)
def test_nan_in_one_block_poisons_that_block_only(name):
    x = _randn((32, 64), torch.float32)
    x[3, 5] = torch.nan
    qt = check(x, QUANT_PRESETS[name])
    dq = qt.dequantize()
    spec = QUANT_PRESETS[name]
    if spec.rule == "nvfp4" or spec.granularity == "tensor":
        assert bool(dq.isnan().all())  # one tensor-wide scale: all poisoned
    else:
        assert bool(dq[3, 5].isnan()) and int(dq.isnan().sum()) < dq.numel() // 8
    if spec.scale == "e8m0":
        assert int(qt.scale[3, 0]) == 0xFF and int(qt.scale[3, 1]) != 0xFF


@pytest.mark.parametrize("sign", (1.0, -1.0))
@pytest.mark.parametrize("name", SPECIAL_SPECS)
def test_inf_in_one_block(name, sign):
    x = _randn((32, 64), torch.bfloat16)
    x[7, 40] = sign * torch.inf
    check(x, QUANT_PRESETS[name])


@pytest.mark.parametrize("name", SPECIAL_SPECS + ["fp8_e4m3_b128"])
def test_all_zero_block(name):
    x = _randn((32, 128), torch.float32)
    x[:16, :32] = 0
    x[20, :] = -0.0
    qt = check(x, QUANT_PRESETS[name])
    assert bool((qt.dequantize()[:16, :32] == 0).all())


@pytest.mark.parametrize("name", SPECIAL_SPECS)
def test_all_zero_tensor(name):
    check(torch.zeros(16, 64, dtype=torch.float16), QUANT_PRESETS[name])


def _midpoints(elem: str) -> torch.Tensor:
    """Every value exactly midway between two neighbours of elem's grid, both signs."""
    vals = QuantSpec(elem, "e8m0", "block", 32).element_format.values
    mids = ((vals[1:] + vals[:-1]) / 2).float()
    return torch.cat([mids, -mids])


@pytest.mark.parametrize("rounding", ("rne", "sr_ties"))
@pytest.mark.parametrize("elem", ("e4m3", "e5m2", "e3m2", "e2m3", "e2m1", "int8", "int4"))
def test_ties_between_grid_points(elem, rounding):
    """Blocks of midpoints whose amax sets the e8m0 scale to 1: rne goes to the even
    code; sr with bits straddling the 2^31 threshold goes up (2^31 - 1) then down (2^31)."""
    spec = QuantSpec(elem, "e8m0", "block", 32)
    fmt = spec.element_format
    mids = _midpoints(elem)
    n = 32 * math.ceil((len(mids) + 1) / 31)
    x = torch.zeros(n)
    x[: len(mids)] = mids
    x = x.reshape(-1, 32)
    x[:, 31] = 2.0**fmt.emax  # amax: e8m0 floor scale exactly 1
    kw = {}
    if rounding == "sr_ties":
        spec = spec.replace(rounding="sr")
        kw["rbits"] = torch.tensor([2**31 - 1, 2**31]).repeat(x.numel() // 2)
    qt = check(x, spec, **kw)
    assert bool((qt.scale == 127).all())


@pytest.mark.parametrize("name", ["mxfp8", "mxfp4", "mxfp6_e3m2", "int4_b32", "nvfp4"])
def test_saturation_above_max(name):
    """Block maxima just under the next power of two map past max and saturate."""
    x = _randn((16, 64), torch.float32)
    x[:, ::32] = 1.99 * 2.0 ** torch.arange(-8, 8).float()[:, None]
    x[:, 1::32] = -1.999
    qt = check(x, QUANT_PRESETS[name])
    fmt = QUANT_PRESETS[name].element_format
    assert bool((qt.element_values().abs() <= fmt.max).all())


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("name", ["mxfp8", "mxfp4_rceil", "nvfp4", "fp8_e4m3_row", "int8_row",
                                  "fp8_e4m3_tensor", "int4_b32"])  # fmt: skip
def test_denormal_amax(name, dtype):
    """Groups whose amax is an fp32 subnormal (and a whole subnormal tensor)."""
    x = _randn((16, 64), torch.float32)
    x[:4] = x[:4] * 1e-40
    check(x.to(dtype), QUANT_PRESETS[name])
    check((x[:4] * 1e-3).to(dtype), QUANT_PRESETS[name])


# ---------------------------------------------------------------------------
# layouts: strides, N-D, block along dim 0, padding, two-pass groups
# ---------------------------------------------------------------------------

LAYOUT_SPECS = ["mxfp8", "mxfp4", "nvfp4", "fp8_e4m3_row", "fp8_e4m3_tensor"]


@pytest.mark.parametrize("name", LAYOUT_SPECS)
def test_non_contiguous_input(name):
    base = _randn((48, 160), torch.bfloat16)
    x = base[8:40, 16:144:2]  # strides (160, 2)
    assert not x.is_contiguous()
    check(x, QUANT_PRESETS[name])


@pytest.mark.parametrize("name", LAYOUT_SPECS)
def test_transposed_input(name):
    x = _randn((64, 32), torch.float32).t()  # (32, 64), strides (1, 32)
    check(x, QUANT_PRESETS[name])


def test_transposed_input_is_not_copied(monkeypatch):
    """The kernel reads a transposed 2-D view through its strides."""
    seen = []
    original = tq._bits_view
    monkeypatch.setattr(tq, "_bits_view", lambda t: seen.append(t) or original(t))
    x = _randn((64, 32), torch.float32).t()
    tq.quantize(x, QUANT_PRESETS["mxfp8"])
    assert seen[0].data_ptr() == x.data_ptr() and seen[0].stride() == (1, 32)


@pytest.mark.parametrize("name", ["mxfp8", "nvfp4", "int8_row"])
def test_nd_input(name):
    check(_randn((2, 16, 64), torch.float16), QUANT_PRESETS[name])
    check(_randn((64,), torch.float32), QUANT_PRESETS[name])


DIM0_SPECS = ["mxfp8", "mxfp4", "nvfp4", "int4_b32", "fp8_e4m3_b128"]


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("name", DIM0_SPECS)
def test_block_along_dim0(name, dtype):
    spec = QUANT_PRESETS[name].replace(dim=0)
    shape = (128, 32) if spec.block == 128 else (64, 32)
    check(_randn(shape, dtype), spec)
    spec_sr, kw = _sr(spec, "sr_rbits", shape)
    check(_randn(shape, dtype), spec_sr, **kw)


def test_block_along_dim0_is_the_transpose_of_dim_minus1():
    """x^T's 1x32 blocks come from x itself: codes and scales are the transposes."""
    x = _randn((64, 32), torch.bfloat16)
    along0 = tq.quantize(x, QUANT_PRESETS["mxfp8"].replace(dim=0))
    of_xt = tq.quantize(x.t().contiguous(), QUANT_PRESETS["mxfp8"])
    assert torch.equal(_bits(along0.codes.t()), _bits(of_xt.codes))
    assert torch.equal(along0.scale.t(), of_xt.scale)


@pytest.mark.parametrize("dim", (-1, 0))
@pytest.mark.parametrize("name", ["mxfp8", "mxfp4", "nvfp4", "nvfp4_tile16"])
def test_padding(name, dim):
    spec = QUANT_PRESETS[name].replace(padding="pad", dim=dim)
    qt = check(_randn((30, 40), torch.float32), spec)
    layout = qt.layout
    assert qt.scale.shape == (layout.gm, layout.gk) and layout.padded != (30, 40)


@pytest.mark.parametrize("name", ["mxfp8", "nvfp4_tile16"])
def test_block_that_does_not_divide_raises_like_the_reference(name):
    x = torch.randn(30, 40)
    with pytest.raises(ValueError) as ref_err:
        reference.quantize(x, QUANT_PRESETS[name])
    with pytest.raises(ValueError) as got_err:
        tq.quantize(x, QUANT_PRESETS[name])
    assert str(got_err.value) == str(ref_err.value)


def test_odd_last_dim_for_fp4_raises():
    spec = QuantSpec("e2m1", "e8m0", "row")
    with pytest.raises(ValueError, match="odd last dim 33"):
        tq.quantize(torch.randn(4, 33), spec)
    with pytest.raises(ValueError, match="odd last dim 33"):
        tq.fake_quantize(torch.randn(4, 33), spec)


SPAN_SPECS = {
    "tensor": QuantSpec("e4m3", "fp32", "tensor"),
    "row": QuantSpec("e4m3", "pow2", "row"),
    "col": QuantSpec("int8", "fp32", "col"),
    "col_e8m0": QuantSpec("e2m1", "e8m0", "col"),
}


@pytest.mark.parametrize("nonfinite", (False, True))
@pytest.mark.parametrize("name", SPAN_SPECS)
def test_groups_spanning_tiles_take_two_passes(monkeypatch, name, nonfinite):
    """Force whole-dim groups across programs: pass 1 atomics, then quantize."""
    monkeypatch.setattr(plan, "MAX_INTILE_GROUP", 1)
    monkeypatch.setattr(plan, "MAX_TILE_K", 32)
    monkeypatch.setattr(plan, "TILE_ELEMS", 256)
    spec = SPAN_SPECS[name]
    tile = plan.TilePlan.of(spec, 48, 96)
    assert tile.spans and tile.grid(48, 96)[0] * tile.grid(48, 96)[1] > 1
    x = _randn((48, 96), torch.float32)
    if nonfinite:
        x[10, 70] = torch.inf
    check(x, spec)
    spec_sr, kw = _sr(spec, "sr_rbits", (48, 96))
    check(x, spec_sr, **kw)


def test_tall_column_groups_span_tiles():
    """A column group fits one tile only up to 128 rows beside 32 columns (taller ones
    spilled on sm_90); taller ones take the two passes, with the same numbers."""
    spec = SPAN_SPECS["col"]
    short, tall = plan.TilePlan.of(spec, 128, 256), plan.TilePlan.of(spec, 256, 256)
    assert not short.spans and (short.bm, short.bk) == (128, plan.COL_TILE_K)
    assert tall.span_m and tall.bm * tall.bk <= plan.TILE_ELEMS
    check(_randn((256, 32), torch.bfloat16), spec)
    narrow = plan.TilePlan.of(QUANT_PRESETS["fp8_e4m3_b128"].replace(dim=0), 1024, 1024)
    assert (narrow.bm, narrow.bk) == (128, plan.COL_TILE_K)  # 128-row blocks: 128 x 32


# ---------------------------------------------------------------------------
# stochastic rounding drawn in the kernel
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", (0, 2**31 + 5, 2**40 + 3, 2**63 + 11, -3))
def test_sr_seed_matches_reference_stream(seed):
    spec = QUANT_PRESETS["mxfp4"].replace(rounding="sr")
    check(_randn((16, 64), torch.float32), spec, seed=seed)


def test_sr_is_deterministic_per_seed():
    spec = QUANT_PRESETS["nvfp4"].replace(rounding="sr")
    x = _randn((32, 64), torch.bfloat16)
    a, b = tq.quantize(x, spec, seed=11), tq.quantize(x, spec, seed=11)
    c = tq.quantize(x, spec, seed=12)
    assert torch.equal(a.codes, b.codes) and not torch.equal(a.codes, c.codes)


def test_sr_without_seed_draws_its_seed_from_torch_rng():
    """No rbits, no seed: one Philox seed from torch's generator, so torch.manual_seed
    repeats the run (the reference draws a bits tensor there instead: see _sr_bits)."""
    spec = QUANT_PRESETS["mxfp4"].replace(rounding="sr")
    x = _randn((16, 64), torch.float32)
    torch.manual_seed(5)
    first = tq.quantize(x, spec)
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    assert_same_qtensor(reference.quantize(x, spec, seed=seed), first)
    torch.manual_seed(5)
    assert_same_qtensor(first, tq.quantize(x, spec))


def test_sr_is_unbiased_in_the_mean():
    """A constant between two grid points: the mean of the SR results is the value."""
    spec = QuantSpec("e2m1", "e8m0", "block", 32, rounding="sr")
    x = torch.full((64, 128), 1.3)
    x[:, ::32] = 4.0  # amax 4: scale 1, grid neighbours of 1.3 are 1.0 and 1.5
    out = tq.fake_quantize(x, spec, seed=3)
    body = out[:, 1:32].reshape(-1).double()
    assert set(body.unique().tolist()) == {1.0, 1.5}
    # 64 * 31 Bernoulli(0.6) draws: the mean is within 4 sigma of 1.3
    sigma = 0.5 * math.sqrt(0.6 * 0.4 / body.numel())
    assert abs(float(body.mean()) - 1.3) < 4 * sigma


def test_rbits_argument_checks_match_the_reference():
    x = torch.randn(1, 32)
    sr = QUANT_PRESETS["mxfp4"].replace(rounding="sr")
    with pytest.raises(ValueError, match="not both"):
        tq.quantize(x, sr, rbits=torch.zeros(1, 32, dtype=torch.int64), seed=1)
    with pytest.raises(ValueError, match="one uint32 each"):
        tq.quantize(x, sr, rbits=torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="rounding='rne'"):
        tq.quantize(x, QUANT_PRESETS["mxfp4"], rbits=torch.zeros(1, 32))


def test_rbits_of_any_integer_dtype():
    spec = QUANT_PRESETS["mxfp8"].replace(rounding="sr")
    rbits = torch.randint(-(2**31), 2**31, (16, 32), dtype=torch.int32)
    check(_randn((16, 32), torch.float16), spec, rbits=rbits)
