"""precision.gemm: native FP8 GEMMs (torch._scaled_mm, which torch 2.13 runs on the CPU)
against the emulated ones, and what falls back, and why, in the plan.

Tolerance of one GEMM: nblab_kernels.matmul.gemm_tolerance(K, dtype) times |A| @ |B|^T
elementwise (A, B the dequantized operands): two fp32 dot products of length K differ by
at most about 2 K 2^-24 of the sum of |products|, plus the roundings of the operands and
of the result to the training dtype (its docstring derives it).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nblab_kernels as nk
from nblab import Recipe, RecipeError
from nblab.precision import gemm as gemm_mod
from nblab.precision.linear import QuantLinear
from nblab.precision.plan import apply_precision
from nblab.precision.presets import get_preset
from nblab_kernels.matmul import Probe, gemm_tolerance

T, IN, OUT = 48, 96, 80


def _pair(preset: str, bias: bool, roles=None):
    """An emulated and a native QuantLinear with the same parameters."""
    specs = dict(get_preset(preset).roles, **(roles or {}))
    torch.manual_seed(0)
    emulated = QuantLinear(IN, OUT, bias, specs=specs)
    native = QuantLinear(IN, OUT, bias, specs=specs, native_gemms=("forward", "dgrad", "wgrad"))
    native.load_state_dict(emulated.state_dict())
    return emulated, native


def _run(layer: QuantLinear, x: torch.Tensor, dy: torch.Tensor, dtype: torch.dtype):
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    torch.manual_seed(1)  # stochastic rounding draws from the global generator
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = layer(x)
    y.backward(dy.to(y.dtype))
    return y.detach(), x.grad, layer.weight.grad


def _abs_products(layer: QuantLinear, x, dy, dtype, slack: float = 1.0):
    """|A| @ |B|^T of each GEMM, from the operands dequantized as the layer quantizes
    them (times `slack`, for stochastic rounding's other draws)."""
    s = layer.stored_specs
    x, w, dy = x.to(dtype), layer.weight.detach().to(dtype), dy.to(dtype)

    def dq(t, role):
        return nk.quantize(t, s[role]).dequantize(torch.float32).abs() * slack

    return {
        "forward": dq(x, "fwd_x") @ dq(w, "fwd_w").t(),
        "dgrad": dq(dy, "dgrad_dy") @ dq(w, "dgrad_w"),
        "wgrad": dq(dy, "wgrad_dy").t() @ dq(x, "wgrad_x"),
    }


CASES = [
    ("fp8_tensorwise", None),  # e4m3 x e4m3 forward, e5m2 x e4m3 dgrad and wgrad
    ("fp8_rowwise", None),
    ("fp8_rowwise", {"dgrad_dy": nk.QUANT_PRESETS["fp8_e4m3_row"].replace(rounding="sr")}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("preset", "roles"), CASES, ids=["tensorwise", "rowwise", "rowwise-sr"])
def test_each_gemm_of_a_native_fp8_quantlinear_matches_the_emulated_one(preset, roles, bias, dtype):
    emulated, native = _pair(preset, bias, roles)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(T, IN, generator=gen) * torch.exp2(torch.randint(-3, 4, (T, 1), generator=gen))
    dy = torch.randn(T, OUT, generator=gen)
    got_e, got_n = _run(emulated, x, dy, dtype), _run(native, x, dy, dtype)
    # sr draws the same bits on both paths; the bound's operands are the rne ones, 1/8
    # larger to cover any other draw (e4m3's grid spacing is 2^-3 of a value)
    slack = 1.125 if roles else 1.0
    bounds = _abs_products(emulated, x, dy, dtype, slack)
    ks = {"forward": IN, "dgrad": OUT, "wgrad": T}
    for (gemm, bound), e, n in zip(bounds.items(), got_e, got_n, strict=True):
        assert e.dtype == n.dtype and e.shape == n.shape, gemm
        err = (n.float() - e.float()).abs()
        tol = gemm_tolerance(ks[gemm], dtype)
        assert torch.all(err <= tol * bound), (gemm, float((err / bound).max()), tol)


def test_native_gemms_quantize_and_call_scaled_mm(monkeypatch):
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    emulated, native = _pair("fp8_rowwise", True)
    x, dy = torch.randn(T, IN), torch.randn(T, OUT)
    _run(emulated, x, dy, torch.float32)
    assert not calls
    _run(native, x, dy, torch.float32)
    assert len(calls) == 3  # forward, dgrad, wgrad


def _tiny_recipe(gemm: str, steps: int = 30) -> Recipe:
    return Recipe.preset("gpt-tiny").with_overrides(
        [
            "precision.preset=fp8_tensorwise",
            f"precision.gemm={gemm}",
            f"train.steps={steps}",
            "eval.interval=0",
            "metrics.stats_interval=0",
            "metrics.histogram_interval=0",
        ]
    )


# gpt-tiny, fp8_tensorwise, fp32 on the CPU: the first steps, and every step
EARLY_STEPS, EARLY, ALL = 10, 1e-3, 5e-2


def test_gpt_tiny_with_native_gemms_tracks_the_emulated_loss():
    """30 steps of gpt-tiny in fp8_tensorwise (fp32 scales, e5m2 gradients), fp32 on the
    CPU, the same batches. Every GEMM agrees within its accumulation tolerance (about
    2e-3 of it here, test above), but a value that moves by one fp32 ulp across an e4m3
    rounding boundary moves its code by 2^-3, and each flipped code moves the loss by
    about 1e-4. So the first EARLY_STEPS stay within EARLY = 1e-3 (measured 3e-4: the
    same model, a handful of flips); after that the two runs' weights differ like those
    of any two float orders of one training, and every step stays within ALL = 5e-2
    (measured 2.9e-2, while emulated fp8_tensorwise and bf16 differ by 1.7e-2 in the
    same setup). A wrong scale or operand layout moves the first loss by far more."""
    from nblab.train.trainer import Trainer

    losses, threads = {}, torch.get_num_threads()
    # one thread, as measured; two OpenMP threads on a busy 2-core machine wait on each other
    torch.set_num_threads(1)
    try:
        for gemm in ("emulated", "native"):
            trainer = Trainer(_tiny_recipe(gemm))
            whys = [w for m in trainer.plan.modules for w in m.gemms.values()]
            native = [w for w in whys if w.startswith("native fp8 tensor-wise")]
            assert len(whys) == 84 and len(native) == (84 if gemm == "native" else 0)  # 28 x 3
            losses[gemm] = [trainer.train_step() for _ in range(30)]
    finally:
        torch.set_num_threads(threads)
    drift = [abs(a - b) for a, b in zip(losses["emulated"], losses["native"], strict=True)]
    assert max(drift[:EARLY_STEPS]) <= EARLY, drift
    assert max(drift) <= ALL, drift
    assert losses["native"][-1] < losses["native"][0] - 1.0  # it trained: 4.50 -> 2.86


def _plan(preset: str, gemm: str, **overrides):
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(64, 64))
    section = {"preset": preset, "roles": overrides, "keep_high_precision": [], "gemm": gemm}
    return apply_precision(model, section), model


def test_unsupported_combinations_fall_back_with_the_reason_in_the_plan():
    report, model = _plan("mxfp8", "native")
    assert model.proj.native_gemms == frozenset()
    assert all("need sm_100" in why for why in report.modules[0].gemms.values())
    assert "0 of 3 GEMMs native" in str(report) and "need sm_100" in str(report)

    report, _ = _plan("int8_rowwise", "native")
    assert "no native GEMM for int8" in report.modules[0].gemms["forward"]

    report, model = _plan("fp8_rowwise", "native", dgrad_dy="high")
    gemms = report.modules[0].gemms
    assert gemms["forward"].startswith("native fp8 row-wise")
    assert gemms["dgrad"] == "emulated: dgrad_dy is in high precision"
    assert model.proj.native_gemms == frozenset({"forward", "wgrad"})

    report, model = _plan("fp8_rowwise", "emulated")
    assert set(report.modules[0].gemms.values()) == {"emulated"}
    assert model.proj.native_gemms == frozenset()


@pytest.mark.parametrize(
    ("ratio", "auto", "native"),
    [(0.5, True, True), (3.0, False, True), (100.0, False, False)],
)
def test_auto_takes_native_only_within_the_accumulation_tolerance(monkeypatch, ratio, auto, native):
    """A probe between 1x and REFUSE_FACTOR x the tolerance is rounding that is not
    exact: native takes it, auto does not; beyond, a wrong answer: both refuse."""
    monkeypatch.setattr(gemm_mod, "probe", lambda *a: Probe("", ratio * 1e-6, 1e-6))
    monkeypatch.setattr(gemm_mod, "AUTO_NATIVE_DEVICES", ("cuda", "cpu"))  # as if it had units
    for mode, expected in (("auto", auto), ("native", native)):
        report, model = _plan("fp8_rowwise", mode)
        assert (model.proj.native_gemms == {"forward", "dgrad", "wgrad"}) == expected
        assert f"{ratio:.2g} of the accumulation tolerance" in report.modules[0].gemms["forward"]


def test_auto_stays_emulated_on_the_cpu():
    """The CPU has no FP8 GEMM units: torch's native kernel there is slower than the
    emulation, so auto never picks it (native still runs it when asked)."""
    report, model = _plan("fp8_rowwise", "auto")
    assert model.proj.native_gemms == frozenset()
    assert "cpu has no low-precision GEMM units" in report.modules[0].gemms["forward"]
    _, model = _plan("fp8_rowwise", "native")
    assert model.proj.native_gemms == {"forward", "dgrad", "wgrad"}


def test_precision_gemm_is_validated_and_defaults_to_auto():
    assert Recipe.preset("gpt-tiny").precision.gemm == "auto"
    with pytest.raises(
        RecipeError, match=r"precision.gemm: 'fast' -> one of emulated, native, auto"
    ):
        Recipe.preset("gpt-tiny").with_overrides(["precision.gemm=fast"])
    with pytest.raises(ValueError, match=r"native_gemms \['fwd'\] unknown"):
        QuantLinear(8, 8, specs=get_preset("fp8_rowwise").roles, native_gemms=["fwd"])
    with pytest.raises(ValueError, match="dgrad GEMM cannot run natively with dgrad_dy"):
        specs = dict(get_preset("fp8_rowwise").roles, dgrad_dy=None)
        QuantLinear(8, 8, specs=specs, native_gemms=["dgrad"])
