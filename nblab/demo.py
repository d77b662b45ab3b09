"""The foundation demo: every element format, and what each preset costs on N(0,1).

`nblab demo` prints these tables, then runs the default CPU sweep and its report.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from nblab_kernels import ELEMENT_FORMATS, QUANT_PRESETS, QuantSpec, quant_stats, quantize


def format_rows() -> list[dict]:
    rows = []
    for name, fmt in ELEMENT_FORMATS.items():
        layout = f"1/{fmt.ebits}/{fmt.mbits}" if fmt.kind == "float" else fmt.kind
        rows.append(
            {
                "format": name,
                "bits": fmt.bits,
                "s/e/m": layout,
                "bias": fmt.bias if fmt.kind == "float" else "-",
                "max": f"{fmt.max:g}",
                "min normal": f"{fmt.min_normal:g}",
                "min subnormal": f"{fmt.min_subnormal:g}",
                "values": "-" if fmt.values is None else 2 * len(fmt.values) - 1,
            }
        )
    return rows


def bits_per_element(x: torch.Tensor, spec: QuantSpec) -> float:
    """Storage cost: element bits plus the scales' bits spread over the elements."""
    q = quantize(x, spec)
    scale_bits = 0 if q.scale is None else q.scale.numel() * q.scale.element_size() * 8
    if q.tensor_scale is not None:
        scale_bits += 32
    return spec.element_format.bits + scale_bits / x.numel()


def preset_rows(x: torch.Tensor) -> list[dict]:
    rows = []
    for name, spec in QUANT_PRESETS.items():
        stats = quant_stats(x, spec)
        rows.append(
            {
                "preset": name,
                "spec": spec.describe(),
                "bits/elem": f"{bits_per_element(x, spec):.2f}",
                "SQNR dB": "inf" if math.isinf(stats.sqnr_db) else f"{stats.sqnr_db:.2f}",
                "saturated %": f"{100 * stats.saturation:.3f}",
                "underflow %": f"{100 * stats.underflow:.3f}",
            }
        )
    return rows


def render(rows: list[dict]) -> str:
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = [
        "  ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths, strict=True)) for r in rows
    ]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


DEMO_SWEEP = "formats-cpu.toml"


def demo_sweep_path() -> Path:
    """sweeps/formats-cpu.toml: shipped in the package, or at the checkout's root."""
    for folder in (
        Path(__file__).resolve().parent / "sweeps",
        Path(__file__).resolve().parents[1] / "sweeps",
    ):
        if (folder / DEMO_SWEEP).is_file():
            return folder / DEMO_SWEEP
    raise FileNotFoundError(f"{DEMO_SWEEP} is not shipped with this nblab")


def main(jobs: int = 2, size: int = 1024, seed: int = 0, formats_only: bool = False) -> int:
    """The main job. 1: every format and what each preset costs on N(0,1). 2: the
    default CPU sweep (one small GPT, four precision presets) as batch jobs. 3: its
    report (report.ipynb + an offline report.html). Returns a process exit code."""
    started = time.perf_counter()
    x = torch.randn(size, size, generator=torch.Generator().manual_seed(seed))
    print("Element formats\n")
    print(render(format_rows()))
    print(f"\nPresets on N(0,1), {size}x{size}, seed {seed}\n")
    print(render(preset_rows(x)), flush=True)
    if formats_only:
        return 0

    from nblab.batch import run_sweep
    from nblab.batch.progress import watch
    from nblab.report import build_report, sweep_table
    from nblab.sweep import Sweep

    sweep = Sweep.from_toml(demo_sweep_path())
    print(f"\nSweep {sweep.name}: {len(sweep)} runs, {jobs} at a time\n{sweep.describe()}")
    handle = run_sweep(sweep, jobs=jobs, wait=False)
    try:
        watch(handle)  # a bar per run on a terminal, plain lines otherwise
    except KeyboardInterrupt:  # the jobs live in sessions of their own: stop them
        print(f"\ncancelling sweep {sweep.name}", file=sys.stderr)
        handle.cancel()
        handle.wait(timeout=30)
        return 1
    handle.wait()
    swept = time.perf_counter()
    print(f"\nsweep done, {swept - started:.0f}s since the start; building the report", flush=True)
    ipynb, html = build_report(sweep.name)
    table = sweep_table(sweep.name)
    columns = ["point", "status", "final_loss", "final_val_loss", "gap_to_bf16", "tokens_per_s"]
    print("\n" + table[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nreport: {html}\nnotebook: {ipynb}")
    ended = time.perf_counter()
    print(f"demo took {ended - started:.0f}s (the report {ended - swept:.0f}s)")
    return 0 if handle.succeeded else 1
