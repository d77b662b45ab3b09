"""`python -m nblab_kernels.bench` runs on CPU: the reference only, clearly labelled,
one JSON line per case with the copy and the ratio (not timed: a smoke test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nblab_kernels import bench

ROOT = Path(__file__).resolve().parents[3]


def test_bench_prints_ratios_on_cpu_and_writes_the_results(tmp_path, capsys):
    out = tmp_path / "kernels-cpu.jsonl"
    code = bench.main(
        ["--shape", "16x64", "--iters", "1", "--warmup", "0", "--peer", "none", "--out", str(out)]
    )
    assert code == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["case"] for r in rows] == [c.name for c in bench.CASES]
    for row in rows:
        assert (
            row["device"] == "cpu"
            and row["backend"] == "reference"
            and "not a kernel" in row["note"]
        )
        assert row["ratio"] == pytest.approx(row["gbps"] / row["copy_gbps"], rel=1e-2)
        assert row["shape"] == [16, 64]
    assert "not Triton kernel figures" in captured.err
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


def test_bench_counts_read_and_written_bytes():
    import torch

    from nblab_kernels import QUANT_PRESETS, reference

    x = torch.zeros(16, 64, dtype=torch.bfloat16)
    qt = reference.quantize(x, QUANT_PRESETS["nvfp4"])
    # packed codes K/2 bytes per row, one e4m3 scale per 16, the fp32 tensor scale
    assert bench._nbytes(qt) == 16 * 32 + 16 * 4 + 4
    assert bench._nbytes(x) == 16 * 64 * 2


def test_bench_runs_as_a_module_without_installation():
    env = {**os.environ, "PYTHONPATH": "kernels:."}
    args = "--shape 8x32 --iters 1 --warmup 0 --peer none --cases mxfp8,fake_nvfp4 --device cpu"
    cmd = [sys.executable, "-m", "nblab_kernels.bench", *args.split()]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["case"] for r in rows] == ["mxfp8", "fake_nvfp4"] and all("ratio" in r for r in rows)


def test_bench_rejects_unknown_cases():
    with pytest.raises(SystemExit):
        bench.main(["--cases", "mxfp9"])
