"""c_kernels: the compiled backend's C kernels. Its Hadamard transforms equal the
reference's bit for bit, its group amax torch's amax of |x| (a non-finite group's only
as non-finite), and without a C compiler the compiled backend keeps its graphs."""

import math

import pytest
import torch

from nblab_kernels import QUANT_PRESETS, c_kernels, compiled, reference


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("n", [16, 32, 64, 128])
@pytest.mark.parametrize("inverse", [False, True])
def test_equals_the_reference_bit_for_bit(n, inverse):
    # 37 chunks a row; large values, subnormals and zeros, so that every rounding shows;
    # infinities, and NaNs of two payloads: where two NaNs meet, which payload survives
    # is the compiler's choice (as in torch's own kernels), so a NaN need only be a NaN
    x = torch.randn(5, 37 * n, generator=torch.Generator().manual_seed(n)) * 1e3
    x[0, :n] = 1e-40
    x[1, :n] = 0.0
    x[2, [3, 5]] = float("inf")  # two in one chunk: +Inf - +Inf in a later stage
    x[2, n + 5] = -float("inf")
    x[3, 1:n:3] = torch.tensor(0x7FC00001, dtype=torch.int32).view(torch.float32)
    x[3, 2:n:5] = -torch.nan
    signs = reference.hadamard_signs(n, seed=n + 1)
    inv = float(torch.tensor(1 / math.sqrt(n), dtype=torch.float32))
    got = c_kernels.hadamard(x, n, signs, inv, inverse)
    assert got is not None, "no C compiler here: the CI machine has one"
    want = reference._hadamard_2d(x, n, n + 1, -1, inverse)
    nan = want.isnan()
    assert nan[3, :n].all() and nan[2, :n].any() and not nan[2, n:].any()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(_bits(got)[~nan], _bits(want)[~nan])


@pytest.mark.parametrize("n", [16, 128])
@pytest.mark.parametrize("threads", [1, 3])
def test_the_transpose_of_a_contiguous_tensor_is_read_in_place(monkeypatch, n, threads):
    # a dim-0 role's x^T: 37 columns (two blocks of 16 lanes and a partial one), split
    # unevenly over threads; the result is the transform of the copied x^T, contiguous
    x = torch.randn(3 * n, 37, generator=torch.Generator().manual_seed(n)) * 1e3
    x[:n, 0] = 1e-40
    signs = reference.hadamard_signs(n, seed=5)
    inv = float(torch.tensor(1 / math.sqrt(n), dtype=torch.float32))
    monkeypatch.setattr(c_kernels, "SPLIT_MIN_NUMEL", 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    got = c_kernels.hadamard(x.t(), n, signs, inv, inverse=False)
    assert got.is_contiguous() and got.shape == (37, 3 * n)
    want = reference._hadamard_2d(x.t().contiguous(), n, 5, -1, False)
    assert torch.equal(_bits(got), _bits(want))


def test_split_over_threads_equals_one_thread(monkeypatch):
    x = torch.randn(512, 256)
    signs, inv = reference.hadamard_signs(16), 0.25
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    one = c_kernels.hadamard(x, 16, signs, inv, False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # uneven parts
    assert torch.equal(_bits(c_kernels.hadamard(x, 16, signs, inv, False)), _bits(one))


@pytest.mark.parametrize("g", [16, 32, 128])
@pytest.mark.parametrize("threads", [1, 3])
def test_group_amax_is_the_amax_of_abs_and_non_finite_where_a_group_is(monkeypatch, g, threads):
    # 37 groups a row, 5 rows: sets of 16 groups and a partial one, split unevenly
    x = torch.randn(5, 37 * g, generator=torch.Generator().manual_seed(g)) * 1e3
    x[0, :g] = -1e-40  # subnormal
    x[1, :g] = -0.0
    x[2, 3] = float("nan")
    x[2, g + 1] = -float("inf")
    x[3, 5 * g :] = torch.tensor(0x7FC00001, dtype=torch.int32).view(torch.float32)
    monkeypatch.setattr(c_kernels, "SPLIT_MIN_NUMEL", 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    got = c_kernels.group_amax(x, g)
    want = x.reshape(-1, g).abs().amax(1)
    finite = want.isfinite()
    assert finite.sum() == 5 * 37 - 2 - 32 and torch.equal(got.isfinite(), finite)
    assert torch.equal(_bits(got[finite]), _bits(want[finite]))


def test_without_a_c_compiler_the_compiled_backend_keeps_its_graphs(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("NBLAB_CPU_KERNELS", str(tmp_path / "cache"))
    c_kernels._library.cache_clear()
    try:
        assert (
            c_kernels.hadamard(torch.randn(4, 16), 16, reference.hadamard_signs(16), 0.25, False)
            is None
        )
        spec = QUANT_PRESETS["nvfp4"].replace(hadamard=16)
        x = torch.randn(64, 64)
        got = compiled.fake_quantize(x, spec)
        assert torch.equal(_bits(got), _bits(reference.fake_quantize(x, spec)))
        # fake_quantize in two graphs takes its group amax in the first
        assert c_kernels.group_amax(x, 16) is None
        monkeypatch.setattr(compiled, "TWO_GRAPHS_MIN_NUMEL", 0)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
        plain = QUANT_PRESETS["nvfp4"]
        got = compiled.fake_quantize(x, plain)
        assert torch.equal(_bits(got), _bits(reference.fake_quantize(x, plain)))
    finally:
        c_kernels._library.cache_clear()  # the next test builds (or finds) the real one


def test_the_build_is_cached_by_source_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("NBLAB_CPU_KERNELS", str(tmp_path))
    c_kernels._library.cache_clear()
    try:
        assert c_kernels._library() is not None
        built = list(tmp_path.glob("kernels-*.so"))
        assert len(built) == 1
        c_kernels._library.cache_clear()
        mtime = built[0].stat().st_mtime_ns
        assert c_kernels._library() is not None and built[0].stat().st_mtime_ns == mtime
    finally:
        c_kernels._library.cache_clear()
