"""quantize / QTensor / fake_quantize: storage layout, dtypes, shapes, dispatch."""

import numpy as np
import pytest
import torch

import nblab_kernels as nk
from nblab_kernels import QuantSpec, fake_quantize, quantize

ALL_PRESETS = list(nk.QUANT_PRESETS)
G = torch.Generator().manual_seed(0)
X = torch.randn(256, 256, generator=G)

STORAGE = {
    "fp8_e4m3_tensor": (torch.float8_e4m3fn, torch.float32, (256, 256), (1, 1)),
    "fp8_e5m2_tensor": (torch.float8_e5m2, torch.float32, (256, 256), (1, 1)),
    "fp8_e4m3_row": (torch.float8_e4m3fn, torch.float32, (256, 256), (256, 1)),
    "fp8_e4m3_b128": (torch.float8_e4m3fn, torch.float32, (256, 256), (256, 2)),
    "fp8_e4m3_t128": (torch.float8_e4m3fn, torch.float32, (256, 256), (2, 2)),
    "mxfp8": (torch.float8_e4m3fn, torch.uint8, (256, 256), (256, 8)),
    "mxfp6_e3m2": (torch.uint8, torch.uint8, (256, 256), (256, 8)),
    "mxfp4": (torch.uint8, torch.uint8, (256, 128), (256, 8)),
    "nvfp4": (torch.uint8, torch.float8_e4m3fn, (256, 128), (256, 16)),
    "nvfp4_tile16": (torch.uint8, torch.float8_e4m3fn, (256, 128), (16, 16)),
    "int8_row": (torch.int8, torch.float32, (256, 256), (256, 1)),
    "int4_b32": (torch.int8, torch.float32, (256, 256), (256, 8)),
}


@pytest.mark.parametrize("name", list(STORAGE))
def test_storage_types_and_shapes(name):
    codes_dtype, scale_dtype, codes_shape, scale_shape = STORAGE[name]
    q = quantize(X, name)
    assert q.codes.dtype == codes_dtype
    assert tuple(q.codes.shape) == codes_shape
    assert q.scale.dtype == scale_dtype
    assert tuple(q.scale.shape) == scale_shape
    assert (q.tensor_scale is not None) == name.startswith("nvfp4")


def test_fp4_packs_low_nibble_first():
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 6.0, -0.5  # codes 0b0111 and 0b1001
    assert quantize(x, "mxfp4").codes[0, 0].item() == 0x97


@pytest.mark.parametrize("name", ALL_PRESETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fake_quantize_keeps_shape_and_dtype_and_equals_quantize_dequantize(name, dtype):
    x = X[:128, :128].to(dtype)
    fq = fake_quantize(x, name)
    assert fq.dtype == dtype and fq.shape == x.shape
    assert torch.equal(fq, quantize(x, name).dequantize())


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "fp8_e4m3_row", "fp8_e4m3_t128"])
def test_non_contiguous_and_nd_inputs_equal_their_contiguous_copies(name):
    x = X[:128, :128]
    t = x.T  # non-contiguous
    assert torch.equal(fake_quantize(t, name), fake_quantize(t.contiguous(), name))
    x3 = X[:128].reshape(4, 32, 256)
    assert torch.equal(fake_quantize(x3, name), fake_quantize(X[:128], name).reshape(4, 32, 256))


def test_block_along_dim0_is_the_transpose_of_dim_minus_1():
    spec = QuantSpec.from_name("mxfp8")
    q0 = quantize(X[:64, :96], spec.replace(dim=0))
    q1 = quantize(X[:64, :96].T.contiguous(), spec)
    assert torch.equal(q0.scale, q1.scale.T)
    assert torch.equal(q0.dequantize(), q1.dequantize().T)


def test_mx_pipeline_against_torch_float8_cast():
    """An independent MXFP8: scale 2^(floor(log2 amax) - 8), torch's own e4m3 cast."""
    blocks = X[:16].reshape(16, 8, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    scale = torch.exp2(torch.floor(torch.log2(amax)) - 8)
    expected = (blocks / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale
    assert torch.equal(fake_quantize(X[:16], "mxfp8"), expected.reshape(16, 256))


def test_int_codes_are_symmetric_integers():
    q = quantize(X, "int8_row")
    assert int(q.codes.min()) >= -127 and int(q.codes.max()) <= 127
    assert int(q.codes.abs().amax(dim=1).min()) == 127  # every row's amax maps to 127


def test_undivisible_dims_error_or_pad():
    x = torch.randn(4, 100)
    with pytest.raises(ValueError, match=r"last dim=100 of shape \(4, 100\).*block 32"):
        quantize(x, "mxfp4")
    spec = QuantSpec.from_name("mxfp4").replace(padding="pad")
    q = quantize(x, spec)
    assert tuple(q.scale.shape) == (4, 4)
    padded = torch.nn.functional.pad(x, (0, 28))
    assert torch.equal(q.dequantize(), fake_quantize(padded, "mxfp4")[:, :100])
    with pytest.raises(ValueError, match="rows=10"):
        quantize(torch.randn(10, 32), "nvfp4_tile16")


def test_fp4_needs_an_even_last_dim():
    spec = QuantSpec("e2m1", "fp32", "row")
    with pytest.raises(ValueError, match="odd last dim 3"):
        quantize(torch.randn(2, 3), spec)


def test_dispatch_by_name_and_backend():
    assert torch.equal(
        nk.fake_quantize(X, "mxfp4", backend="reference"), nk.fake_quantize(X, "mxfp4")
    )
    with pytest.raises(ValueError, match=r"backend='cuda'.*auto, reference"):
        nk.quantize(X, "mxfp4", backend="cuda")
    with pytest.raises(ValueError, match="'mxfp5' is unknown"):
        nk.quantize(X, "mxfp5")
    with pytest.raises(ValueError, match="empty tensor"):
        nk.quantize(torch.empty(0, 32), "mxfp4")


def test_casts():
    q = quantize(X, "bf16")
    assert q.codes.dtype == torch.bfloat16 and q.scale is None
    assert torch.equal(fake_quantize(X, "bf16"), X.to(torch.bfloat16).float())
    assert torch.equal(fake_quantize(X, "fp32"), X)


def test_quant_stats_fields():
    s = nk.quant_stats(X, "mxfp4")
    assert 15 < s.sqnr_db < 25
    assert 0 < s.saturation < 0.05  # floor rule: some block maxima clip
    assert 0 < s.underflow < 0.2
    assert sum(s.scale_exponents.values()) == 256 * 8
    assert 0 < s.rel_err_mean < s.rel_err_max
    assert nk.quant_stats(X, "mxfp4_rceil").saturation == 0  # rceil never clips
    assert nk.quant_stats(X, "fp8_e4m3_tensor").saturation == 0
    exact = nk.quant_stats(torch.tensor([[1.0, 2.0, 0.5, 0.0]]), "fp8_e4m3_tensor")
    assert exact.sqnr_db == float("inf")
    assert s.numel == X.numel() and s.signal == pytest.approx(float((X.double() ** 2).sum()))
    assert s.sqnr_db == pytest.approx(10 * np.log10(s.signal / s.noise))


@pytest.mark.parametrize("spec", ["mxfp4", "mxfp8", "int8_row"])
def test_merged_shard_stats_are_the_whole_tensors(spec):
    """The stats of a tensor's row shards merge into the whole tensor's stats (specs
    whose groups stay within a row, so each shard quantizes exactly as the whole does;
    a tensor-level scale, as nvfp4's, would differ per shard)."""
    heavy = X * torch.linspace(0.1, 10, 256)[:, None]  # shards of different scales
    whole = nk.quant_stats(heavy, spec)
    merged = nk.merge_quant_stats([nk.quant_stats(part, spec) for part in heavy.split(64)])
    assert merged.sqnr_db == pytest.approx(whole.sqnr_db, rel=1e-9)
    assert merged.saturation == pytest.approx(whole.saturation, abs=1e-12)
    assert merged.underflow == pytest.approx(whole.underflow, abs=1e-12)
    assert merged.scale_exponents == whole.scale_exponents
    assert merged.rel_err_max == whole.rel_err_max
    assert merged.numel == whole.numel
    # one shard alone is not the whole (what logging rank 0's shard would report)
    assert abs(nk.quant_stats(heavy[:64], spec).sqnr_db - whole.sqnr_db) > 1e-6
    assert nk.merge_quant_stats([whole]) is whole
    with pytest.raises(ValueError, match="at least one"):
        nk.merge_quant_stats([])


def test_dequantize_to_another_dtype():
    q = quantize(X, "mxfp8")
    assert q.dequantize(torch.bfloat16).dtype == torch.bfloat16
    assert np.array_equal(q.dequantize(torch.float64).numpy(), q.dequantize().double().numpy())
