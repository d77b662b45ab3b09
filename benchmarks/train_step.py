"""Training-step cost per precision preset, measured in one process.

    .venv/bin/python benchmarks/train_step.py [--recipe gpt-tiny] [--steps 10]
        [--backends auto reference] [--repeat 2]

For each preset and quantizer backend: mean seconds per optimizer step (after warm-up
steps, whose time, compiling included, is printed as "warm-up"), tokens/s, and the
emulation overhead = step time / bf16 step time, all measured in this run on this
machine. With --repeat the presets are measured in turn that many times (bf16 each
time) and each ratio uses the bf16 time of its own pass; the table keeps the median.
Losses of the timed steps are compared with the first backend's: an equal loss curve
says the backends computed the same numbers. Prints a table; --out writes it too.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from nblab import Recipe
from nblab.train.trainer import Trainer

PRESETS = ["bf16", "fp8_tensorwise", "fp8_rowwise", "mxfp8", "mxfp4", "nvfp4", "int8_rowwise"]


def seconds_per_step(recipe: Recipe, steps: int, warmup: int) -> tuple[float, float, list]:
    """(seconds per timed step, seconds of the warm-up steps, losses of the timed steps)."""
    overrides = [
        "eval.interval=0",
        "metrics.stats_interval=0",
        "metrics.histogram_interval=0",
        f"train.steps={warmup + steps}",
    ]
    trainer = Trainer(recipe.with_overrides(overrides))
    start = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    losses = [trainer.train_step() for _ in range(steps)]
    return (time.perf_counter() - start) / steps, warm, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="gpt-tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    parser.add_argument("--backends", nargs="*", default=["auto"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = Recipe.preset(args.recipe)
    t = base.train
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [
        f"train_step benchmark: recipe {args.recipe} ({base.model.flavour}), batch {t.batch_size}"
        f" x seq {t.seq_len}, {args.steps} timed steps after {args.warmup} warm-up,"
        f" {args.repeat} pass(es), median shown",
        f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}",
        "",
        f"{'preset':16s} {'backend':9s} {'s/step':>8s} {'tokens/s':>10s} {'vs bf16':>8s}"
        f" {'warm-up':>8s}  losses",
    ]
    print("\n".join(lines), flush=True)
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    losses: dict[tuple[str, str], list] = {}
    for _ in range(args.repeat):
        bf16, _, _ = seconds_per_step(base, args.steps, args.warmup)
        for preset in args.presets:
            for backend in args.backends if preset != "bf16" else args.backends[:1]:
                over = [f"precision.preset={preset}", f"precision.backend={backend}"]
                recipe = base.with_overrides(over)
                sec, warm, curve = seconds_per_step(recipe, args.steps, args.warmup)
                runs.setdefault((preset, backend), []).append((sec, sec / bf16, warm))
                losses[(preset, backend)] = curve
    for (preset, backend), values in runs.items():
        sec = statistics.median(v[0] for v in values)
        ratio = statistics.median(v[1] for v in values)
        warm = statistics.median(v[2] for v in values)
        first = losses[(preset, args.backends[0])]
        same = "equal" if losses[(preset, backend)] == first else "differ"
        if backend == args.backends[0]:
            same = f"{first[0]:.4f} .. {first[-1]:.4f}"
        line = (
            f"{preset:16s} {backend:9s} {sec:8.3f} {t.batch_size * t.seq_len / sec:10.0f} "
            f"{ratio:7.2f}x {warm:7.1f}s  {same}"
        )
        lines.append(line)
        print(line, flush=True)
    lines.append("")
    lines.append(
        f"load average (1/5/15 min): before {load_before}, after "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
    )
    print(lines[-1])
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
