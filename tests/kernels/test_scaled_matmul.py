"""scaled_matmul: the dequantize path on CPU, and when the native FP8 path applies."""

import pytest
import torch

import nblab_kernels as nk
from nblab_kernels.matmul import native_fp8_ok, scaled_matmul

G = torch.Generator().manual_seed(0)
X, W = torch.randn(64, 128, generator=G), torch.randn(32, 128, generator=G)


@pytest.mark.parametrize("name", ["fp8_e4m3_tensor", "fp8_e4m3_row", "mxfp8", "nvfp4", "mxfp4"])
def test_equals_the_product_of_dequantized_operands(name):
    a, b = nk.quantize(X, name), nk.quantize(W, name)
    y = scaled_matmul(a, b, out_dtype=torch.float32)
    assert torch.equal(y, a.dequantize() @ b.dequantize().T)
    exact = X @ W.T
    rel = (y - exact).norm() / exact.norm()
    assert rel < {"mxfp4": 0.2, "nvfp4": 0.15}.get(name, 0.05)  # the format's error


def test_reduction_dims_must_agree():
    with pytest.raises(ValueError, match=r"a \(64, 128\) and b \(32, 64\)"):
        scaled_matmul(nk.quantize(X, "mxfp8"), nk.quantize(W[:, :64], "mxfp8"))


def test_native_path_needs_cuda_fp8_with_tensor_or_row_scales():
    a, b = nk.quantize(X, "fp8_e4m3_row"), nk.quantize(W, "fp8_e4m3_row")
    assert not native_fp8_ok(a, b)  # CPU tensors: the dequantize path
    assert scaled_matmul(a, b).dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["fp8_e4m3_tensor", "fp8_e4m3_row"])
def test_native_fp8_matches_the_dequantize_path_on_gpu(name):
    a, b = nk.quantize(X.cuda(), name), nk.quantize(W.cuda(), name)
    fast = scaled_matmul(a, b, out_dtype=torch.float32)
    slow = a.dequantize() @ b.dequantize().T
    if native_fp8_ok(a, b):
        assert torch.allclose(fast, slow, rtol=1e-2, atol=1e-2)
    else:
        assert torch.equal(fast, slow)
