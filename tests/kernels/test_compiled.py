"""The compiled backend == reference, bit for bit (atol=0), and its dispatch.

The cases are the Triton kernels' (tests/kernels/triton/test_triton_quantize.py and
test_triton_hadamard_stats.py): every preset x input dtype x rounding, every e8m0 rule
and generic format, NaN / Inf / zero / subnormal groups, strided, transposed and N-D
inputs, blocks along dim 0, padding, Hadamard sizes and dims, seeds.

Compiling costs seconds per graph, so the full case list runs the compiled backend's
pipeline eagerly (the very function torch.compile traces, so its formulation is
checked), and `COMPILED_CASES`, one case per graph structure that training and the API
use, run through torch.compile itself (what inductor makes of the formulation).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from spying import spy_on

import nblab_kernels as nk
from nblab_kernels import QUANT_PRESETS, QuantSpec, compiled, ops, reference
from nblab_kernels.formats import ELEMENT_FORMATS, element_format

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(_INT_OF_SIZE[t.element_size()])


def assert_float_bits_equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Same dtype, shape, NaN positions, and bit patterns everywhere else."""
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b), f"{what}: NaN positions differ"
    diff = (_bits(a.masked_fill(nan_a, 0)) != _bits(b.masked_fill(nan_b, 0))).nonzero()
    assert diff.numel() == 0, f"{what}: {len(diff)} differ, first at {diff[0].tolist()}"


def assert_same_qtensor(ref: reference.QTensor, got: reference.QTensor) -> None:
    assert got.codes.dtype == ref.codes.dtype and got.codes.shape == ref.codes.shape
    assert torch.equal(_bits(ref.codes), _bits(got.codes)), "codes differ"
    assert got.scale.dtype == ref.scale.dtype and got.scale.shape == ref.scale.shape
    assert torch.equal(_bits(ref.scale), _bits(got.scale)), "scales differ"
    assert (ref.tensor_scale is None) == (got.tensor_scale is None)
    if ref.tensor_scale is not None:
        assert torch.equal(_bits(ref.tensor_scale), _bits(got.tensor_scale)), "tensor scale"
    assert (got.spec, got.shape, got.dtype) == (ref.spec, ref.shape, ref.dtype)


def assert_same_stats(ref: nk.QuantStats, got: nk.QuantStats) -> None:
    """Counts, scale exponents and maxima equal; fp64 sums to float tolerance (the
    summation order differs), as for the Triton kernels."""
    for field in ("saturation", "underflow", "scale_exponents", "numel", "rel_err_max"):
        a, b = getattr(ref, field), getattr(got, field)
        assert a == b or (math.isnan(a) and math.isnan(b)), (field, a, b)
    for field in ("sqnr_db", "rel_err_mean", "signal", "noise"):
        a, b = getattr(ref, field), getattr(got, field)
        same = a == b or math.isclose(a, b, rel_tol=1e-9) or (math.isnan(a) and math.isnan(b))
        assert same, (field, a, b)


def check(x: torch.Tensor, spec: QuantSpec, **kw) -> None:
    """quantize (codes, scales, tensor scale), fake_quantize and quant_stats of the
    compiled backend equal the reference's."""
    assert_same_qtensor(reference.quantize(x, spec, **kw), compiled.quantize(x, spec, **kw))
    fake = compiled.fake_quantize(x, spec, **kw)
    assert_float_bits_equal(reference.fake_quantize(x, spec, **kw), fake, "fake_quantize")
    assert_same_stats(reference.quant_stats(x, spec, **kw), compiled.quant_stats(x, spec, **kw))


def _randn(shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    """Values over several binades, so scales and subnormal grid points both occur."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * torch.exp2(torch.randint(-6, 6, shape, generator=gen))
    return x.to(dtype)


def _rbits(shape, seed=7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**32, shape, generator=gen, dtype=torch.int64)


def _rule_input(shape, seed=1) -> torch.Tensor:
    """Random values, with one element of every 16 set to a chosen block maximum."""
    x = _randn(shape, seed=seed)
    rows = torch.arange(shape[0])
    mant = torch.tensor((1.0, 1.25, 1.5, 1.75, 1.875, 1.9375, 1 + 2**-10, 2 - 2**-12))
    amax = mant[rows % 8] * torch.exp2(8.0 + rows % 5 - 2) * (1 - 2 * (rows % 2))
    x[:, ::16] = amax[:, None]
    return x


def _special(name: str, dtype, case: str) -> torch.Tensor:
    x = _randn((32, 128), dtype)
    if case == "nan":
        x[3, 5] = torch.nan
    elif case in ("inf", "-inf"):
        x[7, 40] = torch.inf if case == "inf" else -torch.inf
    elif case == "zero_block":
        x[:16, :32] = 0
        x[20, :] = -0.0
    elif case == "all_zero":
        x = torch.zeros(16, 64, dtype=dtype)
    elif case == "subnormal":
        x = _randn((16, 64))
        x[:4] = x[:4] * 1e-40
        x = x.to(dtype)
    return x


def _cases() -> dict[str, tuple]:
    """id -> (x, spec, kwargs): the Triton kernels' cases."""
    cases = {}
    for name, spec in QUANT_PRESETS.items():
        if spec.is_cast:
            continue
        shape = (32, 64)
        if spec.block == 128:
            shape = (128, 128)
        elif spec.granularity == "tile":
            shape = (32, 32)
        for dtype in DTYPES:
            d = str(dtype)[6:]
            sr = spec.replace(rounding="sr")
            cases[f"{name}-{d}-rne"] = (_randn(shape, dtype), spec, {})
            cases[f"{name}-{d}-sr_rbits"] = (_randn(shape, dtype), sr, {"rbits": _rbits(shape)})
            cases[f"{name}-{d}-sr_seed"] = (_randn(shape, dtype), sr, {"seed": 7})
    for elem in ("e4m3", "e5m2", "e3m2", "e2m3", "e2m1", "int8", "int4"):
        for rule in ("floor", "ceil", "rceil", "even"):
            spec = QuantSpec(elem, "e8m0", "block", 16, rule=rule)
            x = _rule_input((32, 64))
            cases[f"{elem}-e8m0-{rule}"] = (x, spec, {})
            sr = spec.replace(rounding="sr")
            cases[f"{elem}-e8m0-{rule}-sr"] = (x, sr, {"rbits": _rbits((32, 64))})
    for elem in ("e1m6", "e3m4", "e5m1", "e6m1", "e7m0", "e3m0"):
        for scale in ("fp32", "e8m0"):
            spec = QuantSpec(elem, scale, "block", 32)
            cases[f"{elem}-{scale}"] = (_rule_input((32, 64)), spec, {})
    for i, spec in enumerate(
        (
            QuantSpec("e2m1", "ue5m3", "block", 16, rule="nvfp4"),
            QuantSpec("e4m3", "ue4m3", "block", 32, rule="nvfp4"),
            QuantSpec("e3m2", "ue5m3", "tile", 16, rule="nvfp4"),
            QuantSpec("e5m2", "pow2", "block", 8),
            QuantSpec("e2m1", "pow2", "row"),
            QuantSpec("e4m3", "fp32", "col"),
            QuantSpec("int8", "pow2", "col"),
            QuantSpec("int4", "fp32", "tensor"),
            QuantSpec("e4m3", "e8m0", "tile", 16),
            QuantSpec("e4m3", "fp32", "block", 64),
        )
    ):
        cases[f"misc{i}-{spec.describe()}"] = (_rule_input((32, 64)), spec, {})
    ue5m3 = QuantSpec("e2m1", "ue5m3", "block", 16, rule="nvfp4")  # its NaN scale code
    for case in ("nan", "inf"):
        cases[f"ue5m3-{case}"] = (_special("", torch.float32, case), ue5m3, {})
    for name in ("mxfp8", "mxfp4", "nvfp4", "fp8_e4m3_row", "fp8_e5m2_tensor", "int4_b32"):
        for case in ("nan", "inf", "-inf", "zero_block", "all_zero", "subnormal"):
            for dtype in (torch.float32, torch.bfloat16):
                x = _special(name, dtype, case)
                cases[f"{name}-{case}-{str(dtype)[6:]}"] = (x, QUANT_PRESETS[name], {})
        x = _special(name, torch.float32, "subnormal")[:4] * 1e-3
        cases[f"{name}-subnormal_tensor"] = (x, QUANT_PRESETS[name], {})
    for name in ("mxfp8", "mxfp4", "nvfp4", "int4_b32", "fp8_e4m3_b128"):
        spec = QUANT_PRESETS[name].replace(dim=0)
        shape = (128, 32) if spec.block == 128 else (64, 32)
        cases[f"{name}-dim0"] = (_randn(shape, torch.bfloat16), spec, {})
        sr = spec.replace(rounding="sr")
        cases[f"{name}-dim0-sr"] = (_randn(shape), sr, {"rbits": _rbits(shape)})
    for name in ("mxfp8", "mxfp4", "nvfp4", "nvfp4_tile16"):
        for dim in (-1, 0):
            spec = QUANT_PRESETS[name].replace(padding="pad", dim=dim)
            cases[f"{name}-pad-dim{dim}"] = (_randn((30, 40)), spec, {})
    for name in ("mxfp8", "mxfp4", "nvfp4", "fp8_e4m3_row", "fp8_e4m3_tensor"):
        spec = QUANT_PRESETS[name]
        cases[f"{name}-strided"] = (_randn((48, 160), torch.bfloat16)[8:40, 16:144:2], spec, {})
        cases[f"{name}-transposed"] = (_randn((64, 32)).t(), spec, {})
        cases[f"{name}-3d"] = (_randn((2, 16, 64), torch.float16), spec, {})
        cases[f"{name}-1d"] = (_randn((64,)), spec, {})
    for n in (16, 32, 64, 128):
        for dim in (-1, 0):
            shape = (32, 128) if dim == -1 else (128, 32)
            for name in ("nvfp4", "mxfp4"):
                spec = QUANT_PRESETS[name].replace(hadamard=n, dim=dim, hadamard_seed=n + dim)
                x = _randn(shape, torch.bfloat16, seed=n)
                cases[f"{name}-h{n}-dim{dim}"] = (x, spec, {})
                sr = spec.replace(rounding="sr")
                cases[f"{name}-h{n}-dim{dim}-sr"] = (_randn(shape, seed=n), sr, {"seed": 3})
    for seed in (0, 2**31 + 5, 2**40 + 3, 2**63 + 11, -3):
        sr = QUANT_PRESETS["mxfp4"].replace(rounding="sr")
        cases[f"seed{seed}"] = (_randn((16, 64)), sr, {"seed": seed})
    return cases


CASES = _cases()


@pytest.fixture
def eager_graphs(monkeypatch):
    """The compiled backend's pipeline, run without torch.compile."""
    monkeypatch.setattr(compiled, "_graph", lambda s, static: lambda *a: compiled._pipeline(s, *a))


@pytest.mark.parametrize("in_two", [False, True], ids=["one graph", "fake in two graphs"])
def test_formulation_matches_the_reference_on_every_triton_case(eager_graphs, monkeypatch, in_two):
    # in_two: fake_quantize in two graphs (scales, then elements) wherever _in_two allows
    monkeypatch.setattr(compiled, "TWO_GRAPHS_MIN_NUMEL", 0 if in_two else 2**62)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # (two graphs: one thread)
    failures = []
    for case, (x, spec, kw) in CASES.items():
        try:
            check(x, spec, **kw)
        except AssertionError as err:
            failures.append(f"{case}: {err}")
    assert not failures, "\n".join(failures[:20])


def test_sub_byte_float_codes_come_from_the_bits_exactly_for_every_code_of_every_format():
    """_small_float_codes (a shift of q's fp32 bits) against reference.encode, on every
    value each shipped and generic float format of at most 8 bits can hold, signed
    zeros and non-finite values."""
    names = [n for n, f in ELEMENT_FORMATS.items() if f.kind == "float"]
    names += [f"e{e}m{m}" for e in range(1, 8) for m in range(0, 8 - e)]
    formats = {element_format(n) for n in names}
    formats = [f for f in formats if f.torch_dtype is None and f.bits <= 8]
    assert len(formats) >= 25
    specials = torch.tensor([math.nan, math.inf, -math.inf, -0.0, 0.0])
    for fmt in formats:
        every_code = torch.arange(2**fmt.bits).to(torch.uint8)
        q = torch.cat([reference.decode(every_code, fmt), specials])
        got = compiled._small_float_codes(q, fmt.ebits, fmt.mbits, fmt.signed)
        assert torch.equal(got.to(torch.uint8), reference.encode(q, fmt)), fmt.name


# Through torch.compile: one case per graph structure (a graph compiles in seconds).
# fake_quantize for every role of the shipped presets as QuantLinear stores them and
# every scale rule, rounding, element kind and transform; quant_stats for the roles the
# trainer records; quantize for each kind of code and scale storage.
COMPILED_CASES = {
    "fake_quantize": [
        "mxfp8-float32-rne",
        "mxfp8-dim0",
        "mxfp8-strided",
        "mxfp4-dim0-sr",
        "nvfp4-float32-rne",
        "nvfp4-float32-sr_seed",
        "nvfp4_tile16-float32-rne",
        "nvfp4-h16-dim0",
        "nvfp4-h16-dim0-sr",
        "mxfp4-h32-dim-1",
        "fp8_e4m3_row-bfloat16-rne",
        "fp8_e5m2_tensor-inf-float32",
        "fp8_e4m3_t128-float32-rne",
        "fp8_e4m3_b128-float32-sr_rbits",
        "int8_row-float16-rne",
        "int4_b32-float32-sr_seed",
        "e3m2-e8m0-ceil",
        "e2m3-e8m0-rceil",
        "int8-e8m0-even",
        "nvfp4-pad-dim0",
    ],
    "quant_stats": [
        "mxfp8-nan-bfloat16",
        "mxfp8-dim0",
        "nvfp4-float32-rne",
        "nvfp4-float32-sr_seed",
        "nvfp4_tile16-float32-rne",
        "nvfp4-h16-dim0",
        "fp8_e4m3_row-bfloat16-rne",
        "int8_row-float16-rne",
    ],
    "quantize": [
        "mxfp8-nan-bfloat16",
        "mxfp4-float32-rne",
        "nvfp4-float32-rne",
        "misc0-e2m1 block16 ue5m3/nvfp4 rne",
        "e3m2-e8m0-ceil",
        "int4_b32-float32-sr_seed",
        "fp8_e4m3_row-bfloat16-rne",
    ],
}


@pytest.mark.parametrize(
    ("op", "case"), [(op, case) for op, cases in COMPILED_CASES.items() for case in cases]
)
def test_compiled_matches_the_reference(op, case):
    x, spec, kw = CASES[case]
    if op == "fake_quantize":
        out = compiled.fake_quantize(x, spec, **kw)
        assert_float_bits_equal(reference.fake_quantize(x, spec, **kw), out, "fake_quantize")
    elif op == "quantize":
        assert_same_qtensor(reference.quantize(x, spec, **kw), compiled.quantize(x, spec, **kw))
    else:
        assert_same_stats(reference.quant_stats(x, spec, **kw), compiled.quant_stats(x, spec, **kw))


# fake_quantize in two graphs (compiled._in_two: large tensors in small groups with
# dividing scales), through torch.compile: each scale kind, rounding, transposed input,
# a Hadamard role (the C transforms around the graphs) and padding; the first graph
# takes the C group amax where the groups are blocks along contiguous rows
IN_TWO_CASES = {
    "nvfp4-float32-sr_seed": "amax_scales",
    "nvfp4-h16-dim0": "amax_scales",
    "nvfp4_tile16-float32-rne": "scales",
    "fp8_e4m3_b128-float32-sr_rbits": "amax_scales",
    "nvfp4-pad-dim0": "scales",
}


@pytest.mark.parametrize(("case", "first"), IN_TWO_CASES.items())
def test_fake_quantize_in_two_graphs_matches_the_reference(monkeypatch, case, first):
    x, spec, kw = CASES[case]
    monkeypatch.setattr(compiled, "TWO_GRAPHS_MIN_NUMEL", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    phases, graph = [], compiled._graph
    monkeypatch.setattr(
        compiled, "_graph", lambda s, static: phases.append(s.phase) or graph(s, static)
    )
    out = compiled.fake_quantize(x, spec, **kw)
    assert_float_bits_equal(reference.fake_quantize(x, spec, **kw), out, "fake_quantize")
    assert phases == [first, "elements"]


def test_compiled_cases_exist():
    assert {c for cases in COMPILED_CASES.values() for c in cases} <= set(CASES)
    assert set(IN_TWO_CASES) <= set(CASES)


# ---------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------

X = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(ops, "_warned", set())
    monkeypatch.setattr(ops, "_compile_failure", None)


@pytest.fixture
def compiled_calls(monkeypatch):
    return spy_on(monkeypatch, compiled, ("quantize", "fake_quantize", "quant_stats"))


def test_compiled_is_a_backend():
    assert "compiled" in nk.BACKENDS
    out = nk.fake_quantize(X, "mxfp8", backend="compiled")
    assert torch.equal(out, reference.fake_quantize(X, QUANT_PRESETS["mxfp8"]))


def test_auto_runs_the_reference_on_cpu_and_compiles_large_layers(monkeypatch, compiled_calls):
    nk.fake_quantize(torch.randn(512, 512), "mxfp8")  # one call: not worth a compile
    assert compiled_calls == []
    monkeypatch.setattr(ops, "AUTO_COMPILED_MIN_NUMEL", X.numel())
    monkeypatch.setenv("NBLAB_AUTO_COMPILED", "1")
    assert nk.layer_backend("auto", X) == "compiled"
    monkeypatch.setenv("NBLAB_AUTO_COMPILED", "0")  # the switch the test suite sets
    assert nk.layer_backend("auto", X) == "auto"
    monkeypatch.setenv("NBLAB_AUTO_COMPILED", "1")
    assert nk.layer_backend("auto", X[:8]) == "auto"
    assert nk.layer_backend("reference", X) == "reference"
    assert nk.layer_backend("triton", X) == "triton"


@pytest.mark.parametrize(
    ("x", "spec", "says"),
    [
        (X, "bf16", "plain cast"),
        (X.double(), "mxfp8", "input dtype torch.float64"),
        (X, QuantSpec("e5m10", "fp32"), "16 bits"),
    ],
)
def test_compiled_falls_back_with_a_warning(fresh_warnings, compiled_calls, x, spec, says):
    with pytest.warns(ops.TritonFallbackWarning, match=says):
        out = nk.fake_quantize(x, spec, backend="compiled")
    spec = QuantSpec.from_name(spec) if isinstance(spec, str) else spec
    assert_float_bits_equal(out, reference.fake_quantize(x, spec), "fallback")
    assert compiled_calls == []


def test_a_failed_compile_falls_back_to_the_reference_once(fresh_warnings, monkeypatch):
    def no_compiler(structure, static):
        def fail(*args):
            raise RuntimeError("no C++ compiler")

        return fail

    monkeypatch.setattr(compiled, "_graph", no_compiler)
    with pytest.warns(ops.TritonFallbackWarning, match="no C\\+\\+ compiler"):
        out = nk.fake_quantize(X, "mxfp4", backend="compiled")
    assert torch.equal(out, reference.fake_quantize(X, QUANT_PRESETS["mxfp4"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls go to the reference
        qt = nk.quantize(X, "nvfp4", backend="compiled")
    assert torch.equal(qt.codes, reference.quantize(X, QUANT_PRESETS["nvfp4"]).codes)


def test_validation_errors_are_the_references(eager_graphs):
    x = torch.randn(30, 40)
    for name in ("mxfp8", "nvfp4_tile16"):
        with pytest.raises(ValueError) as ref_err:
            reference.quantize(x, QUANT_PRESETS[name])
        with pytest.raises(ValueError) as got_err:
            compiled.quantize(x, QUANT_PRESETS[name])
        assert str(got_err.value) == str(ref_err.value)
    with pytest.raises(ValueError, match="odd last dim 33"):
        compiled.fake_quantize(torch.randn(4, 33), QuantSpec("e2m1", "e8m0", "row"))
    with pytest.raises(ValueError, match="empty tensor"):
        compiled.fake_quantize(torch.zeros(0, 32), QUANT_PRESETS["mxfp8"])
    sr = QUANT_PRESETS["mxfp4"].replace(rounding="sr")
    with pytest.raises(ValueError, match="not both"):
        compiled.quantize(X, sr, rbits=torch.zeros(16, 64, dtype=torch.int64), seed=1)


def test_sr_without_seed_draws_one_philox_seed_from_torch(eager_graphs):
    """No rbits, no seed: one seed from torch's generator, as the Triton kernels do."""
    spec = QUANT_PRESETS["nvfp4"].replace(rounding="sr")
    torch.manual_seed(5)
    first = compiled.fake_quantize(X, spec)
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    assert torch.equal(first, reference.fake_quantize(X, spec, seed=seed))
    assert not torch.equal(first, compiled.fake_quantize(X, spec))  # a fresh draw
