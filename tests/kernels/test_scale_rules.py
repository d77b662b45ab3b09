"""Scale rules, worked by hand, and the special values of NUMERICS.md."""

import math

import numpy as np
import pytest
import torch

from nblab_kernels import QuantSpec, fake_quantize, quantize

MXFP4 = QuantSpec.from_name("mxfp4")
MXFP8 = QuantSpec.from_name("mxfp8")


def one_block(amax: float, block: int = 32) -> torch.Tensor:
    """A block whose largest magnitude is amax (the rest small and harmless)."""
    x = torch.full((1, block), 0.5)
    x[0, 3] = amax
    return x


def e8m0_exponent(x: torch.Tensor, spec: QuantSpec) -> int:
    return int(quantize(x, spec).scale.item()) - 127


# (element, rule, amax, expected scale exponent), each worked out in the comment
E8M0_CASES = [
    ("e2m1", "floor", 6.0, 0),  # floor(log2 6) = 2, minus emax 2
    ("e2m1", "floor", 4.0, 0),  # a power of two: log2 = 2 exactly
    ("e2m1", "floor", 7.0, 0),  # 7 / 1 saturates to 6: the OCP rule allows it
    ("e2m1", "floor", 8.0, 1),  # log2 8 = 3
    ("e2m1", "ceil", 7.0, 1),  # not a power of two: floor + 1
    ("e2m1", "ceil", 4.0, 0),  # a power of two: no + 1
    ("e2m1", "rceil", 7.0, 1),  # smallest k with 6 * 2^k >= 7
    ("e2m1", "rceil", 6.0, 0),  # 6 * 2^0 >= 6
    ("e2m1", "rceil", 3.0, -1),  # 6 * 2^-1 = 3 >= 3
    ("e2m1", "rceil", 6.000001, 1),
    ("e2m1", "even", 7.0, 1),  # 7 = 1.75 * 4 rounds (1 mantissa bit) to 2 * 4 = 8
    ("e2m1", "even", 5.0, 0),  # 1.25 * 4: a tie, to the even 1.0 * 4
    ("e2m1", "even", 5.5, 0),  # 1.375 * 4 -> 1.5 * 4 = 6
    ("e4m3", "floor", 448.0, 0),  # floor(log2 448) = 8 = emax
    ("e4m3", "floor", 500.0, 0),  # 500 saturates to 448
    ("e4m3", "floor", 1.0, -8),
    ("e4m3", "rceil", 500.0, 1),
    ("e4m3", "even", 480.0, 0),  # 1.875 * 256 fits 3 mantissa bits: no change
    ("e4m3", "even", 496.0, 1),  # 1.9375 * 256: a tie, to the even 2 * 256
    ("e5m2", "floor", 1.0, -15),
]


@pytest.mark.parametrize(("element", "rule", "amax", "expected"), E8M0_CASES)
def test_e8m0_rules(element, rule, amax, expected):
    spec = QuantSpec(element, "e8m0", "block", 32, rule=rule)
    assert e8m0_exponent(one_block(amax), spec) == expected


def test_floor_saturates_block_maximum_and_rceil_does_not():
    x = one_block(7.0)
    assert fake_quantize(x, MXFP4)[0, 3] == 6.0  # clipped at max * 2^0
    assert fake_quantize(x, QuantSpec.from_name("mxfp4_rceil"))[0, 3] == 8.0  # 2^1 * 4
    # ceil: 7 / 2 = 3.5 is a tie between 3 (code 5) and 4 (code 6): the even code wins
    ceil = QuantSpec("e2m1", "e8m0", "block", 32, rule="ceil")
    assert fake_quantize(x, ceil)[0, 3] == 8.0


def test_scale_exponent_is_clamped_to_e8m0_range():
    tiny = torch.full((1, 32), 1e-40)  # an fp32 subnormal: floor(log2) = -133
    assert quantize(tiny, MXFP8).scale.item() == 0  # 2^-127, the lowest byte
    dq = fake_quantize(tiny, MXFP8)
    assert torch.all(torch.isfinite(dq))
    assert torch.allclose(dq, tiny, rtol=0.07)  # 2^-127 * e4m3 still resolves it


def test_float_scale_with_denormal_amax_stays_finite():
    tiny = torch.tensor([[1e-40, -5e-41, 0.0, 2e-41]])
    dq = fake_quantize(tiny, QuantSpec.from_name("fp8_e4m3_tensor"))
    assert torch.all(torch.isfinite(dq))
    assert dq[0, 2] == 0
    # inv = 448 / 1e-40 overflows fp32, so it is held at fp32's max: the error is then
    # half an e4m3 step at that scale: 2^-4 relative, or 2^-10 where e4m3 is subnormal
    bound = tiny.abs() * 2.0**-4 + 2.0**-10 / torch.finfo(torch.float32).max
    assert torch.all((dq - tiny).abs() <= bound)
    assert torch.equal(torch.sign(dq), torch.sign(tiny))


def test_fp32_and_pow2_scales():
    x = torch.tensor([[3.0, -1.5, 0.25, 0.0]])
    q = quantize(x, QuantSpec("e4m3", "fp32"))
    assert q.scale.item() == float(np.float32(448) / np.float32(3.0))  # inv = max / amax
    assert fake_quantize(x, QuantSpec("e4m3", "fp32"))[0, 0] == 3.0  # amax maps onto max
    # pow2: the smallest 2^k with 448 * 2^k >= 3 is 2^-7, so inv = 2^7
    assert quantize(x, QuantSpec("e4m3", "pow2")).scale.item() == 128.0
    assert quantize(torch.tensor([[448.0]]), QuantSpec("e4m3", "pow2")).scale.item() == 1.0
    assert quantize(torch.tensor([[449.0]]), QuantSpec("e4m3", "pow2")).scale.item() == 0.5


def test_amax_zero():
    zeros = torch.zeros(4, 64)
    for name in ("mxfp4", "nvfp4", "fp8_e4m3_tensor", "fp8_e4m3_row", "int8_row"):
        q = quantize(zeros, name)
        dq = q.dequantize()
        assert torch.equal(dq, zeros), name
        assert q.tensor_scale is None or q.tensor_scale.item() == 1.0  # amax 0 -> s_t = 1
    assert quantize(zeros, "fp8_e4m3_tensor").scale.item() == 1.0  # inv = 1


def test_zero_block_among_others_stays_zero():
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    x[1, 32:] = 0
    for name in ("mxfp4", "mxfp8", "nvfp4", "int4_b32"):
        dq = fake_quantize(x, name)
        assert torch.equal(dq[1, 32:], torch.zeros(32)), name


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_poisons_only_its_block(bad):
    x = torch.randn(2, 96, generator=torch.Generator().manual_seed(0))
    x[0, 40] = bad  # block (0, 1) of three per row
    q = quantize(x, MXFP8)
    assert q.scale[0, 1].item() == 0xFF
    dq = q.dequantize()
    assert torch.all(torch.isnan(dq[0, 32:64]))
    clean = x.clone()
    clean[0, 32:64] = 0
    expected = fake_quantize(clean, MXFP8)
    untouched = torch.ones_like(x, dtype=torch.bool)
    untouched[0, 32:64] = False
    assert torch.equal(dq[untouched], expected[untouched])


@pytest.mark.parametrize("name", ["fp8_e4m3_tensor", "nvfp4"])
def test_a_tensor_wide_scale_poisons_everything(name):
    x = torch.randn(2, 32)
    x[1, 5] = math.nan
    assert torch.all(torch.isnan(fake_quantize(x, name)))


def test_row_scale_poisons_only_its_row():
    x = torch.randn(3, 16)
    x[1, 2] = math.inf
    dq = fake_quantize(x, "fp8_e4m3_row")
    assert torch.all(torch.isnan(dq[1]))
    assert torch.all(torch.isfinite(dq[[0, 2]]))


# ---------------------------------------------------------------------------
# NVFP4: an independent scalar implementation of the formula, in numpy float32
# ---------------------------------------------------------------------------
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)


def rne_e2m1(v: np.float32) -> np.float32:
    a = min(abs(v), np.float32(6))
    i = int(np.searchsorted(E2M1, a))  # first grid value >= a
    if i < len(E2M1) and E2M1[i] == a:
        q = E2M1[i]
    else:
        lo, hi = E2M1[i - 1], E2M1[i]
        if a - lo != hi - a:
            q = lo if a - lo < hi - a else hi
        else:
            q = lo if (i - 1) % 2 == 0 else hi  # tie: the even code
    return np.float32(math.copysign(q, v))


def rne_e4m3(v: np.float32) -> np.float32:
    return np.float32(torch.tensor(float(v)).to(torch.float8_e4m3fn).float().item())


def nvfp4_by_hand(x: np.ndarray) -> np.ndarray:
    f = np.float32
    amax_t = f(np.abs(x).max())
    s_t = f(amax_t / f(448 * 6)) if amax_t > 0 else f(1)
    out = np.empty_like(x)
    for r in range(x.shape[0]):
        for b in range(0, x.shape[1], 16):
            blk = x[r, b : b + 16]
            amax_b = f(np.abs(blk).max())
            s_b = rne_e4m3(f(min(max(f(f(amax_b / f(6)) / s_t), f(2.0**-6)), f(448))))
            mult = f(f(f(1) / s_t) / s_b)
            for j, v in enumerate(blk):
                code_value = rne_e2m1(f(max(min(f(v * mult), f(6)), f(-6))))
                out[r, b + j] = f(f(code_value * s_b) * s_t)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nvfp4_matches_the_formula_bit_for_bit(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 64, generator=g) * torch.rand(3, 64, generator=g) * 10
    x[2, 16:32] *= 1e-3  # a block far below the tensor amax: exercises the clamp
    ours = fake_quantize(x, "nvfp4").numpy()
    assert np.array_equal(ours.view(np.uint32), nvfp4_by_hand(x.numpy()).view(np.uint32))


def test_nvfp4_worked_example():
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 12.0, -5.0  # block 0: amax 12
    x[0, 16], x[0, 17] = 3.0, 1.0  # block 1: amax 3
    q = quantize(x, "nvfp4")
    s_t = np.float32(12) / np.float32(2688)
    assert q.tensor_scale.item() == s_t
    # (12 / 6) / s_t = 448 exactly in fp32; (3 / 6) / s_t = 112, on the e4m3 grid
    assert q.scale.float().flatten().tolist() == [448.0, 112.0]
    dq = q.dequantize()
    assert dq[0, 0] == pytest.approx(12.0, rel=1e-6)
    assert dq[0, 1] == pytest.approx(-4.0, rel=1e-6)  # -5 / 2 = -2.5: a tie, to -2 (even)
    assert dq[0, 16] == pytest.approx(3.0, rel=1e-6)
