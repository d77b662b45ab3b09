"""Property tests: round-to-nearest error is at most half a grid step at the scale."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nblab_kernels import QuantSpec, quantize
from nblab_kernels.reference import floor_log2, pow2

RNE_PRESETS = [
    "fp8_e4m3_tensor",
    "fp8_e5m2_tensor",
    "fp8_e4m3_row",
    "mxfp8",
    "mxfp8_rceil",
    "mxfp6_e3m2",
    "mxfp6_e2m3",
    "mxfp4",
    "mxfp4_rceil",
    "nvfp4",
    "int8_row",
    "int4_b32",
]

finite32 = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32)
tensors = arrays(np.float32, st.tuples(st.sampled_from([1, 2, 3]), st.just(64)), elements=finite32)


def grid_half_step(scaled: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Half the element grid's spacing in the binade of each scaled value."""
    fmt = spec.element_format
    if fmt.kind == "int":
        return torch.full_like(scaled, 0.5)
    a = scaled.abs()
    e = floor_log2(torch.where(a > 0, a, torch.ones_like(a))).clamp(min=fmt.emin)
    return pow2(e - fmt.mbits) / 2


@settings(max_examples=40, deadline=None)
@given(x=tensors, name=st.sampled_from(RNE_PRESETS))
def test_error_within_half_a_step_at_the_group_scale(x, name):
    spec = QuantSpec.from_name(name)
    xt = torch.from_numpy(x)
    q = quantize(xt, spec)
    dq = q.dequantize()
    # rebuild each element's multiplier from the stored scales
    how, scale = _dequant(q)
    per_element = q.layout.merge(
        torch.ones(q.layout.gm, q.layout.bm, q.layout.gk, q.layout.bk) * scale[:, None, :, None]
    )
    mult = 1 / per_element if how == "mul" else per_element
    scaled = xt * mult
    inside = scaled.abs() <= spec.element_format.max  # saturated elements are clipped
    bound = grid_half_step(scaled, spec) / mult
    err = (xt - dq).abs()
    assert torch.all(err[inside] <= bound[inside] * (1 + 1e-5) + 1e-30)


def _dequant(q):
    from nblab_kernels.reference import _dequant_scale

    how, scale = _dequant_scale(q)
    if q.tensor_scale is not None:
        scale = scale * q.tensor_scale
    return how, scale


@settings(max_examples=25, deadline=None)
@given(x=tensors, name=st.sampled_from(RNE_PRESETS))
def test_quantizing_a_dequantized_tensor_again_changes_nothing_for_fixed_scales(x, name):
    """Idempotence where the scale cannot move: e8m0 floor on the same amax."""
    spec = QuantSpec.from_name(name)
    once = quantize(torch.from_numpy(x), spec).dequantize()
    twice = quantize(once, spec).dequantize()
    if spec.scale == "e8m0" and spec.rule == "floor":
        assert torch.equal(once, twice)
    assert torch.all(torch.isfinite(twice))
