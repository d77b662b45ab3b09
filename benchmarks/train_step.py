"""Training-step cost per precision preset, measured in one process.

    .venv/bin/python benchmarks/train_step.py [--recipe gpt-tiny] [--steps 10]
        [--configs bf16 fp8_rowwise:native fp8_rowwise:emulated ...] [--set k=v ...]

For each config (a precision preset, optionally `:gemm` for precision.gemm: emulated,
native or auto, the recipe's default): mean seconds per optimizer step (after warm-up
steps), tokens/s, and the cost relative to the first config (bf16 by default), all
measured in this run on this machine. On CUDA also the peak memory allocated during the
timed steps against the planner's estimate for one GPU (nblab.parallel.planner); on the
CPU also this process's CPU seconds per step (what other work on a shared machine does
not inflate; run with OMP_NUM_THREADS=1 to compare them). Each run's precision plan says
which GEMMs ran natively. Prints a table; --out
writes it to a file, --json the rows, --plans one plan file per config.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from steps import QUIET

from nblab import Recipe
from nblab.train.trainer import Trainer

PRESETS = ["bf16", "fp8_tensorwise", "fp8_rowwise", "mxfp8", "mxfp4", "nvfp4", "int8_rowwise"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(recipe: Recipe, steps: int, warmup: int) -> dict:
    """Seconds per step of `recipe` (its own trainer), and on CUDA the peak memory of
    the timed steps and the planner's estimate of it."""
    trainer = Trainer(recipe.with_overrides([*QUIET, f"train.steps={warmup + steps}"]))
    for _ in range(warmup):
        trainer.train_step()
    device = trainer.device
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        trainer.train_step()
    _sync(device)
    out = {"s_per_step": (time.perf_counter() - start) / steps, "plan": str(trainer.plan)}
    # this process's CPU seconds: on a shared CPU the cost that other work does not inflate
    out["cpu_s_per_step"] = (time.process_time() - cpu_start) / steps
    if device.type == "cuda":
        from nblab.parallel import ParallelDims
        from nblab.parallel.planner import estimate_layout

        total = torch.cuda.get_device_properties(device).total_memory
        est = estimate_layout(recipe, ParallelDims(), total, vocab_size=trainer.dataset.vocab_size)
        out["peak_bytes"] = torch.cuda.max_memory_allocated(device)
        out["planner_bytes"] = est.memory["total"]
        out["planner_parts"] = est.memory
    return out


def _config(text: str) -> tuple[str, list[str]]:
    preset, _, gemm = text.partition(":")
    return text, [f"precision.preset={preset}"] + ([f"precision.gemm={gemm}"] if gemm else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="gpt-tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--configs", "--presets", nargs="*", default=PRESETS)
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides, e.g. k=v")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plans", type=Path, help="write each config's precision plan here")
    parser.add_argument("--check", action="store_true", help="validate every recipe, run none")
    args = parser.parse_args(argv)

    base = Recipe.preset(args.recipe).with_overrides(args.set)  # validates: RecipeError
    recipes = [base.with_overrides(_config(text)[1]) for text in args.configs]
    if args.check:
        print(f"{len(recipes)} recipes valid: {' '.join(args.configs)}")
        return 0
    t = base.train
    cuda = torch.cuda.is_available() and t.device != "cpu"
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    lines = [
        f"train_step benchmark: recipe {args.recipe} ({base.model.flavour}), batch {t.batch_size}"
        f" x seq {t.seq_len}, {t.dtype}, {args.steps} timed steps after {args.warmup} warm-up"
        + (f"; overrides {' '.join(args.set)}" if args.set else ""),
        f"device: {'cuda' if cuda else 'cpu'} ({name}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}",
        "",
        f"{'config':24s} {'s/step':>8s} {'steps/s':>8s} {'tokens/s':>10s} {'vs first':>8s}"
        + (f" {'peak GB':>8s} {'planner GB':>10s} {'peak/plan':>9s}" if cuda else "")
        + ("" if cuda else f" {'cpu s/step':>10s} {'vs first':>8s}"),
    ]
    print("\n".join(lines), flush=True)
    rows, first, first_cpu = [], None, None
    for text, recipe in zip(args.configs, recipes, strict=True):
        label = text
        m = measure(recipe, args.steps, args.warmup)
        sec = m["s_per_step"]
        first = first or sec
        line = (
            f"{label:24s} {sec:8.3f} {1 / sec:8.2f} {t.batch_size * t.seq_len / sec:10.0f} "
            f"{sec / first:7.2f}x"
        )
        if cuda:
            peak, plan = m["peak_bytes"], m["planner_bytes"]
            line += f" {peak / 1e9:8.2f} {plan / 1e9:10.2f} {peak / plan:9.2f}"
        else:
            cpu_sec = m["cpu_s_per_step"]
            first_cpu = first_cpu or cpu_sec
            line += f" {cpu_sec:10.3f} {cpu_sec / first_cpu:7.2f}x"
        lines.append(line)
        print(line, flush=True)
        rows.append({"config": label, **{k: v for k, v in m.items() if k != "plan"}})
        rows[-1]["gemms"] = m["plan"].splitlines()[0]
        if args.plans:
            args.plans.mkdir(parents=True, exist_ok=True)
            (args.plans / f"{label.replace(':', '-')}.txt").write_text(m["plan"] + "\n")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
