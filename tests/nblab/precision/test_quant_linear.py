"""QuantLinear: forward and the four backward operands quantized exactly as planned."""

import pytest
import torch
from torch import nn

import nblab_kernels as nk
from nblab.precision.linear import QuantLinear, on_stored_layout
from nblab.precision.plan import apply_precision, quant_linears
from nblab.precision.presets import ROLES, get_preset
from nblab_kernels import QuantSpec

MX4 = QuantSpec.from_name("mxfp4")
MX8 = QuantSpec.from_name("mxfp8")
# a different spec per role, so a swapped role would show
DISTINCT = {
    "fwd_x": MX4,
    "fwd_w": MX8,
    "dgrad_dy": QuantSpec.from_name("fp8_e5m2_tensor"),
    "dgrad_w": QuantSpec.from_name("nvfp4"),
    "wgrad_x": QuantSpec.from_name("int8_row"),
    "wgrad_dy": MX4.replace(element="e3m2"),
}


def fq(t, spec, role):
    return nk.fake_quantize(t, on_stored_layout(spec, role))


def make(specs, bias=True):
    torch.manual_seed(0)
    lin = nn.Linear(64, 32, bias=bias)
    return lin, QuantLinear.from_linear(lin, specs)


def test_forward_is_linear_of_fake_quantized_operands():
    lin, q = make(DISTINCT)
    x = torch.randn(4, 16, 64)
    expected = torch.nn.functional.linear(
        fq(x.reshape(-1, 64), MX4, "fwd_x"), fq(lin.weight, MX8, "fwd_w"), lin.bias
    ).reshape(4, 16, 32)
    assert torch.equal(q(x), expected)


def test_backward_quantizes_each_role_as_planned():
    lin, q = make(DISTINCT)
    x = torch.randn(64, 64, requires_grad=True)
    dy = torch.randn(64, 32)
    q(x).backward(dy)
    w = lin.weight.detach()
    # hand-written: dx = Q(dy) Q(W); dW = Q(dy)^T Q(x), each with its own role's spec
    dx = fq(dy, DISTINCT["dgrad_dy"], "dgrad_dy") @ fq(w, DISTINCT["dgrad_w"], "dgrad_w")
    dw = fq(dy, DISTINCT["wgrad_dy"], "wgrad_dy").T @ fq(x.detach(), DISTINCT["wgrad_x"], "wgrad_x")
    assert torch.equal(x.grad, dx)
    assert torch.equal(q.weight.grad, dw)
    assert torch.equal(q.bias.grad, dy.sum(0))


def test_stored_layout_blocks_run_along_the_reduction_dim():
    assert on_stored_layout(MX4, "fwd_x").dim == -1
    assert on_stored_layout(MX4, "dgrad_w").dim == 0  # dx = dy W reduces over W's rows
    assert on_stored_layout(MX4, "wgrad_x").dim == 0  # dW = dy^T x reduces over tokens
    row = QuantSpec.from_name("int8_row")
    assert on_stored_layout(row, "wgrad_dy").granularity == "col"
    assert on_stored_layout(row, "fwd_w").granularity == "row"
    # a dim-0 block's scales are the transposed layout's: the block runs over tokens
    x = torch.randn(64, 32)
    a = nk.quantize(x, on_stored_layout(MX8, "wgrad_x"))
    b = nk.quantize(x.T.contiguous(), MX8)
    assert torch.equal(a.scale, b.scale.T)


def test_high_precision_roles_pass_through_and_bf16_is_plain_linear():
    lin, q = make({r: None for r in ROLES})
    x = torch.randn(8, 64, requires_grad=True)
    assert torch.equal(q(x), lin(x))
    model = nn.Sequential(nn.Linear(64, 64))
    report = apply_precision(model, "bf16")
    assert not quant_linears(model) and report.quantized == []


def test_parameters_are_shared_and_state_dict_keys_unchanged():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    keys = list(model.state_dict())
    weight = model[0].weight
    apply_precision(model, get_preset("mxfp8").__class__("t", dict.fromkeys(ROLES, MX8), ()))
    assert isinstance(model[0], QuantLinear) and model[0].weight is weight
    assert list(model.state_dict()) == keys


class Tiny(nn.Module):
    def __init__(self, n=4, d=64):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"up": nn.Linear(d, d)}) for _ in range(n))
        self.odd = nn.Linear(d, 40)  # 40 is not a multiple of 32
        self.lm_head = nn.Linear(d, d)


def test_plan_report_says_why_modules_stay_high_precision():
    model = Tiny()
    report = apply_precision(model, "nvfp4")
    skipped = report.skipped
    assert "keep_high_precision 'lm_head'" in skipped["lm_head"]
    assert "block 3" in skipped["layers.3.up"]  # last:15% of 4 blocks keeps one
    assert "out_features=40 is not a multiple of block 16" in skipped["odd"]
    assert report.quantized == ["layers.0.up", "layers.1.up", "layers.2.up"]
    assert isinstance(model.layers[0]["up"], QuantLinear)
    assert type(model.lm_head) is nn.Linear
    assert "3 of 6 Linear modules quantized" in str(report)


def test_recording_collects_stats_per_role():
    _, q = make(DISTINCT)
    q.recording = True
    x = torch.randn(32, 64, requires_grad=True)
    q(x).sum().backward()
    roles = [r for r, _ in q.recorded]
    assert sorted(roles) == sorted(ROLES)
    assert all(s.sqnr_db > 5 for _, s in q.recorded)


def test_unknown_role_is_rejected():
    with pytest.raises(ValueError, match="unknown roles.*fwd_q"):
        QuantLinear(8, 8, specs={"fwd_q": MX4})


def test_equal_rne_specs_share_one_quantization(monkeypatch):
    """fp8 tensorwise: x (fwd, wgrad) and dy (dgrad, wgrad) are each quantized once."""
    calls = []
    real = nk.fake_quantize

    def counting(t, spec, **kw):
        calls.append(spec)
        return real(t, spec, **kw)

    monkeypatch.setattr(nk, "fake_quantize", counting)
    preset = get_preset("fp8_tensorwise")
    _, q = make(preset.roles)
    x = torch.randn(32, 64, requires_grad=True)
    q(x).sum().backward()
    assert len(calls) == 3  # x, W and dy, each once
    sr = dict.fromkeys(ROLES, MX4.replace(rounding="sr"))
    calls.clear()
    _, q = make(sr)
    q(x).sum().backward()
    assert len(calls) == 6  # stochastic rounding never shares a draw


def test_recording_keeps_the_first_record_of_each_role_until_cleared():
    _, q = make(DISTINCT)
    q.recording = True
    first = torch.randn(32, 64, requires_grad=True)
    q(first).sum().backward()
    sqnr = {r: s.sqnr_db for r, s in q.recorded}
    q(10 * torch.rand(32, 64, requires_grad=True)).sum().backward()  # a second micro-batch
    assert sorted(r for r, _ in q.recorded) == sorted(ROLES)  # still one per role
    assert {r: s.sqnr_db for r, s in q.recorded} == sqnr  # the first micro-batch's
    q.recorded.clear()
    q(first).sum().backward()
    assert len(q.recorded) == len(ROLES)  # a new window records again
