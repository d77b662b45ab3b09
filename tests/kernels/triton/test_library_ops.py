"""nblab::fake_quantize / nblab::quantize custom ops: reference numbers on CPU,
fake implementations that match, and torch.compile(fullgraph=True) without breaks."""

from __future__ import annotations

import pytest
import torch

from nblab_kernels import QUANT_PRESETS, QuantSpec, library, reference

X = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
SPECS = {
    "mxfp4": QUANT_PRESETS["mxfp4"],
    "nvfp4_sr": QUANT_PRESETS["nvfp4"].replace(rounding="sr"),
    "fp8_row": QUANT_PRESETS["fp8_e4m3_row"],
    "h32_dim0": QuantSpec("e2m1", "e8m0", "block", 32, hadamard=32, dim=0),
    "int8_padded": QuantSpec("int8", "fp32", "block", 48, padding="pad"),
    "bf16_cast": QUANT_PRESETS["bf16"],
    "fp32_cast": QUANT_PRESETS["fp32"],
}


def _seed(spec):
    return 5 if spec.rounding == "sr" else None


def test_spec_json_round_trips_and_names_bad_fields():
    for spec in SPECS.values():
        assert library.spec_from_json(library.spec_json(spec)) == spec
    assert library.spec_from_json("nvfp4") == QUANT_PRESETS["nvfp4"]
    with pytest.raises(ValueError, match="unknown QuantSpec fields \\['blok'\\]"):
        library.spec_from_json('{"blok": 32}')
    with pytest.raises(ValueError, match="unknown"):
        library.spec_json("mxfp5")


@pytest.mark.parametrize("name", SPECS)
def test_ops_equal_the_reference_on_cpu(name):
    spec = SPECS[name]
    text = library.spec_json(spec)
    out = torch.ops.nblab.fake_quantize(X, text, 5)
    assert torch.equal(out, reference.fake_quantize(X, spec, seed=_seed(spec)))
    assert out.data_ptr() != X.data_ptr()  # never the input itself (fp32 cast of fp32)
    qt = library.quantize(X, spec, seed=5)
    ref = reference.quantize(X, spec, seed=_seed(spec))
    assert torch.equal(qt.codes.view(torch.uint8), ref.codes.view(torch.uint8))
    if ref.scale is not None:
        assert torch.equal(qt.scale.view(torch.uint8), ref.scale.contiguous().view(torch.uint8))
    assert (qt.tensor_scale is None) == (ref.tensor_scale is None)
    assert torch.equal(qt.dequantize(), ref.dequantize())


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4_sr", "h32_dim0", "int8_padded", "fp32_cast"])
def test_opcheck(name):
    text = library.spec_json(SPECS[name])
    torch.library.opcheck(torch.ops.nblab.fake_quantize.default, (X, text, 3))
    torch.library.opcheck(torch.ops.nblab.quantize.default, (X, text, 3))


def test_fake_tensors_have_the_real_metadata():
    from torch._subclasses.fake_tensor import FakeTensorMode

    for spec in SPECS.values():
        text = library.spec_json(spec)
        real = torch.ops.nblab.quantize(X, text, 1)
        with FakeTensorMode() as mode:
            fake = torch.ops.nblab.quantize(mode.from_tensor(X), text, 1)
        for r, f in zip(real, fake, strict=True):
            assert (r.shape, r.dtype) == (f.shape, f.dtype), spec.describe()


def test_compile_fullgraph_calls_the_ops_without_breaks():
    mx = library.spec_json(QUANT_PRESETS["mxfp4"])
    nv_sr = library.spec_json(SPECS["nvfp4_sr"])

    def fn(x, w):
        xq = torch.ops.nblab.fake_quantize(x, mx, 0)
        wq = library.fake_quantize(w, nv_sr, 7)
        codes, scale, _ = torch.ops.nblab.quantize(x, "mxfp8", 0)
        return xq @ wq.t(), codes.view(torch.uint8).float().sum() + scale.float().sum()

    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    got = compiled(X, w)
    torch._dynamo.reset()
    want = fn(X, w)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    xq = reference.fake_quantize(X, QUANT_PRESETS["mxfp4"])
    wq = reference.fake_quantize(w, SPECS["nvfp4_sr"], seed=7)
    assert torch.equal(got[0], xq @ wq.t())
