"""Stochastic rounding: given bits, seeded Philox, unbiasedness, neighbours only."""

import os

import pytest
import torch

from nblab_kernels import QuantSpec, fake_quantize, philox, quantize
from nblab_kernels.reference import random_bits

SR4 = QuantSpec.from_name("mxfp4").replace(rounding="sr")


def test_given_bits_decide_the_direction():
    # 1.25 sits between 1 and 1.5 on the e2m1 grid (scale 2^0 with amax 6)
    x = torch.full((1, 32), 1.25)
    x[0, 0] = 6.0
    always_up = torch.zeros(1, 32, dtype=torch.int64)  # 0 < floor(0.5 * 2^32)
    never_up = torch.full((1, 32), 2**32 - 1, dtype=torch.int64)
    assert torch.all(fake_quantize(x, SR4, rbits=always_up)[0, 1:] == 1.5)
    assert torch.all(fake_quantize(x, SR4, rbits=never_up)[0, 1:] == 1.0)
    # the threshold is floor(frac * 2^32) = 2^31: bits below go up
    at = torch.full((1, 32), 2**31, dtype=torch.int64)
    below = at - 1
    assert torch.all(fake_quantize(x, SR4, rbits=at)[0, 1:] == 1.0)
    assert torch.all(fake_quantize(x, SR4, rbits=below)[0, 1:] == 1.5)


def test_rbits_accepts_uint32_and_int32_views():
    x = torch.randn(2, 32)
    bits = random_bits((2, 32), seed=3)
    as_int32 = bits.to(torch.int64).to(torch.uint32).view(torch.int32)
    assert torch.equal(fake_quantize(x, SR4, rbits=bits), fake_quantize(x, SR4, rbits=as_int32))


def test_seeded_stream_is_deterministic_and_equals_its_bits():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    a = quantize(x, SR4, seed=7)
    b = quantize(x, SR4, seed=7)
    c = quantize(x, SR4, seed=8)
    assert torch.equal(a.codes, b.codes)
    assert not torch.equal(a.codes, c.codes)
    from_bits = quantize(x, SR4, rbits=random_bits((4, 64), seed=7))
    assert torch.equal(a.codes, from_bits.codes)


def test_without_seed_torch_manual_seed_makes_it_repeatable():
    x = torch.randn(4, 64)
    torch.manual_seed(11)
    a = fake_quantize(x, SR4)
    torch.manual_seed(11)
    assert torch.equal(a, fake_quantize(x, SR4))


@pytest.mark.parametrize(
    ("spec", "value", "lo", "hi"),
    [
        (SR4, 0.3, 0.0, 0.5),  # e2m1 subnormal range, scale 1
        (SR4, 2.6, 2.0, 3.0),
        (SR4, -4.7, -6.0, -4.0),
        (QuantSpec("e4m3", "fp32", rounding="sr"), 0.7, None, None),
        (QuantSpec("int8", "fp32", rounding="sr"), 0.3, None, None),
    ],
)
def test_unbiased_and_only_neighbours(spec, value, lo, hi):
    n = 200_000
    x = torch.full((n // 32, 32), value)
    x[:, 0] = 6.0  # pins each block's scale to 2^0 (amax 6) for the e8m0 spec
    dq = fake_quantize(x, spec, seed=1)[:, 1:].flatten()
    values = torch.unique(dq)
    assert len(values) == 2
    if lo is not None:
        assert values.tolist() == [lo, hi]
    step = float(values[1] - values[0])
    p = (value - float(values[0])) / step
    sigma = step * (p * (1 - p) / dq.numel()) ** 0.5
    assert abs(float(dq.double().mean()) - value) < 5 * sigma  # unbiased in the mean


def test_rbits_and_seed_are_exclusive_and_checked():
    x = torch.randn(1, 32)
    with pytest.raises(ValueError, match="not both"):
        quantize(x, SR4, rbits=torch.zeros(1, 32, dtype=torch.int64), seed=1)
    with pytest.raises(ValueError, match="one uint32 each"):
        quantize(x, SR4, rbits=torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="rounding='rne'"):
        quantize(x, "mxfp4", rbits=torch.zeros(1, 32, dtype=torch.int64))


def test_philox_equals_triton_randint():
    """The reference draws the bits a Triton kernel gets from tl.randint(seed, i)."""
    assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
    import triton
    import triton.language as tl

    @triton.jit
    def draw(out, seed, n: tl.constexpr):
        offsets = tl.arange(0, n)
        tl.store(out + offsets, tl.randint(seed, offsets).to(tl.int64) & 0xFFFFFFFF)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.zeros(128, dtype=torch.int64, device=device)
    for seed in (0, 1, 2**31 + 5, 2**40 + 3):
        draw[(1,)](out, seed, n=128)
        assert torch.equal(out.cpu(), philox.randint(seed, torch.arange(128)))
