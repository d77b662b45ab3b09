"""scripts/gpu-check.sh --dry-run on a bare machine: a venv holding only torch, triton,
numpy and pytest (conftest.floor_python), the checkout on PYTHONPATH, no GPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pipworld as pw

SCRIPT = pw.REPO / "scripts" / "gpu-check.sh"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", pw.REPO / "scripts/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_run_lists_the_steps_and_its_imports_resolve_on_a_bare_machine(floor_python):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    proc = subprocess.run(
        [SCRIPT, "--dry-run"],
        env={**env, "PYTHON": str(floor_python)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("env", "cuda-tests", "kernel-bench", "train-small", "train-125m"):
        assert f"  {step} " in proc.stdout
    assert "nblab_kernels.bench --peer torchao" in proc.stdout
    assert "fp8_rowwise:native fp8_rowwise:emulated mxfp8 nvfp4" in proc.stdout
    assert "train-small: 7 recipes valid" in proc.stdout  # model.flavour=small and the rest
    assert "train-125m: 7 recipes valid" in proc.stdout
    assert "imports: ok" in proc.stdout
    collected = int(proc.stdout.split("cuda-tests collect ")[1].split()[0])
    assert collected > 100  # tests/gpu and the scaled-matmul file


def test_the_import_check_names_what_a_bare_machine_lacks(floor_python):
    gpu_check = _gpu_check()
    assert {"pandas", "tomli_w", "transformers", "papermill"} <= gpu_check.forbidden_modules()
    assert not {"torch", "triton", "numpy"} & gpu_check.forbidden_modules()
    # nblab.report needs pandas: here (every dependency installed) it imports, and the
    # check still names it; on the bare machine the import itself fails
    pulled = gpu_check.check_imports(sys.executable, ["nblab.report"])
    assert len(pulled) == 1 and "pandas" in pulled[0] and "tomli_w" in pulled[0]
    problems = gpu_check.check_imports(str(floor_python), ["nblab.report"])
    assert problems and "imports failed" in problems[0] and "No module named" in problems[0]
    assert gpu_check.check_imports(str(floor_python)) == []
