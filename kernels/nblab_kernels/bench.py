"""Quantizer bandwidth against a device copy, measured in one process.

    PYTHONPATH=kernels:. python -m nblab_kernels.bench [--shape 8192x8192] [--out [PATH]]

For each case (a preset and an op) it prints one JSON line: GB/s moved (bytes = the
input read + every output written), the GB/s of `x.clone()` measured in the same
process, and their ratio; then the same for the peer, torchao's quantizer when
torchao is importable, else the reference under torch.compile (`--peer`).

On CUDA the Triton kernels are measured. Without CUDA only the reference runs, on a
small shape, and every line says backend "reference" and device "cpu": those are not
kernel figures (the Triton interpreter is far slower still and is not measured).
`--out` writes the lines to PATH, by default benchmarks/results/kernels-<device>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import ops, reference
from .formats import QUANT_PRESETS, QuantSpec

CPU_SHAPE = (256, 256)
GPU_SHAPE = (8192, 8192)


@dataclass(frozen=True)
class Case:
    """One measured op: `op` is "quantize" (codes + scales written) or "fake_quantize"."""

    name: str
    spec: QuantSpec
    op: str
    torchao: str | None = None  # the torchao quantizer that is its peer, if any


CASES = (
    Case("mxfp8", QUANT_PRESETS["mxfp8"], "quantize", torchao="mxfp8"),
    Case("mxfp4_packed", QUANT_PRESETS["mxfp4"], "quantize", torchao="mxfp4"),
    Case("nvfp4_packed", QUANT_PRESETS["nvfp4"], "quantize", torchao="nvfp4"),
    Case("fake_mxfp4", QUANT_PRESETS["mxfp4"], "fake_quantize"),
    Case("fake_nvfp4", QUANT_PRESETS["nvfp4"], "fake_quantize"),
    Case("hadamard16_nvfp4", QUANT_PRESETS["nvfp4"].replace(hadamard=16), "quantize"),
    Case("fp8_tensorwise", QUANT_PRESETS["fp8_e4m3_tensor"], "quantize"),
)


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> float:
    """Median milliseconds of fn() over iters calls after warmup calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _nbytes(out) -> int:
    """Bytes of every tensor an op returned (a QTensor's codes and scales)."""
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, reference.QTensor):
        return sum(_nbytes(t) for t in (out.codes, out.scale, out.tensor_scale) if t is not None)
    if isinstance(out, (tuple, list)):
        return sum(_nbytes(t) for t in out if t is not None)
    return 0


def gbps(fn: Callable[[], object], x: torch.Tensor, iters: int, warmup: int) -> float:
    moved = _nbytes(x) + _nbytes(fn())
    ms = time_ms(fn, x.device, iters, warmup)
    return moved / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------------------
# implementations
# ---------------------------------------------------------------------------


def _ours(case: Case, x: torch.Tensor, backend: str) -> Callable[[], object]:
    op = getattr(ops, case.op)
    return lambda: op(x, case.spec, backend=backend)


def _torchao(case: Case, x: torch.Tensor) -> Callable[[], object] | None:
    """torchao's own quantizer for the case (compiled), or None when it has none or
    torchao is not importable (a bench-only extra)."""
    if case.torchao is None:
        return None
    try:
        if case.torchao == "nvfp4":
            from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor

            def quantize(t):
                q = NVFP4Tensor.to_nvfp4(t)
                return q.qdata, q._scale_e4m3

        else:
            from torchao.prototype.mx_formats.mx_tensor import to_mx

            elem = torch.float8_e4m3fn if case.torchao == "mxfp8" else torch.float4_e2m1fn_x2

            def quantize(t):
                return to_mx(t, elem, 32)

    except Exception:  # not installed, or an API this version does not have
        return None
    compiled = torch.compile(quantize)
    return lambda: compiled(x)


def _compiled_reference(case: Case, x: torch.Tensor) -> Callable[[], object]:
    op = getattr(reference, case.op)
    compiled = torch.compile(lambda t: op(t, case.spec))
    return lambda: compiled(x)


def _sig(v: float, digits: int = 4) -> float:
    """v to `digits` significant digits (GB/s on cpu are tiny, on an H200 thousands)."""
    return float(f"{v:.{digits}g}")


def _device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    for short in ("h200", "h100", "b200", "gb200", "a100", "l40s", "l4", "rtx"):
        if short in name:
            return short
    return name.replace(" ", "-")


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------


def run(
    shape: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
    iters: int,
    warmup: int,
    peer: str,
    cases: tuple[Case, ...] = CASES,
):
    """Yield one result dict per case, each with the copy measured alongside."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    backend = "triton" if device.type == "cuda" else "reference"
    dev_name = _device_name(device)
    copy = gbps(lambda: x.clone(), x, iters, warmup)
    for case in cases:
        row = {
            "case": case.name,
            "spec": case.spec.describe(),
            "op": case.op,
            "shape": list(shape),
            "dtype": str(dtype).removeprefix("torch."),
            "device": dev_name,
            "backend": backend,
        }
        try:
            ours = gbps(_ours(case, x, backend), x, iters, warmup)
        except Exception as err:  # keep measuring the other cases
            yield {**row, "error": f"{type(err).__name__}: {err}"}
            continue
        row.update(gbps=_sig(ours), copy_gbps=_sig(copy), ratio=_sig(ours / copy))
        if device.type != "cuda":
            row["note"] = "cpu: reference only, not a kernel measurement"
        peer_fn, peer_name = None, None
        if peer in ("auto", "torchao"):
            peer_fn, peer_name = _torchao(case, x), "torchao"
        if peer_fn is None and (peer == "compiled" or (peer == "auto" and device.type == "cuda")):
            peer_fn, peer_name = _compiled_reference(case, x), "compiled reference"
        if peer_fn is not None:
            try:
                peer_gbps = gbps(peer_fn, x, iters, warmup)
                row.update(peer=peer_name, peer_gbps=_sig(peer_gbps))
                row.update(peer_ratio=_sig(peer_gbps / copy), ratio_to_peer=_sig(ours / peer_gbps))
            except Exception as err:
                row.update(peer=peer_name, peer_error=f"{type(err).__name__}: {err}")
        yield row


def _shape(text: str) -> tuple[int, int]:
    try:
        m, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        msg = f"--shape {text!r}: expected MxK, e.g. 8192x8192"
        raise argparse.ArgumentTypeError(msg) from None
    return m, k


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nblab_kernels.bench", description=__doc__)
    parser.add_argument("--shape", type=_shape, help="MxK (default 8192x8192 cuda, 256x256 cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--cases", help="comma-separated case names: " + ", ".join(c.name for c in CASES)
    )
    parser.add_argument("--peer", choices=("auto", "torchao", "compiled", "none"), default="auto")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument(
        "--out", nargs="?", const="", help="write the JSON lines (default path: "
        "benchmarks/results/kernels-<device>.jsonl)"
    )  # fmt: skip
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape = args.shape or (GPU_SHAPE if device.type == "cuda" else CPU_SHAPE)
    cases = CASES
    if args.cases:
        wanted = args.cases.split(",")
        unknown = sorted(set(wanted) - {c.name for c in CASES})
        if unknown:
            parser.error(f"--cases {unknown} unknown; accepted: {', '.join(c.name for c in CASES)}")
        cases = tuple(c for c in CASES if c.name in wanted)
    if device.type != "cuda":
        print(
            f"# no CUDA device: timing the plain-torch reference on cpu, shape {shape}; "
            "these are not Triton kernel figures",
            file=sys.stderr,
        )
    rows, threads = [], torch.get_num_threads()
    try:
        if device.type != "cuda":
            torch.set_num_threads(1)  # a shared CPU: contending OpenMP threads would dominate
        for row in run(
            shape, DTYPES[args.dtype], device, args.iters, args.warmup, args.peer, cases
        ):
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        torch.set_num_threads(threads)
    if args.out is not None:
        path = Path(args.out or f"benchmarks/results/kernels-{_device_name(device)}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"# wrote {len(rows)} lines to {path}", file=sys.stderr)
    ok = all("error" not in r for r in rows) and all(math.isfinite(r["ratio"]) for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
