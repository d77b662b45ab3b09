"""The packed frozen base: stored once as packed codes and scales (its storage measured
against bf16), decoded to the quantizer's own values, its GEMMs still under the precision
plan's roles, no weight gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nblab_kernels as nk
from nblab import Recipe
from nblab.finetune import prepare, storage
from nblab.finetune.packed import PackedLinear, _pack_nibbles, _unpack_nibbles
from nblab.models import build_model
from nblab.models.protocol import architecture
from nblab.precision.linear import QuantLinear
from nblab.precision.presets import get_preset


def _linear(out_f=256, in_f=512, bias=False, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias)


def _held_bytes(t: torch.Tensor | None) -> int:
    """The bytes a tensor's storage holds (not its view's numel): what memory it takes."""
    return 0 if t is None else t.untyped_storage().nbytes()


@pytest.mark.parametrize(
    ("fmt", "bytes_per_weight"),
    [
        ("nvfp4", 0.5 + 1 / 16),  # e2m1 two per byte, a ue4m3 byte per 16, + fp32 s_t
        ("mxfp4", 0.5 + 1 / 32),  # e2m1 two per byte, an e8m0 byte per 32
        ("int4_b32", 0.5 + 4 / 32),  # int4 two per byte (nibbles), an fp32 scale per 32
        ("mxfp8", 1 + 1 / 32),
    ],
)
def test_packed_storage_is_the_packed_size_measured_against_bf16(fmt, bytes_per_weight):
    linear = _linear()
    packed = PackedLinear(linear, fmt)
    held = sum(_held_bytes(t) for t in (packed.codes, packed.scale, packed.tensor_scale))
    n = 256 * 512
    extra = 4 if fmt == "nvfp4" else 0  # the fp32 tensor scale
    assert held == packed.stored_bytes == n * bytes_per_weight + extra
    assert not any(isinstance(p, nn.Parameter) and p.numel() == n for p in packed.parameters())
    bf16 = linear.weight.to(torch.bfloat16)
    assert _held_bytes(bf16) == 2 * n
    assert held < _held_bytes(bf16) * (0.6 if fmt.endswith("8") else 0.32)


def test_a_model_reports_what_its_packed_base_saves():
    recipe = Recipe.preset("gpt-debug").with_overrides(
        {"finetune.method": "lora", "finetune.base_format": "nvfp4"}
    )
    torch.manual_seed(0)
    model = build_model(recipe.model, vocab_size=64, max_seq_len=32)
    plan = prepare(model, recipe.finetune, architecture(model))
    s = storage(model)
    # 2 blocks: 4 x 64x64 + 3 x 64x128 weights, every linear of the blocks
    assert s.modules == 14 and s.elements == 2 * (4 * 64 * 64 + 3 * 64 * 128)
    measured = sum(
        m.codes.untyped_storage().nbytes() + m.scale.untyped_storage().nbytes() + 4
        for m in model.modules()
        if isinstance(m, PackedLinear)
    )
    assert s.packed_bytes == measured and s.bf16_bytes == 2 * s.elements
    assert s.saved_bytes == s.bf16_bytes - measured > 0
    assert f"{s.saved_bytes:,} bytes saved" in plan.describe()


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4", "int4_b32", "mxfp8", "bf16"])
def test_the_packed_weight_decodes_to_the_quantizers_own_values(fmt):
    linear = _linear(64, 96)
    packed = PackedLinear(linear, fmt)
    expected = nk.fake_quantize(linear.weight.detach(), fmt, backend="reference")
    assert torch.equal(packed.weight, expected)


def test_int4_nibbles_round_trip():
    codes = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)  # (3, 32)
    assert torch.equal(_unpack_nibbles(_pack_nibbles(codes)), codes)


def test_the_precision_roles_still_quantize_the_gemms_on_the_dequantized_weight():
    linear = _linear(64, 96, bias=True)
    preset = get_preset("mxfp4")
    q = QuantLinear.from_linear(linear, preset.roles)
    packed = PackedLinear(q, "nvfp4")
    assert packed.specs == q.specs
    twin = QuantLinear.from_linear(nn.Linear(96, 64), preset.roles)
    with torch.no_grad():
        twin.weight.copy_(packed.weight)
        twin.bias.copy_(linear.bias)
    x = torch.randn(8, 96)
    assert torch.equal(packed(x), twin(x))
    # every role high: exactly nn.Linear on the dequantized weight
    plain = PackedLinear(linear, "nvfp4")
    assert torch.equal(plain(x), nn.functional.linear(x, plain.weight, linear.bias))


def test_no_weight_gradient_flows_into_the_frozen_base():
    packed = PackedLinear(
        QuantLinear.from_linear(_linear(64, 96), get_preset("mxfp4").roles), "nvfp4"
    )
    x = torch.randn(8, 96, requires_grad=True)
    packed(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert list(packed.parameters()) == []  # no bias here, and no weight Parameter at all


def test_a_frozen_quantlinear_skips_the_wgrad_gemm_and_its_roles_but_not_dgrad():
    roles = get_preset("mxfp4").roles
    trained, frozen = (QuantLinear.from_linear(_linear(64, 96), roles) for _ in range(2))
    frozen.weight.requires_grad_(False)
    xs = [
        torch.randn(32, 96, generator=torch.Generator().manual_seed(1), requires_grad=True)
        for _ in range(2)
    ]
    for q, x in zip((trained, frozen), xs, strict=True):
        q.recording = True
        q(x).square().sum().backward()
    assert torch.equal(xs[0].grad, xs[1].grad)
    assert trained.weight.grad is not None and frozen.weight.grad is None
    assert {r for r, _ in trained.recorded} == set(roles)
    assert {r for r, _ in frozen.recorded} == {"fwd_x", "fwd_w", "dgrad_dy", "dgrad_w"}
