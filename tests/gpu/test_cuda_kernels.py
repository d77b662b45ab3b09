"""The compiled Triton kernels on a GPU == the reference, bit for bit, on GPU-sized
shapes (the interpreter's suite in tests/kernels/triton uses small ones). The reference
runs on the GPU too (the CPU would take minutes at these sizes); that it gives the
CPU's bits there is checked first, on smaller shapes.

Codes compared as bytes, scales and tensor scales as bit patterns, fake-quantized
values as bit patterns with NaN positions equal. The matrix is kept to what compiles
in about two minutes: every preset x (fp32, bf16) with rne, every preset with seeded
stochastic rounding in bf16, the Hadamard specs of the NVFP4 recipe, special values.
"""

from __future__ import annotations

import pytest
import torch

from nblab_kernels import QUANT_PRESETS, QuantSpec, reference
from nblab_kernels.triton import quantize as tq

PRESETS = [name for name, spec in QUANT_PRESETS.items() if not spec.is_cast]
SHAPES = [(4096, 4096), (1000, 1536)]  # the second: rows no tile divides


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous().cpu()
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _same_floats(ref: torch.Tensor, got: torch.Tensor, what: str) -> None:
    assert ref.dtype == got.dtype and ref.shape == got.shape, (what, ref.dtype, got.dtype)
    ref, got = ref.cpu(), got.cpu()
    nan_r, nan_g = torch.isnan(ref), torch.isnan(got)
    assert torch.equal(nan_r, nan_g), f"{what}: NaN positions differ"
    diff = (_bits(ref.masked_fill(nan_r, 0)) != _bits(got.masked_fill(nan_g, 0))).nonzero()
    assert diff.numel() == 0, f"{what}: {len(diff)} differ, first at {diff[0].tolist()}"


def _values(shape, dtype, seed=0) -> torch.Tensor:
    """Normal values over 12 binades, so that scales and subnormal codes both occur."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * torch.exp2(torch.randint(-6, 6, shape, generator=gen))
    return x.to(dtype)


def _same_qtensor(ref, got) -> None:
    assert torch.equal(_bits(ref.codes), _bits(got.codes)), "codes differ"
    assert torch.equal(_bits(ref.scale), _bits(got.scale)), "scales differ"
    if ref.tensor_scale is not None:
        assert torch.equal(_bits(ref.tensor_scale), _bits(got.tensor_scale)), "tensor scale"


def check(x_cpu: torch.Tensor, spec: QuantSpec, seed=None) -> None:
    x = x_cpu.cuda()
    _same_qtensor(reference.quantize(x, spec, seed=seed), tq.quantize(x, spec, seed=seed))
    ref = reference.fake_quantize(x, spec, seed=seed)
    _same_floats(ref, tq.fake_quantize(x, spec, seed=seed), "fake")


@pytest.mark.parametrize("rounding", ["rne", "sr"])
@pytest.mark.parametrize("name", PRESETS)
def test_the_reference_gives_the_same_bits_on_the_gpu(name, rounding):
    spec = QUANT_PRESETS[name].replace(rounding=rounding)
    x = _values((256, 512), torch.bfloat16)
    seed = 5 if rounding == "sr" else None
    _same_qtensor(
        reference.quantize(x, spec, seed=seed), reference.quantize(x.cuda(), spec, seed=seed)
    )
    cpu = reference.fake_quantize(x, spec, seed=seed)
    _same_floats(cpu, reference.fake_quantize(x.cuda(), spec, seed=seed), "fake")


def _shape_ok(spec: QuantSpec, shape) -> bool:
    try:
        reference.GroupLayout.of(shape, shape[0], shape[1], spec)
    except ValueError:
        return False
    return not (spec.element_format.packed and shape[1] % 2)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", PRESETS)
def test_preset_rne_matches_the_reference(name, dtype, shape):
    spec = QUANT_PRESETS[name]
    if not _shape_ok(spec, shape):
        pytest.skip(f"{shape} is not a whole number of {name}'s groups")
    check(_values(shape, dtype), spec)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_seeded_sr_matches_the_reference(name):
    spec = QUANT_PRESETS[name].replace(rounding="sr")
    check(_values((2048, 2048), torch.bfloat16), spec, seed=1234)


NVFP4 = QUANT_PRESETS["nvfp4"]


@pytest.mark.parametrize(
    "spec",
    [
        NVFP4.replace(hadamard=16),  # the recipe's wgrad x
        NVFP4.replace(hadamard=16, dim=0),  # as the QuantLinear stores wgrad operands
        NVFP4.replace(hadamard=16, rounding="sr"),  # wgrad dy
        QUANT_PRESETS["mxfp4"].replace(hadamard=32),  # quartet-like
    ],
    ids=["h16", "h16-dim0", "h16-sr", "mxfp4-h32"],
)
def test_hadamard_specs_match_the_reference(spec):
    check(_values((2048, 2048), torch.bfloat16), spec, seed=7 if spec.rounding == "sr" else None)


@pytest.mark.parametrize("name", ["mxfp8", "mxfp4", "nvfp4", "fp8_e4m3_row", "fp8_e5m2_tensor"])
def test_special_values_match_the_reference(name):
    """NaN and Inf poison their group, zeros of both signs, and values that round to
    zero from below (their sign survives: -0.0)."""
    x = _values((1024, 1024), torch.float32)
    x[3, 5], x[40, 70], x[41, 71] = torch.nan, torch.inf, -torch.inf
    x[100:116, :64] = 0.0
    x[200, :] = -0.0
    x[300, :] = -1e-30  # negative, far below every grid: rounds to -0.0
    check(x, QUANT_PRESETS[name])
