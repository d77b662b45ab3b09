"""Training-step cost per precision preset, measured in one process.

    .venv/bin/python benchmarks/train_step.py [--recipe gpt-tiny] [--steps 10]

For each preset: mean seconds per optimizer step (after warm-up steps), tokens/s,
and the emulation overhead = step time / bf16 step time, all measured in this run
on this machine. Prints a table; --out writes it to a file as well.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from nblab import Recipe
from nblab.train.trainer import Trainer

PRESETS = ["bf16", "fp8_tensorwise", "fp8_rowwise", "mxfp8", "mxfp4", "nvfp4", "int8_rowwise"]


def seconds_per_step(recipe: Recipe, steps: int, warmup: int) -> float:
    overrides = [
        "eval.interval=0",
        "metrics.stats_interval=0",
        "metrics.histogram_interval=0",
        f"train.steps={warmup + steps}",
    ]
    trainer = Trainer(recipe.with_overrides(overrides))
    for _ in range(warmup):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="gpt-tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    base = Recipe.preset(args.recipe)
    t = base.train
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    lines = [
        f"train_step benchmark: recipe {args.recipe} ({base.model.flavour}), batch {t.batch_size}"
        f" x seq {t.seq_len}, {args.steps} timed steps after {args.warmup} warm-up",
        f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}",
        "",
        f"{'preset':16s} {'s/step':>8s} {'steps/s':>8s} {'tokens/s':>10s} {'vs bf16':>8s}",
    ]
    print("\n".join(lines), flush=True)
    reference = None
    for preset in args.presets:
        recipe = base.with_overrides([f"precision.preset={preset}"])
        sec = seconds_per_step(recipe, args.steps, args.warmup)
        reference = reference or (sec if preset == "bf16" else None)
        ratio = f"{sec / reference:7.2f}x" if reference else "      -"
        line = (
            f"{preset:16s} {sec:8.3f} {1 / sec:8.2f} {t.batch_size * t.seq_len / sec:10.0f} "
            f"{ratio:>8s}"
        )
        lines.append(line)
        print(line, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
