"""SQNR floors per preset on a standard normal tensor, asserted as facts.

Measured on N(0,1) 512x512 (seed 0): mxfp8 30.6 dB, mxfp4 18.8, nvfp4 20.4,
int8_row 43.2 (see `nblab demo`)."""

import pytest
import torch

from nblab_kernels import quant_stats

X = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))


def sqnr(name: str) -> float:
    return quant_stats(X, name).sqnr_db


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("fp8_e4m3_tensor", 30, 33),
        ("fp8_e5m2_tensor", 24, 27),
        ("fp8_e4m3_row", 30, 33),
        ("mxfp8", 29, 32),
        ("mxfp6_e2m3", 29, 32),
        ("mxfp6_e3m2", 24, 27),
        ("mxfp4", 15, 25),
        ("nvfp4", 15, 25),
        ("int8_row", 40, 46),
        ("int4_b32", 17, 23),
    ],
)
def test_sqnr_floor(name, low, high):
    assert low < sqnr(name) < high


def test_orderings_that_motivate_the_formats():
    assert sqnr("nvfp4") > sqnr("mxfp4")  # finer blocks and a finer scale
    assert sqnr("mxfp6_e2m3") > sqnr("mxfp6_e3m2")  # on N(0,1) mantissa bits matter most
    assert sqnr("fp8_e4m3_tensor") > sqnr("fp8_e5m2_tensor")  # mantissa beats range on N(0,1)
    assert sqnr("bf16") > sqnr("fp8_e4m3_tensor") + 20
