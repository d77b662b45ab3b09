"""ops.py backend dispatch: auto / reference / triton, and the warned fallback."""

from __future__ import annotations

import warnings

import pytest
import torch
from spying import spy_on

import nblab_kernels as nk
from nblab_kernels import QUANT_PRESETS, QuantSpec, ops, reference
from nblab_kernels.triton import quantize as tq

X = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Each test starts with no fallback reason warned yet."""
    monkeypatch.setattr(ops, "_warned", set())


@pytest.fixture
def triton_calls(monkeypatch):
    """Records every call into the Triton wrappers (and still runs them)."""
    return spy_on(monkeypatch, tq, ("quantize", "fake_quantize"))


def test_backends_are_listed():
    assert nk.BACKENDS == ("auto", "reference", "triton", "compiled")
    with pytest.raises(ValueError, match=r"backend='cuda'.*auto, reference, triton, compiled"):
        nk.quantize(X, "mxfp8", backend="cuda")


def test_auto_on_cpu_uses_the_reference(triton_calls):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning either
        out = nk.fake_quantize(X, "mxfp4", backend="auto")
        qt = nk.quantize(X, QuantSpec("e2m1", "e8m0", "block", 32, hadamard=32))
    assert triton_calls == []
    assert torch.equal(out, reference.fake_quantize(X, QUANT_PRESETS["mxfp4"]))
    assert qt.spec.hadamard == 32


def test_triton_backend_runs_the_kernels(triton_calls):
    qt = nk.quantize(X, "nvfp4", backend="triton")
    out = nk.fake_quantize(X, "mxfp8", backend="triton")
    assert triton_calls == ["quantize", "fake_quantize"]
    assert torch.equal(qt.codes, reference.quantize(X, QUANT_PRESETS["nvfp4"]).codes)
    assert torch.equal(out, reference.fake_quantize(X, QUANT_PRESETS["mxfp8"]))


def test_triton_on_cpu_without_interpreter_raises(monkeypatch, triton_calls):
    monkeypatch.setattr(ops, "_interpreter_enabled", lambda: False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        nk.quantize(X, "mxfp8", backend="triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        nk.fake_quantize(X, "mxfp8", backend="triton")
    assert triton_calls == []
    # auto and reference do not need the interpreter
    assert torch.equal(
        nk.fake_quantize(X, "mxfp8"), reference.fake_quantize(X, QUANT_PRESETS["mxfp8"])
    )


@pytest.mark.parametrize("value", ("1", "true", "ON"))
def test_interpreter_flag_is_read_from_the_environment(monkeypatch, value):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert ops._interpreter_enabled()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not ops._interpreter_enabled()


UNSUPPORTED = {
    "cast": (X, QUANT_PRESETS["bf16"], "plain cast"),
    "fp64 input": (X.double(), QUANT_PRESETS["mxfp8"], "float64"),
    "block 48": (torch.randn(4, 96), QuantSpec("e4m3", "fp32", "block", 48), "power of two"),
    "wide element": (X, QuantSpec("e5m6", "fp32", "row"), "12 bits"),
}


@pytest.mark.usefixtures("fresh_warnings")
@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_falls_back_with_one_warning(case, triton_calls):
    x, spec, says = UNSUPPORTED[case]
    with pytest.warns(ops.TritonFallbackWarning, match=says) as record:
        first = nk.fake_quantize(x, spec, backend="triton")
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same reason is not warned again
        second = nk.quantize(x, spec, backend="triton")
    assert triton_calls == []
    assert torch.equal(first, reference.fake_quantize(x, spec))
    ref = reference.quantize(x, spec)
    assert torch.equal(second.codes, ref.codes)
    assert (second.scale is None and ref.scale is None) or torch.equal(second.scale, ref.scale)


@pytest.mark.usefixtures("fresh_warnings")
def test_each_distinct_reason_warns_once():
    with pytest.warns(ops.TritonFallbackWarning) as record:
        for _ in range(3):
            nk.quantize(X, "bf16", backend="triton")
            nk.quantize(X.double(), "mxfp8", backend="triton")
    assert len(record) == 2


@pytest.mark.usefixtures("fresh_warnings")
def test_quant_stats_runs_the_kernel_and_cast_stats_fall_back(monkeypatch):
    calls = []
    original = tq.quant_stats
    monkeypatch.setattr(tq, "quant_stats", lambda *a, **k: calls.append(1) or original(*a, **k))
    spec = QUANT_PRESETS["mxfp4"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = nk.quant_stats(X, spec, backend="triton")
    ref = reference.quant_stats(X, spec)
    assert calls == [1]
    assert (stats.saturation, stats.underflow) == (ref.saturation, ref.underflow)
    assert stats.sqnr_db == pytest.approx(ref.sqnr_db, rel=1e-6)
    with pytest.warns(ops.TritonFallbackWarning, match="plain cast"):
        assert nk.quant_stats(X, "bf16", backend="triton") == reference.quant_stats(
            X, QUANT_PRESETS["bf16"]
        )


def test_hadamard_runs_the_kernel(triton_calls):
    spec = QuantSpec("e2m1", "e8m0", "block", 32, hadamard=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = nk.fake_quantize(X, spec, backend="triton")
    assert triton_calls == ["fake_quantize"]
    assert torch.equal(out, reference.fake_quantize(X, spec))


def test_sr_through_dispatch_matches_reference():
    spec = QUANT_PRESETS["nvfp4"].replace(rounding="sr")
    got = nk.quantize(X, spec, seed=4, backend="triton")
    ref = nk.quantize(X, spec, seed=4, backend="reference")
    assert torch.equal(got.codes, ref.codes)
    assert torch.equal(got.scale.view(torch.uint8), ref.scale.view(torch.uint8))
