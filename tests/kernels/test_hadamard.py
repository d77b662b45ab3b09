"""The random-sign Hadamard transform: orthogonal, invertible, matmul-invariant."""

import pytest
import torch

from nblab_kernels import (
    QuantSpec,
    fake_quantize,
    hadamard_matrix,
    hadamard_transform,
    inverse_hadamard_transform,
    quantize,
)

SIZES = [16, 32, 64, 128]


@pytest.mark.parametrize("n", SIZES)
def test_matrix_is_orthogonal_with_random_signs(n):
    h = hadamard_matrix(n, seed=3)
    assert torch.allclose(h @ h.T, torch.eye(n), atol=1e-6)
    assert torch.all(h.abs() == h.abs()[0, 0])  # every entry is +-1/sqrt(n)
    assert not torch.equal(hadamard_matrix(n, seed=3), hadamard_matrix(n, seed=4))


@pytest.mark.parametrize("n", SIZES)
def test_transform_is_x_times_the_matrix_in_chunks(n):
    x = torch.randn(5, 2 * n, dtype=torch.float64).float()
    y = hadamard_transform(x, n, seed=1)
    h = hadamard_matrix(n, seed=1)
    expected = (x.reshape(5, 2, n) @ h).reshape(5, 2 * n)
    assert torch.allclose(y, expected, atol=1e-5)
    assert torch.allclose(inverse_hadamard_transform(y, n, seed=1), x, atol=1e-5)


def test_dim0_is_the_transpose_of_dim_minus_1():
    x = torch.randn(64, 8)
    assert torch.equal(
        hadamard_transform(x, 32, seed=2, dim=0), hadamard_transform(x.T, 32, seed=2).T
    )


def test_matmul_invariance_along_k():
    a, b = torch.randn(8, 128), torch.randn(16, 128)
    ta, tb = hadamard_transform(a, 32, seed=5), hadamard_transform(b, 32, seed=5)
    assert torch.allclose(ta @ tb.T, a @ b.T, atol=1e-4)


def test_dim_not_divisible_is_an_error_naming_the_shape():
    with pytest.raises(ValueError, match=r"multiple of 16.*\(4, 40\)|\(4, 40\).*multiple of 16"):
        hadamard_transform(torch.randn(4, 40), 16)


def test_spec_with_hadamard_quantizes_the_transformed_tensor():
    spec = QuantSpec.from_name("mxfp4").replace(hadamard=32, hadamard_seed=9)
    x = torch.randn(4, 64)
    q = quantize(x, spec)
    transformed = hadamard_transform(x, 32, seed=9)
    assert torch.equal(q.dequantize(transformed=True), fake_quantize(transformed, "mxfp4"))
    dq = q.dequantize()  # back in x's domain
    assert torch.allclose(
        dq, inverse_hadamard_transform(q.dequantize(transformed=True), 32, seed=9)
    )


def test_hadamard_helps_outliers():
    """The reason recipes use it: an outlier no longer sets a whole block's scale."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, generator=g)
    x[:, 7] *= 40
    plain = fake_quantize(x, "mxfp4")
    rotated = fake_quantize(x, QuantSpec.from_name("mxfp4").replace(hadamard=32))
    assert (x - rotated).pow(2).sum() < 0.7 * (x - plain).pow(2).sum()
