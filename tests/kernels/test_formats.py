"""Element and scale formats: constants and value tables as NUMERICS.md states."""

import math

import pytest
import torch

from nblab_kernels import QUANT_PRESETS, QuantSpec, element_format, scale_format
from nblab_kernels.reference import decode, encode, round_to_grid

# name: (bits, bias, max, min normal, min subnormal), from NUMERICS.md's table
TABLE = {
    "e4m3": (8, 7, 448.0, 2.0**-6, 2.0**-9),
    "e5m2": (8, 15, 57344.0, 2.0**-14, 2.0**-16),
    "e3m2": (6, 3, 28.0, 2.0**-2, 2.0**-4),
    "e2m3": (6, 1, 7.5, 1.0, 2.0**-3),
    "e2m1": (4, 1, 6.0, 1.0, 0.5),
}
FLOATS = list(TABLE)


@pytest.mark.parametrize("name", FLOATS)
def test_constants_match_the_contract(name):
    fmt = element_format(name)
    assert (fmt.bits, fmt.bias, fmt.max, fmt.min_normal, fmt.min_subnormal) == TABLE[name]


@pytest.mark.parametrize("name", FLOATS)
def test_value_table_is_monotone_and_spans_the_range(name):
    values = element_format(name).values
    assert values[0] == 0
    assert torch.all(values[1:] > values[:-1])
    assert values[1] == TABLE[name][4]  # first nonzero is the min subnormal
    assert values[-1] == TABLE[name][2]


def test_fp4_values_are_the_ocp_set():
    assert element_format("e2m1").values.tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_fp8_tables_equal_torch_float8_decoding(name):
    """torch's float8 dtypes are an independent oracle for the fp8 grids."""
    fmt = element_format(name)
    all_codes = torch.arange(128, dtype=torch.uint8).view(fmt.torch_dtype).float()
    finite = all_codes[torch.isfinite(all_codes)]
    assert torch.equal(finite.double(), fmt.values)


@pytest.mark.parametrize("name", FLOATS + ["int8", "int4", "e3m4", "e1m2"])
def test_every_value_round_trips_and_every_code_decodes_back(name):
    fmt = element_format(name)
    v = fmt.values.float()
    signed = torch.cat([v, -v])
    assert torch.equal(round_to_grid(signed, fmt), signed)
    assert torch.equal(round_to_grid(signed, fmt, "sr", torch.zeros_like(signed)), signed)
    assert torch.equal(decode(encode(signed, fmt), fmt), signed)


@pytest.mark.parametrize("name", FLOATS + ["int8", "e3m4"])
def test_midpoints_round_to_the_even_code(name):
    fmt = element_format(name)
    v = fmt.values.float()
    mid = (v[:-1] + v[1:]) / 2  # code i and i + 1: the even one has mantissa lsb 0
    lo_is_even = torch.arange(len(mid)) % 2 == 0
    expected = torch.where(lo_is_even, v[:-1], v[1:])
    assert torch.equal(round_to_grid(mid, fmt), expected)
    assert torch.equal(round_to_grid(-mid, fmt), -expected)


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_rne_agrees_with_torch_float8_cast(name):
    fmt = element_format(name)
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(1)) * fmt.max / 8
    ours = round_to_grid(x, fmt)
    assert torch.equal(ours, x.to(fmt.torch_dtype).float())


def test_saturation_never_produces_inf_or_the_most_negative_int():
    big = torch.tensor([1e30, -1e30, 500.0, -500.0])
    assert round_to_grid(big, element_format("e4m3")).tolist() == [448, -448, 448, -448]
    assert round_to_grid(big, element_format("int8")).tolist() == [127, -127, 127, -127]
    assert round_to_grid(big, element_format("int4")).tolist() == [7, -7, 7, -7]


def test_generic_exmy_follows_the_bias_rule():
    fmt = element_format("e3m4")
    assert fmt.bias == 3
    assert fmt.max == (1 + 15 / 16) * 2**4  # all codes finite
    assert fmt.min_subnormal == 2.0 ** (1 - 3 - 4)
    assert len(fmt.values) == 2**7


def test_unknown_element_names_the_accepted_ones():
    with pytest.raises(ValueError, match=r"element='e9m9'.*e4m3.*eXmY"):
        element_format("e9m9")


def test_scale_formats():
    ue5m3 = scale_format("ue5m3").grid
    assert ue5m3.max == 61440.0
    assert ue5m3.min_subnormal == 2.0**-17
    assert scale_format("ue4m3").grid.max == 448.0
    assert scale_format("e8m0").max == 2.0**127
    with pytest.raises(ValueError, match=r"scale='e8m1'.*accepted.*e8m0"):
        scale_format("e8m1")


def test_e8m0_emax_per_element():
    emax = {n: element_format(n).emax for n in FLOATS}
    assert emax == {"e4m3": 8, "e5m2": 15, "e3m2": 4, "e2m3": 2, "e2m1": 2}


PRESET_NAMES = [
    "fp8_e4m3_tensor",
    "fp8_e5m2_tensor",
    "fp8_e4m3_row",
    "fp8_e4m3_b128",
    "fp8_e4m3_t128",
    "mxfp8",
    "mxfp8_rceil",
    "mxfp6_e3m2",
    "mxfp6_e2m3",
    "mxfp4",
    "mxfp4_rceil",
    "nvfp4",
    "nvfp4_tile16",
    "int8_row",
    "int4_b32",
]


def test_every_named_preset_exists():
    assert set(PRESET_NAMES) <= set(QUANT_PRESETS)
    mx = QuantSpec.from_name("mxfp4")
    assert (mx.element, mx.scale, mx.granularity, mx.block, mx.rule) == (
        "e2m1",
        "e8m0",
        "block",
        32,
        "floor",
    )
    nv = QuantSpec.from_name("nvfp4")
    assert (nv.element, nv.scale, nv.block, nv.rule) == ("e2m1", "ue4m3", 16, "nvfp4")
    assert QuantSpec.from_name("fp8_e4m3_t128").granularity == "tile"


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match=r"'mxfp3' is unknown; accepted: .*mxfp4"):
        QuantSpec.from_name("mxfp3")


BAD_SPECS = [
    (dict(element="e2m1", scale="e8m0", granularity="block"), "block=None"),
    (dict(element="e2m1", scale="e8m0", granularity="block", block=7), r"8\.\.128"),
    (dict(element="e2m1", scale="e8m0", granularity="tensor", block=32), "block=32"),
    (dict(element="e4m3", scale="fp32", rule="floor"), r"rule='floor'.*'amax'"),
    (dict(element="e2m1", scale="ue4m3", rule="nvfp4"), r"granularity='tensor'"),
    (dict(element="bf16", scale="e8m0"), r"scale='e8m0'.*'none'"),
    (dict(element="e4m3", scale="none"), r"scale='none'.*casts"),
    (dict(element="e4m3", hadamard=24), r"hadamard=24.*16, 32, 64, 128"),
    (dict(element="e4m3", dim=1), r"dim=1.*-1, 0"),
    (dict(element="e4m3", padding="zero"), r"padding='zero'.*'error', 'pad'"),
    (dict(element="e4m3", rounding="stochastic"), r"rounding='stochastic'.*'rne', 'sr'"),
    (dict(element="e4m3", granularity="blocks"), r"granularity='blocks'.*'tile'"),
    (dict(element="e9m2"), r"element='e9m2'"),
    (dict(element="e2m1", scale="e8m0", granularity="block", block=16, hadamard=48), "hadamard"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_SPECS)
def test_impossible_specs_name_the_field_and_the_accepted_values(fields, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(**fields)


def test_defaults_fill_in_scale_and_rule():
    assert QuantSpec("bf16") == QuantSpec("bf16", "none", rule="none")
    assert QuantSpec("e4m3").rule == "amax"
    assert QuantSpec("e2m1", "e8m0", "block", 32).rule == "floor"
    assert QuantSpec.from_name("mxfp4").replace(rounding="sr").rounding == "sr"
    assert math.isclose(element_format("int8").max, 127)


@pytest.mark.parametrize("name", FLOATS + ["e3m4", "e5m7", "e1m2"])
def test_rne_fast_path_equals_the_general_path(name):
    """round_to_grid's one-add RNE (saturating) against its per-binade division path."""
    fmt = element_format(name)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(50_000, generator=g) * torch.exp2(
        torch.randint(-30, 20, (50_000,), generator=g).float()
    )
    clamped = torch.copysign(v.abs().clamp(max=fmt.max), v)
    fast = round_to_grid(v, fmt)
    general = round_to_grid(clamped, fmt, saturate=False)
    assert torch.equal(fast.view(torch.int32), general.view(torch.int32))
