"""Fused Hadamard + quantize and the fused statistics == reference (TRITON_INTERPRET=1).

Hadamard: codes, scales and dequantized values (inverse transform included) bit for
bit, for every n, both dims, fp32/bf16/fp16 inputs, rne and sr. Statistics: counts
equal the reference's exactly, SQNR and relative errors to float tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_triton_quantize import _randn, _rule_input, _sr, assert_float_bits_equal, check

from nblab_kernels import QUANT_PRESETS, QuantSpec, reference
from nblab_kernels.triton import plan
from nblab_kernels.triton import quantize as tq

HADAMARD_SIZES = (16, 32, 64, 128)


def _hshape(dim: int) -> tuple[int, int]:
    """128 along the transformed dim (every n divides it), 32 along the other."""
    return (32, 128) if dim == -1 else (128, 32)


# ---------------------------------------------------------------------------
# fused Hadamard + quantize
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rounding", ("rne", "sr_rbits", "sr_seed"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("dim", (-1, 0))
@pytest.mark.parametrize("n", HADAMARD_SIZES)
@pytest.mark.parametrize("name", ("nvfp4", "mxfp4"))
def test_hadamard_quantize_matches_reference(name, n, dim, dtype, rounding):
    shape = _hshape(dim)
    spec = QUANT_PRESETS[name].replace(hadamard=n, dim=dim, hadamard_seed=n + dim)
    spec, kw = _sr(spec, rounding, shape)
    qt = check(_randn(shape, dtype, seed=n), spec, **kw)
    # the codes really live in the transformed domain
    plain = reference.quantize(_randn(shape, dtype, seed=n), spec.replace(hadamard=0), **kw)
    assert not torch.equal(qt.codes, plain.codes)


HADAMARD_SPECS = {
    "mxfp8_h32": QuantSpec("e4m3", "e8m0", "block", 32, hadamard=32),
    "fp8_row_h128": QuantSpec("e4m3", "pow2", "row", hadamard=128),
    "fp8_tensor_h16": QuantSpec("e4m3", "fp32", "tensor", hadamard=16),
    "int8_col_h64_dim0": QuantSpec("int8", "fp32", "col", dim=0, hadamard=64),
    "nvfp4_tile16_h32": QuantSpec("e2m1", "ue4m3", "tile", 16, rule="nvfp4", hadamard=32),
    "quartet_h32_rceil": QuantSpec("e2m1", "e8m0", "block", 32, rule="rceil", hadamard=32),
    "e2m1_b128_h16_dim0": QuantSpec("e2m1", "fp32", "block", 128, dim=0, hadamard=16),
}


@pytest.mark.parametrize("name", HADAMARD_SPECS)
def test_hadamard_with_other_granularities(name):
    spec = HADAMARD_SPECS[name]
    check(_randn((128, 128), torch.float16, seed=3), spec)


@pytest.mark.parametrize("dim", (-1, 0))
def test_nan_poisons_its_chunk_through_both_transforms(dim):
    """A NaN spreads over its chunk in the transformed domain, poisons those blocks,
    and the inverse transform spreads the NaN output over the chunk again."""
    spec = QUANT_PRESETS["mxfp4"].replace(hadamard=16, dim=dim)
    x = _randn(_hshape(dim), torch.float32)
    x[5, 7] = torch.nan
    out = tq.fake_quantize(x, spec)
    assert_float_bits_equal(reference.fake_quantize(x, spec), out, "fake_quantize")
    check(x, spec)
    assert 0 < int(out.isnan().sum()) < out.numel() // 4


def test_hadamard_zeros_inf_and_ties():
    spec = QUANT_PRESETS["nvfp4"].replace(hadamard=32)
    x = _rule_input((32, 64))
    x[:4] = 0
    x[10, 3] = -torch.inf
    check(x, spec)
    check(torch.zeros(16, 64), spec)


@pytest.mark.parametrize("n", (16, 128))
def test_hadamard_layouts(n):
    """N-D, transposed and sliced inputs are read through their strides."""
    spec = QUANT_PRESETS["mxfp4"].replace(hadamard=n)
    check(_randn((2, 8, 128), torch.bfloat16), spec)
    check(_randn((128, 16), torch.float32).t(), spec)
    check(_randn((20, 256), torch.float16)[2:18, ::2], spec)
    check(_randn((128, 16), torch.float32), spec.replace(dim=0))


@pytest.mark.parametrize("dim", (-1, 0))
def test_hadamard_with_padding(dim):
    spec = QUANT_PRESETS["mxfp8"].replace(hadamard=16, padding="pad", dim=dim)
    shape = (24, 48) if dim == -1 else (48, 24)
    check(_randn(shape, torch.float32), spec)


@pytest.mark.parametrize("name", ("tensor", "row", "col"))
def test_hadamard_before_the_first_pass(monkeypatch, name):
    """Groups spanning tiles: pass 1 reduces the transformed values too."""
    monkeypatch.setattr(plan, "MAX_INTILE_GROUP", 1)
    monkeypatch.setattr(plan, "MAX_TILE_K", 32)
    monkeypatch.setattr(plan, "TILE_ELEMS", 256)
    gran = {"tensor": ("e4m3", "fp32"), "row": ("e4m3", "pow2"), "col": ("int8", "fp32")}
    elem, scale = gran[name]
    spec = QuantSpec(elem, scale, name, hadamard=32, dim=0 if name == "col" else -1)
    tile = plan.TilePlan.of(spec, 64, 96)
    assert tile.spans and tile.grid(64, 96)[0] * tile.grid(64, 96)[1] > 1
    check(_randn((64, 96), torch.float32), spec)


def test_tile_holds_whole_chunks():
    for n in HADAMARD_SIZES:
        last = plan.TilePlan.of(QUANT_PRESETS["nvfp4"].replace(hadamard=n), 4, 256)
        first = plan.TilePlan.of(QUANT_PRESETS["nvfp4"].replace(hadamard=n, dim=0), 256, 4096)
        assert last.bk % n == 0 and first.bm % n == 0


def test_hadamard_size_errors_match_the_reference():
    spec = QUANT_PRESETS["mxfp4"].replace(hadamard=64)
    x = torch.randn(8, 96)
    with pytest.raises(ValueError) as ref_err:
        reference.quantize(x, spec)
    with pytest.raises(ValueError) as got_err:
        tq.quantize(x, spec)
    assert str(got_err.value) == str(ref_err.value) and "multiple of 64" in str(ref_err.value)


# ---------------------------------------------------------------------------
# fused statistics
# ---------------------------------------------------------------------------


def assert_stats_match(ref: reference.QuantStats, got: reference.QuantStats) -> None:
    assert got.saturation == ref.saturation, (got.saturation, ref.saturation)
    assert got.underflow == ref.underflow, (got.underflow, ref.underflow)
    assert got.scale_exponents == ref.scale_exponents
    assert got.numel == ref.numel
    for field in ("sqnr_db", "rel_err_mean", "rel_err_max", "signal", "noise"):
        r, g = getattr(ref, field), getattr(got, field)
        if math.isnan(r) or math.isinf(r):
            assert (math.isnan(g) and math.isnan(r)) or g == r, (field, g, r)
        else:
            assert g == pytest.approx(r, rel=1e-5, abs=1e-6), (field, g, r)


STATS_SPECS = [
    "mxfp8",
    "mxfp4",
    "mxfp6_e3m2",
    "nvfp4",
    "fp8_e4m3_tensor",
    "fp8_e4m3_row",
    "int8_row",
    "int4_b32",
    "fp8_e4m3_t128",
]


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("name", STATS_SPECS)
def test_stats_match_reference(name, dtype):
    """Saturating block maxima (e8m0 floor), tiny rows that underflow, zeros."""
    x = _rule_input((128, 128))
    x[:8] = x[:8] * 2.0**-40
    x[9] = 0
    x = x.to(dtype)
    assert_stats_match(
        reference.quant_stats(x, QUANT_PRESETS[name]), tq.quant_stats(x, QUANT_PRESETS[name])
    )


def test_stats_count_saturation_and_underflow():
    """The counts are of a known input: with the e8m0 floor scale 1, 7.9 rounds past
    max 6 on the continued grid (saturates), 5.9 rounds to 6 (does not), and 1e-3 lies
    below half the smallest step (dequantizes to 0)."""
    spec = QUANT_PRESETS["mxfp4"]
    x = torch.full((4, 64), 1.0)
    x[:, 0] = 5.9  # block 0: scale 1, rounds to 6 == max: not saturated
    x[:, 32] = 7.9  # block 1: scale 1, rounds to 8 > 6: saturated
    x[:, 33] = 1e-3  # below half the smallest step: dequantized 0
    got = tq.quant_stats(x, spec)
    assert_stats_match(reference.quant_stats(x, spec), got)
    assert got.saturation == 4 / x.numel() and got.underflow == 4 / x.numel()


@pytest.mark.parametrize("case", ("hadamard_dim0", "hadamard_nan", "sr", "zeros", "nd"))
def test_stats_special_cases(case):
    spec = QUANT_PRESETS["nvfp4"]
    x, kw = _randn((64, 128), torch.float32), {}
    if case == "hadamard_dim0":
        spec = spec.replace(hadamard=64, dim=0)
    elif case == "hadamard_nan":
        spec = QUANT_PRESETS["mxfp4"].replace(hadamard=32)
        x[3, 70] = torch.nan
    elif case == "sr":
        spec, kw = _sr(spec, "sr_rbits", x.shape)
    elif case == "zeros":
        x = torch.zeros(16, 64)
    else:
        x = _randn((2, 16, 64), torch.float16)
    assert_stats_match(reference.quant_stats(x, spec, **kw), tq.quant_stats(x, spec, **kw))


def test_stats_with_groups_spanning_tiles(monkeypatch):
    monkeypatch.setattr(plan, "MAX_INTILE_GROUP", 1)
    monkeypatch.setattr(plan, "MAX_TILE_K", 32)
    monkeypatch.setattr(plan, "TILE_ELEMS", 256)
    spec = QuantSpec("int8", "fp32", "tensor")
    x = _randn((48, 96), torch.float32)
    assert_stats_match(reference.quant_stats(x, spec), tq.quant_stats(x, spec))


def test_stats_pass_also_returns_the_quantized_tensor_and_amax():
    """The stats rows come from the same launch that writes codes and scales."""
    x = _randn((32, 64), torch.bfloat16)
    x[1, 2] = -1000.0
    spec = QUANT_PRESETS["mxfp8"]
    codes, scale, ts, rows = tq._launch(x, spec, None, None, fake=False, stats=True)
    ref = reference.quantize(x, spec)
    assert torch.equal(codes.view(torch.float8_e4m3fn), ref.codes) and torch.equal(scale, ref.scale)
    assert float(rows[:, tq.STAT_AMAX].max()) == 1000.0
