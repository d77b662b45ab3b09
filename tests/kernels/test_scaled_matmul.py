"""Scaled GEMMs: the dequantize path, the native one (torch._scaled_mm, which runs FP8 on
the CPU too), the capability each needs, and cuBLAS's block-scale layout."""

import pytest
import torch

import nblab_kernels as nk
from nblab_kernels import reference
from nblab_kernels.matmul import (
    dequantized_mm,
    gemm_deviation,
    gemm_tolerance,
    native_fp8_ok,
    native_mm,
    native_problem,
    scaled_matmul,
    to_blocked,
)

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


def test_to_blocked_puts_each_scale_where_cublas_reads_it():
    """cuBLAS's block-scaling layout: 128 x 4 blocks of the (rows, K / block) scales, in
    row-block-major then column-block order, element (r, c) of a block at
    (r % 32) * 16 + (r // 32) * 4 + c; rows and columns zero-padded to whole blocks."""
    rows, cols = 300, 6
    scales = torch.arange(1, rows * cols + 1, dtype=torch.int32).reshape(rows, cols)
    flat = to_blocked(scales)
    n_col_blocks = 2  # ceil(6 / 4)
    assert flat.shape == (3 * 128 * n_col_blocks * 4,)
    for r, c in [(0, 0), (1, 0), (31, 3), (32, 0), (127, 5), (128, 4), (299, 5)]:
        block = (r // 128) * n_col_blocks + c // 4
        rr, cc = r % 128, c % 4
        assert flat[block * 512 + (rr % 32) * 16 + (rr // 32) * 4 + cc] == scales[r, c]
    assert int((flat == 0).sum()) == flat.numel() - rows * cols  # padding only


@pytest.mark.parametrize(
    ("preset", "capability", "problem"),
    [
        (
            "fp8_e4m3_row",
            (8, 0),
            "fp8 GEMMs need FP8 tensor cores (sm_89 and up); this device is cuda sm_80",
        ),
        ("fp8_e4m3_row", (9, 0), ""),
        (
            "mxfp8",
            (9, 0),
            "mxfp8 block-scaled GEMMs need sm_100 (a Blackwell GPU); this device is cuda sm_90",
        ),
        ("nvfp4", (10, 0), ""),
        ("int8_row", (10, 0), "no native GEMM for int8 row"),
    ],
)
def test_native_problem_names_the_capability_it_needs(monkeypatch, preset, capability, problem):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    spec = nk.QUANT_PRESETS[preset]
    got = native_problem(spec, spec, torch.device("cuda"))
    assert got.startswith(problem) and bool(got) == bool(problem), got


def test_native_problem_on_the_cpu():
    row, tensor = nk.QUANT_PRESETS["fp8_e4m3_row"], nk.QUANT_PRESETS["fp8_e4m3_tensor"]
    assert native_problem(row, row, torch.device("cpu")) == ""
    assert "scaled differently" in native_problem(row, tensor, torch.device("cpu"))
    mx = nk.QUANT_PRESETS["mxfp8"]
    assert "this device is cpu" in native_problem(mx, mx, torch.device("cpu"))


@pytest.mark.parametrize(("a_kfirst", "b_kfirst"), [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("name", ["fp8_e4m3_tensor", "fp8_e4m3_row"])
def test_native_mm_on_the_cpu_is_the_dequantized_product(name, a_kfirst, b_kfirst):
    """Every operand layout of the QuantLinear's GEMMs (forward, dgrad, wgrad). An
    operand held (K, rows) is quantized along dim 0: one scale per column."""
    spec = nk.QUANT_PRESETS[name]
    kfirst = spec if spec.granularity == "tensor" else spec.replace(dim=0, granularity="col")
    sa, sb = (kfirst if a_kfirst else spec), (kfirst if b_kfirst else spec)
    a = nk.quantize(X.t().contiguous() if a_kfirst else X, sa)  # A (64, 128)
    b = nk.quantize(W.t().contiguous() if b_kfirst else W, sb)  # B (32, 128)
    native = native_mm(a, b, torch.float32, a_kfirst=a_kfirst, b_kfirst=b_kfirst)
    emulated = dequantized_mm(a, b, torch.float32, a_kfirst=a_kfirst, b_kfirst=b_kfirst)
    da = a.dequantize().abs().t() if a_kfirst else a.dequantize().abs()
    db = b.dequantize().abs().t() if b_kfirst else b.dequantize().abs()
    assert native.shape == (64, 32)
    assert gemm_deviation(native, emulated, da @ db.t()) <= gemm_tolerance(128, torch.float32)


def _unblock(flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The (rows, cols) scales back out of to_blocked's layout (its index formula)."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    n_col_blocks = -(-cols // 4)
    block = (r // 128) * n_col_blocks + c // 4
    return flat[block * 512 + (r % 128 % 32) * 16 + (r % 128 // 32) * 4 + c % 4]


E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


@pytest.mark.parametrize("kfirst", [False, True])
@pytest.mark.parametrize(
    "spec",
    [
        nk.QUANT_PRESETS["mxfp8"],
        nk.QUANT_PRESETS["mxfp4"],
        nk.QUANT_PRESETS["nvfp4"],
        nk.QUANT_PRESETS["nvfp4_tile16"],  # the recipe's W: one scale per 16 x 16 tile
        nk.QUANT_PRESETS["nvfp4"].replace(hadamard=16),  # codes stay transformed
    ],
    ids=["mxfp8", "mxfp4", "nvfp4", "nvfp4-tile", "nvfp4-h16"],
)
def test_block_scaled_operands_hold_the_quantized_values(spec, kfirst):
    """What sm_100's block-scaled GEMM would read (it cannot run here): codes (rows, K)
    as float8_e4m3fn or float4_e2m1fn_x2 (element 2i in the low nibble, as PyTorch packs
    them), scales in to_blocked's layout; decoded, exactly the values the QTensor holds
    (in the transformed domain), in either stored orientation."""
    from nblab_kernels.matmul import _block_operand

    rows, k = 160, 256
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(3))
    if kfirst and spec.granularity != "tile":
        spec = spec.replace(dim=0)
    q = nk.quantize(x.t().contiguous() if kfirst else x, spec)
    codes, flat = _block_operand(q, kfirst)
    if codes.dtype == torch.float4_e2m1fn_x2:
        nibbles = reference.unpack_fp4(codes.view(torch.uint8)).long()
        values = E2M1[nibbles]
    else:
        values = codes.float()
    block = spec.block
    scales = _unblock(flat.view(torch.uint8), rows, k // block)
    if flat.dtype == torch.float8_e8m0fnu:
        got = values * torch.exp2(scales.float() - 127).repeat_interleave(block, dim=1)
    else:  # NVFP4: (value x block scale) x tensor scale, in NUMERICS.md's order
        scales = scales.view(torch.float8_e4m3fn).float().repeat_interleave(block, dim=1)
        got = (values * scales) * q.tensor_scale
    want = q.dequantize(torch.float32, transformed=True)
    assert torch.equal(got, want.t() if kfirst else want)
