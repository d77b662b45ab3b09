"""fake_quantize and quantize on the CPU against a same-size clone, per shipped preset.

    .venv/bin/python benchmarks/quantize_cpu.py [--shape 2048 512] [--backends compiled
        reference] [--rounds 7] [--memory-mib 256] [--out benchmarks/results/quantize-cpu.txt]

For every QuantSpec preset of nblab_kernels.QUANT_PRESETS, each backend and each op:
the time of one call and its ratio to `x.clone()` of the same fp32 tensor, the median
over rounds, each round timing the clone and the op back to back in this process (so
a change of load hits both alike). GB/s counts the bytes the op must move: x read,
and the output written (fake_quantize: a tensor like x; quantize: codes and scales).
The clone's GB/s counts its read and write the same way. "from memory" is the same
ratio with x read from memory rather than cache: each call on another copy of x, the
copies together beyond the last-level cache (--memory-mib). The first call of each
(preset, op) on the compiled backend includes compiling its graph: that time is
printed separately ("first call") and left out of the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

import nblab_kernels as nk

TARGET = 3.0  # issue 16: within 3x of a same-size clone


def _once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ratio_to_clone(fn, x: torch.Tensor, rounds: int, inner: int) -> tuple[float, float, float]:
    """(median of op/clone over rounds, median op seconds, median clone seconds)."""
    ratios, ops, clones = [], [], []
    for _ in range(rounds):
        clone = min(_once(x.clone) for _ in range(inner))
        op = min(_once(fn) for _ in range(inner))
        ratios.append(op / clone)
        ops.append(op)
        clones.append(clone)
    return statistics.median(ratios), statistics.median(ops), statistics.median(clones)


def ratio_from_memory(fn, copies: list[torch.Tensor]) -> float:
    """Median op time over median clone time, each call on the next of `copies`, which
    together span more than the last-level cache: every call reads x from memory (what
    a training step's activations mostly do), where the in-cache ratio above reads it
    from cache."""
    clone = statistics.median(_once(c.clone) for c in copies)
    op = statistics.median(_once(lambda c=c: fn(c)) for c in copies)
    return op / clone


def _out_bytes(x: torch.Tensor, op: str, spec: nk.QuantSpec) -> int:
    if op == "fake_quantize":
        return x.numel() * x.element_size()
    q = nk.quantize(x, spec, backend="reference")
    scales = 0 if q.scale is None else q.scale.numel() * q.scale.element_size()
    return q.codes.numel() * q.codes.element_size() + scales


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(2048, 512))
    parser.add_argument("--backends", nargs="*", default=["compiled", "reference"])
    parser.add_argument("--presets", nargs="*", default=list(nk.QUANT_PRESETS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--memory-mib", type=int, default=256, help="copies of x spanning this much memory"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", nk.TritonFallbackWarning)  # casts run the reference

    x = torch.randn(*args.shape, generator=torch.Generator().manual_seed(0))
    x_bytes = x.numel() * x.element_size()
    copies = [x.clone() for _ in range(max(2, args.memory_mib * 2**20 // x_bytes))]
    load_before = _load()
    header = [
        f"quantize_cpu benchmark: fp32 x of shape {tuple(x.shape)} ({x_bytes / 2**20:.0f} MiB),"
        f" median of {args.rounds} rounds, each the best of {args.inner} clones then the best"
        f" of {args.inner} calls; from memory: the median over {len(copies)} copies of x"
        f" ({len(copies) * x_bytes / 2**20:.0f} MiB, beyond the last-level cache), one call"
        f" each, against a clone of each",
        f"machine: {platform.machine()} CPU, {os.cpu_count()} cores, {platform.platform()},"
        f" torch {torch.__version__}, {torch.get_num_threads()} torch threads",
        "",
        f"{'preset':17s} {'backend':9s} {'op':13s} {'ms':>8s} {'GB/s':>7s} {'vs clone':>8s}"
        f" {'from memory':>11s} {'first call':>10s}",
    ]
    print("\n".join(header), flush=True)
    rows, worst = [], {}
    for name in args.presets:
        spec = nk.QUANT_PRESETS[name]
        for backend in args.backends:
            for op in ("fake_quantize", "quantize"):
                fn = getattr(nk, op)

                def on(t, fn=fn, spec=spec, backend=backend):
                    return fn(t, spec, backend=backend)

                first = _once(lambda: on(x))
                ratio, sec, clone = ratio_to_clone(lambda: on(x), x, args.rounds, args.inner)
                cold = ratio_from_memory(on, copies)
                gbs = (x_bytes + _out_bytes(x, op, spec)) / sec / 1e9
                line = (
                    f"{name:17s} {backend:9s} {op:13s} {sec * 1e3:8.3f} {gbs:7.1f}"
                    f" {ratio:7.1f}x {cold:10.1f}x {first:9.2f}s"
                )
                rows.append(line)
                print(line, flush=True)
                for key, r in (
                    ((backend, op, "in cache"), ratio),
                    ((backend, op, "from memory"), cold),
                ):
                    if not spec.is_cast and r > worst.get(key, (0, ""))[0]:
                        worst[key] = (r, name)
    clone_gbs = 2 * x_bytes / clone / 1e9
    footer = [
        "",
        f"clone: {clone * 1e3:.3f} ms, {clone_gbs:.1f} GB/s (read + write)",
        f"load average (1/5/15 min): before {load_before}, after {_load()}",
    ]
    for (backend, op, where), (ratio, name) in sorted(worst.items()):
        verdict = "meets" if ratio <= TARGET else "misses"
        footer.append(
            f"{backend} {op}, x {where}: slowest quantizing preset {name} at {ratio:.1f}x"
            f" clone ({verdict} the <= {TARGET:g}x target)"
        )
    print("\n".join(footer))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(header + rows + footer) + "\n")


if __name__ == "__main__":
    main()
