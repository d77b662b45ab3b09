"""Everything about the GPU path that needs a GPU, in one command (scripts/gpu-check.sh).

Runs from a checkout with no install (PYTHONPATH=kernels:.) on a machine that has torch,
triton, numpy and pytest, and writes every result under one folder (--out, default
gpu-check/<gpu>-<UTC time>/):

  env            nvidia-smi, torch / triton versions, the device and its capability
  cuda-tests     tests/gpu: the compiled kernels bit for bit against the reference on
                 GPU shapes, native scaled GEMMs (torch._scaled_mm) against the
                 dequantized product, what precision.gemm=auto picks on this GPU
  kernel-bench   nblab_kernels.bench: each quantizer's GB/s against a device copy in
                 the same process, and against torchao's when torchao is importable
  train-small    benchmarks/train_step.py on gpt-small, bf16 autocast: bf16, fp8
                 (tensor-wise and row-wise, native and emulated GEMMs), mxfp8, nvfp4;
                 peak memory against the planner's estimate (nblab.parallel.planner)
  train-125m     the same on gpt-125m, where GEMMs are large enough for fp8 to matter

The steps share an 8-minute budget (one H100): each gets at most its own limit and what
is left. A failed or timed-out step is recorded and the next one runs. summary.md says
what ran, how long it took and how it ended.

--dry-run lists the steps and checks, without a GPU, that everything they import
resolves and that nothing outside torch, triton, numpy and pytest is needed (no other
dependency of nblab's, such as pandas or transformers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 480  # 8 minutes on one H100, all steps together

# What the steps import (the test files are collected in the dry run as well).
MODULES = (
    "torch",
    "triton",
    "numpy",
    "pytest",
    "nblab_kernels.triton.quantize",
    "nblab_kernels.bench",
    "nblab.precision.gemm",
    "nblab.train.trainer",
    "nblab.parallel.planner",
    "train_step",  # benchmarks/train_step.py
)
CUDA_TESTS = ("tests/gpu", "tests/kernels/test_scaled_matmul.py")
TRAIN_CONFIGS = (
    "bf16",
    "fp8_tensorwise:native",
    "fp8_tensorwise:emulated",
    "fp8_rowwise:native",
    "fp8_rowwise:emulated",
    "mxfp8",
    "nvfp4",
)

ENV_SCRIPT = """
import json, subprocess, sys
import torch, triton
info = {"python": sys.version.split()[0], "torch": torch.__version__,
        "triton": triton.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, capability=list(torch.cuda.get_device_capability(0)),
                memory_bytes=p.total_memory, devices=torch.cuda.device_count())
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True,
                                        timeout=30).stdout
except (OSError, subprocess.SubprocessError) as err:
    info["nvidia_smi"] = f"unavailable: {err}"
print(json.dumps(info, indent=1))
"""


@dataclass
class Step:
    name: str
    argv: list[str]
    limit_s: int
    stdout: str  # file under the results folder that gets the step's stdout
    env: dict | None = None


def steps(out: Path, python: str, device: str) -> list[Step]:
    train = [python, "benchmarks/train_step.py", "--recipe", "gpt-tiny", "--warmup", "3"]
    train += ["--steps", "10", "--configs", *TRAIN_CONFIGS]

    def train_args(flavour: str, batch: int, seq: int) -> list[str]:
        sets = [f"model.flavour={flavour}", "train.dtype=bfloat16"]
        sets += [f"train.batch_size={batch}", f"train.seq_len={seq}"]
        return [
            *train,
            "--set",
            *sets,
            "--out",
            str(out / f"train-step-{flavour}-{device}.txt"),
            "--json",
            str(out / f"train-step-{flavour}-{device}.jsonl"),
            "--plans",
            str(out / f"plans-{flavour}"),
        ]

    pytest = [python, "-m", "pytest", "-q", "-rs", "-s", "-p", "no:cacheprovider"]
    pytest += ["-o", "addopts=", "--junitxml", str(out / "cuda-tests.xml"), *CUDA_TESTS]
    return [
        Step("env", [python, "-c", ENV_SCRIPT], 60, "env.json"),
        Step("cuda-tests", pytest, 240, "cuda-tests.log", {"TRITON_INTERPRET": "0"}),
        Step(
            "kernel-bench",
            [python, "-m", "nblab_kernels.bench", "--peer", "torchao", "--out"]
            + [str(out / f"kernels-{device}.jsonl")],
            120,
            "kernel-bench.log",
        ),
        Step("train-small", train_args("small", 32, 512), 150, "train-small.log"),
        Step("train-125m", train_args("125m", 16, 512), 150, "train-125m.log"),
    ]


# ---------------------------------------------------------------------------
# the dry run: what would run, and do its imports resolve on a bare machine
# ---------------------------------------------------------------------------


def _import_name(requirement: str) -> str:
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    return name.lower().replace("-", "_")


def forbidden_modules() -> set[str]:
    """Top-level import names of nblab's dependencies other than torch, triton and
    numpy: what a bare GPU machine does not have."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {_import_name(r) for r in project["dependencies"]}
    return names - {"torch", "triton", "numpy"}


IMPORT_CHECK = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def check_imports(python: str, modules=MODULES) -> list[str]:
    """Import `modules` in a fresh interpreter; return the problems (empty when every
    import resolves and none pulls a forbidden module)."""
    env = {**os.environ, "PYTHONPATH": _pythonpath(REPO / "benchmarks")}
    proc = subprocess.run(
        [python, "-c", IMPORT_CHECK, *modules], capture_output=True, text=True, env=env, cwd=REPO
    )
    if proc.returncode != 0:
        return [f"imports failed:\n{proc.stderr.strip()[-2000:]}"]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    pulled = sorted(loaded & forbidden_modules())
    return [f"imports pull {', '.join(pulled)}, which a bare GPU machine lacks"] if pulled else []


def dry_run(plan: list[Step], python: str) -> int:
    print(f"gpu-check --dry-run: {len(plan)} steps, {BUDGET_S} s budget in all")
    for s in plan:
        env = " ".join(f"{k}={v}" for k, v in (s.env or {}).items())
        shown = ["<ENV_SCRIPT of scripts/gpu_check.py>" if a == ENV_SCRIPT else a for a in s.argv]
        argv = " ".join(shown)
        print(f"  {s.name:13s} <= {s.limit_s:3d} s  {env + ' ' if env else ''}{argv}")
    problems = check_imports(python)
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "TRITON_INTERPRET": "1"}
    collect = subprocess.run(
        [python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *CUDA_TESTS],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    if collect.returncode != 0:
        problems.append(f"the CUDA tests do not collect:\n{collect.stdout[-2000:]}")
    else:
        n = re.search(r"(\d+) tests? collected", collect.stdout)
        print(f"  cuda-tests collect {n.group(1) if n else '?'} tests")
    for s in plan:  # the training benches' recipes are valid here
        if "benchmarks/train_step.py" in s.argv:
            check = subprocess.run(
                [*s.argv, "--check"], capture_output=True, text=True, env=env, cwd=REPO
            )
            if check.returncode != 0:
                problems.append(f"{s.name}: {check.stderr.strip()[-2000:]}")
            else:
                print(f"  {s.name}: {check.stdout.strip()}")
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    print("imports: ok (torch, triton, numpy, pytest only)" if not problems else "imports: FAILED")
    return 1 if problems else 0


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def _pythonpath(*more: Path) -> str:
    extra = os.environ.get("PYTHONPATH")
    paths = [str(REPO / "kernels"), str(REPO), *map(str, more)]
    return os.pathsep.join(paths + ([extra] if extra else []))


def _device_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    for short in ("h200", "h100", "b200", "gb200", "a100", "l40s", "l4"):
        if short in name:
            return short
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def run(plan: list[Step], out: Path) -> int:
    start, results = time.monotonic(), []
    for s in plan:
        left = BUDGET_S - (time.monotonic() - start)
        if left < 20:
            results.append((s.name, "skipped: the 8-minute budget is spent", 0.0))
            continue
        limit = min(s.limit_s, int(left))
        env = {**os.environ, "PYTHONPATH": _pythonpath(), **(s.env or {})}
        t0 = time.monotonic()
        print(f"[gpu-check] {s.name} (<= {limit} s) ...", flush=True)
        with open(out / s.stdout, "w") as stdout, open(out / f"{s.name}.err", "w") as stderr:
            try:
                rc = subprocess.run(
                    s.argv, stdout=stdout, stderr=stderr, env=env, cwd=REPO, timeout=limit
                ).returncode
                status = "ok" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                status = f"timed out after {limit} s"
        took = time.monotonic() - t0
        results.append((s.name, status, took))
        print(f"[gpu-check] {s.name}: {status} in {took:.0f} s", flush=True)
    total = time.monotonic() - start
    _summary(out, results, total)
    return 0 if all(status == "ok" for _, status, _ in results) else 1


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return "(none)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _summary(out: Path, results, total: float) -> None:
    text = [f"# gpu-check {out.name}", "", f"{total:.0f} s in all (budget {BUDGET_S} s)", ""]
    text += ["| step | status | seconds |", "|---|---|---|"]
    text += [f"| {name} | {status} | {took:.0f} |" for name, status, took in results]
    text += ["", "## cuda-tests", "```", _tail(out / "cuda-tests.log", 25), "```"]
    for table in sorted(out.glob("train-step-*.txt")):
        text += ["", f"## {table.stem}", "```", table.read_text().rstrip(), "```"]
    for bench in sorted(out.glob("kernels-*.jsonl")):
        text += ["", f"## {bench.stem}", "```", bench.read_text().rstrip(), "```"]
    (out / "summary.md").write_text("\n".join(text) + "\n")
    print(f"[gpu-check] results in {out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu-check.sh", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="list the steps, check imports")
    parser.add_argument("--out", type=Path, help="results folder (default gpu-check/...)")
    parser.add_argument("--only", nargs="*", help="run only these steps")
    args = parser.parse_args(argv)
    python = sys.executable
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    device = "cuda" if args.dry_run else _device_name()
    out = args.out or REPO / "gpu-check" / f"{device}-{stamp}"
    plan = steps(out, python, device)
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in plan})
        if unknown:
            parser.error(f"--only {unknown}: unknown; accepted: {', '.join(s.name for s in plan)}")
        plan = [s for s in plan if s.name in args.only]
    if args.dry_run:
        return dry_run(plan, python)
    if device == "cpu":
        print("gpu-check: no CUDA device visible; use --dry-run on a machine without one")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    return run(plan, out)


if __name__ == "__main__":
    sys.exit(main())
