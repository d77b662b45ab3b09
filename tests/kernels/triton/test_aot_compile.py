"""Every Triton kernel specialization compiles for sm_80, sm_89, sm_90 and sm_100.

`python -m nblab.precision.aot --json` runs once, in a process without the
interpreter: it enumerates the calls the precision presets and the public API reach,
captures their specializations through the launcher's compile-only mode, compiles
them (over processes, cached outside the clone by kernel source, triton version,
target and specialization; NBLAB_AOT_CACHE overrides the folder) and checks them.
The tests read its results: no compile error, no spill that is not explained, no
inexact fma in the PTX, fp fusion off in every launch, and the committed report
benchmarks/results/kernels-aot.txt equal to the regenerated one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aot_job
import pytest

from nblab_kernels.aot import build, report

ROOT = aot_job.ROOT
TARGETS = ["80", "89", "90", "100"]
COMMITTED = ROOT / "benchmarks" / "results" / "kernels-aot.txt"


@pytest.fixture(scope="module")
def aot(request, tmp_path_factory):
    """The run's results. conftest.py started it in the background after collection;
    run alone, this starts it (see aot_job)."""
    job = request.config.stash.get(aot_job.KEY, None)
    if job is None:
        job = aot_job.AotJob(tmp_path_factory.mktemp("aot"))
        job.start(nice=0)
    return job.result(timeout=840)


def test_every_specialization_compiles_for_every_target(aot):
    assert aot["targets"] == [int(t) for t in TARGETS]
    compile_errors = [p for p in aot["problems"] if "does not compile" in p]
    assert not compile_errors, "\n".join(compile_errors)
    for row in aot["rows"]:
        assert sorted(row["records"], key=int) == TARGETS, row["label"]
    stats = aot["stats"]
    assert stats["hits"] + stats["compiled"] == len(aot["rows"]) * len(TARGETS)
    assert aot["returncode"] == 0, "\n".join(aot["problems"]) + aot["log"][-2000:]


def test_every_call_reaches_the_compiler(aot):
    """Each enumerated call launched at least one kernel (none fell to the reference)."""
    assert set(aot["reached"]) == set(aot["cases"])
    labels = " | ".join(aot["cases"])
    for preset in ("fp8_tensorwise", "fp8_rowwise", "fp8_blockwise", "mxfp8", "mxfp4",
                   "nvfp4", "quartet-like", "int8_rowwise"):  # fmt: skip
        for role in ("fwd_x", "fwd_w", "dgrad_dy", "dgrad_w", "wgrad_x", "wgrad_dy"):
            assert f"preset {preset} {role} " in labels, (preset, role)


def test_the_enumeration_spans_every_axis(aot):
    """fake / packed / stats, fp32 / bf16 / fp16, rne / sr (given bits and seeded),
    Hadamard 16 and 32 along either dim, in-tile and spanning groups."""
    quant = [r["consts"] for r in aot["rows"] if r["kernel"] == "_quantize_kernel"]
    amax = [r["consts"] for r in aot["rows"] if r["kernel"] == "_amax_kernel"]
    assert {(c["FAKE"], c["STATS"]) for c in quant} == {(True, False), (False, False),
                                                       (False, True)}  # fmt: skip
    assert {c["OUT_KIND"] for c in quant if c["FAKE"]} == {0, 1, 2}
    assert {(c["SR"], c["SEEDED"]) for c in quant} == {(False, False), (True, False), (True, True)}
    hadamard = {(c["HAD_LOG2N"], c["HAD_DIM0"]) for c in quant}
    assert {(4, True), (5, False), (5, True), (0, False)} <= hadamard
    assert {(c["SPAN_M"], c["SPAN_K"]) for c in quant} >= {(False, False), (True, False),
                                                          (False, True), (True, True)}  # fmt: skip
    assert any(c["HAD_LOG2N"] for c in amax)


def test_no_spill_without_a_reason(aot):
    for row in aot["rows"]:
        again = report.Row(row["kernel"], row["label"], 1, row["plan"], row["consts"])
        again.records = {int(arch): rec for arch, rec in row["records"].items()}
        if again.spills:
            assert again.spill_reason is not None, f"{row['label']} ({again.kind}) spills"


def test_no_fma_in_the_ptx_unless_marked_exact(aot):
    """NUMERICS.md promises bit-exact rounding; an fma rounds a * b + c once, not twice."""
    for row in aot["rows"]:
        for arch, rec in row["records"].items():
            bad = [s for s in rec["fma"] if not s["exact"]]
            assert not bad, f"{row['label']} sm_{arch}: {bad}"


def test_every_launch_turns_fp_fusion_off(aot):
    for row in aot["rows"]:
        assert not row["fusion_on"], row["label"]
        assert not any(rec["enable_fp_fusion"] for rec in row["records"].values()), row["label"]


def test_committed_report_is_current(aot):
    regenerate = "python -m nblab.precision.aot --report"
    assert COMMITTED.exists(), f"missing {COMMITTED}: run {regenerate}"
    committed = report.table_lines(COMMITTED.read_text())
    assert committed == report.table_lines(aot["report"]), f"stale {COMMITTED}: run {regenerate}"


def test_fma_check_flags_an_unmarked_fma(tmp_path):
    """The check can fail: an explicit tl.fma is found at its source line, and only the
    line marked 'exact-fma:' passes."""
    script = (
        "import json, torch, aot_fma_probe as p\n"
        "from nblab_kernels.aot.capture import compile_only\n"
        "from nblab_kernels.aot.build import compile_specialization\n"
        "t = torch.empty(32)\n"
        "for fn in (p.fma_unmarked, p.fma_marked):\n"
        "    with compile_only(90) as seen:\n"
        "        fn[(1,)](t, t, t, t)\n"
        "    print(json.dumps(compile_specialization(seen[0])['fma']))\n"
    )
    env = aot_job.compiler_env()
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env["PYTHONPATH"]])
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # empty: ptxas runs and reports
    cmd = [sys.executable, "-c", script]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    unmarked, marked = (json.loads(line) for line in done.stdout.splitlines())
    assert unmarked and not any(s["exact"] for s in unmarked)
    assert all(s["file"] == "aot_fma_probe.py" and "tl.fma" in s["source"] for s in unmarked)
    assert marked and all(s["exact"] for s in marked)


def test_compile_only_refuses_interpreted_kernels():
    """Under TRITON_INTERPRET (this test process) the kernels have no compiler."""
    from nblab_kernels.aot.capture import compile_only

    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"), compile_only(90):
        pass


def test_cache_key_follows_source_and_target_not_the_venv():
    data = {
        "name": "k",
        "target": {"backend": "cuda", "arch": 90, "warp_size": 32},
        "options": {"extern_libs": [["libdevice", "/venv-a/triton/lib/libdevice.10.bc"]]},
    }
    other_venv = json.loads(json.dumps(data))
    other_venv["options"]["extern_libs"][0][1] = "/venv-b/triton/lib/libdevice.10.bc"
    sm_100 = json.loads(json.dumps(data))
    sm_100["target"]["arch"] = 100
    key = build.record_key(json.dumps(data), "src1")
    assert key == build.record_key(json.dumps(other_venv), "src1")
    assert key != build.record_key(json.dumps(data), "src2")
    assert key != build.record_key(json.dumps(sm_100), "src1")


def test_roofline_counts_passes_rbits_codes_and_scales():
    from nblab_kernels import QUANT_PRESETS
    from nblab_kernels.aot.cases import Case

    nvfp4 = QUANT_PRESETS["nvfp4"]
    # two passes (NVFP4's tensor amax), packed fp4 codes, one e4m3 scale per 16
    assert report.traffic(Case("t", nvfp4, "packed", "bf16", "rne"))[:2] == (4, 0.5 + 1 / 16)
    sr = nvfp4.replace(rounding="sr")
    assert report.traffic(Case("t", sr, "fake", "fp32", "rbits")) == (2 * 4 + 8, 4, 2)
    # mxfp8: one pass, a byte a code, one e8m0 byte per 32
    assert report.traffic(Case("t", QUANT_PRESETS["mxfp8"], "packed", "fp16", "rne")) == (
        2,
        1 + 1 / 32,
        1,
    )


def test_a_spill_fails_unless_its_row_says_why(monkeypatch):
    record = dict(registers=255, spill_stores=64, spill_loads=64, shared=0, num_warps=8, fma=[])
    consts = dict(FAKE=False, STATS=True)
    row = report.Row("_quantize_kernel", "QuantSpec x stats fp32", 1, "32x128/32x1", consts)
    row.records = {80: record, 90: dict(record, spill_stores=0, spill_loads=0)}
    assert row.kind == "quantize 32x128/32x1 stats"
    (problem,) = report.problems([row], [80, 90])
    assert "spills (sm_80 64/64 B)" in problem and "ACCEPTED_SPILLS" in problem
    assert "[spills: NOT ACCEPTED]" in report.aot_text([row], [80, 90], 1, "3.9.0", "cmd")
    row.records[80] = dict(record, spill_stores=report.SMALL_SPILL_BYTES, spill_loads=4)
    assert report.problems([row], [80, 90]) == []  # a register or two: accepted anywhere
    assert report.SMALL_SPILL_REASON in report.aot_text([row], [80, 90], 1, "3.9.0", "cmd")
    row.records[80] = record
    monkeypatch.setitem(report.ACCEPTED_SPILLS, "quantize 32x128/* stats", "a cold path")
    assert report.problems([row], [80, 90]) == []
    text = report.aot_text([row], [80, 90], 1, "3.9.0", "cmd")
    assert "[spills: note 1]" in text and "# spill note 1: a cold path" in text
