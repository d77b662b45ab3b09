"""Training-step cost per precision preset, measured in one process.

    .venv/bin/python benchmarks/train_step.py [--recipe gpt-tiny] [--steps 10]
        [--configs bf16 fp8_rowwise:native fp8_rowwise:emulated mxfp8@compiled ...]
        [--backends auto reference] [--repeat 2] [--threads 1] [--set k=v ...]

For each config (a precision preset, optionally `:gemm` for precision.gemm: emulated,
native or auto, the recipe's default, and `@backend` for precision.backend: auto,
reference, compiled, triton; --backends measures every quantized config on each):
mean seconds per optimizer step (after warm-up steps, whose time, compiling included,
is printed as "warm-up"), tokens/s, and the cost relative to the first config (bf16 by
default), all measured in this run on this machine. With --repeat the configs are
measured in turn that many times and each ratio uses the first config's time of its own
pass; the table keeps the medians. The losses of the timed steps are compared across
the backends of one preset: "equal" says they computed the same numbers. On CUDA also
the peak memory allocated during the timed steps against the planner's estimate for one
GPU (nblab.parallel.planner); on the CPU also this process's CPU seconds per step (what
other work on a shared machine does not inflate; run with OMP_NUM_THREADS=1 to compare
them). Each run's precision plan says which GEMMs ran natively. Prints a table; --out
writes it to a file, --json the rows, --plans one plan file per config.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
    warm_start = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step()
    device = trainer.device
    _sync(device)
    warm = time.perf_counter() - warm_start
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    losses = [trainer.train_step() for _ in range(steps)]
    _sync(device)
    out = {"s_per_step": (time.perf_counter() - start) / steps, "plan": str(trainer.plan)}
    out["warmup_s"], out["losses"] = warm, losses
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


def _config(text: str) -> list[str]:
    """`preset[:gemm][@backend]` as recipe overrides."""
    text, _, backend = text.partition("@")
    preset, _, gemm = text.partition(":")
    return (
        [f"precision.preset={preset}"]
        + ([f"precision.gemm={gemm}"] if gemm else [])
        + ([f"precision.backend={backend}"] if backend else [])
    )


def _expand(configs: list[str], backends: list[str]) -> list[str]:
    """Each quantized config once per backend (bf16 quantizes nothing: once)."""
    out = []
    for text in configs:
        plain = "@" in text or text.split(":")[0] == "bf16" or not backends
        out += [text] if plain else [f"{text}@{b}" for b in backends]
    return out


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="gpt-tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--configs", "--presets", nargs="*", default=PRESETS)
    parser.add_argument("--backends", nargs="*", default=[])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides, e.g. k=v")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plans", type=Path, help="write each config's precision plan here")
    parser.add_argument("--check", action="store_true", help="validate every recipe, run none")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    base = Recipe.preset(args.recipe).with_overrides(args.set)  # validates: RecipeError
    configs = _expand(args.configs, args.backends)
    recipes = [base.with_overrides(_config(text)) for text in configs]
    if args.check:
        print(f"{len(recipes)} recipes valid: {' '.join(configs)}")
        return 0
    t = base.train
    cuda = torch.cuda.is_available() and t.device != "cpu"
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    lines = [
        f"train_step benchmark: recipe {args.recipe} ({base.model.flavour}), batch {t.batch_size}"
        f" x seq {t.seq_len}, {t.dtype}, {args.steps} timed steps after {args.warmup} warm-up"
        + (f", {args.repeat} passes (medians)" if args.repeat > 1 else "")
        + (f"; overrides {' '.join(args.set)}" if args.set else ""),
        f"device: {'cuda' if cuda else 'cpu'} ({name}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}",
        "",
        f"{'config':24s} {'s/step':>8s} {'steps/s':>8s} {'tokens/s':>10s} {'vs first':>8s}"
        + (f" {'peak GB':>8s} {'planner GB':>10s} {'peak/plan':>9s}" if cuda else "")
        + ("" if cuda else f" {'cpu s/step':>10s} {'vs first':>8s}")
        + f" {'warm-up':>8s}  losses",
    ]
    print("\n".join(lines), flush=True)
    load_before = _load()
    passes: dict[str, list[dict]] = {text: [] for text in configs}
    for _ in range(args.repeat):
        first = None
        for text, recipe in zip(configs, recipes, strict=True):
            m = measure(recipe, args.steps, args.warmup)
            first = first or m
            m["ratio"] = m["s_per_step"] / first["s_per_step"]
            m["cpu_ratio"] = m["cpu_s_per_step"] / first["cpu_s_per_step"]
            passes[text].append(m)
    rows, first_losses = [], {}
    for text in configs:
        runs = passes[text]
        m = {
            k: statistics.median(r[k] for r in runs)
            for k in runs[0]
            if k.endswith(("_s", "s_per_step", "ratio", "bytes"))
        }
        m |= {"plan": runs[-1]["plan"], "losses": runs[-1]["losses"]}
        sec = m["s_per_step"]
        line = (
            f"{text:24s} {sec:8.3f} {1 / sec:8.2f} {t.batch_size * t.seq_len / sec:10.0f} "
            f"{m['ratio']:7.2f}x"
        )
        if cuda:
            peak, plan = m["peak_bytes"], runs[-1]["planner_bytes"]
            line += f" {peak / 1e9:8.2f} {plan / 1e9:10.2f} {peak / plan:9.2f}"
        else:
            line += f" {m['cpu_s_per_step']:10.3f} {m['cpu_ratio']:7.2f}x"
        # the same preset and gemm on another backend: the same numbers?
        reference = first_losses.setdefault(text.partition("@")[0], m["losses"])
        curve = m["losses"]
        same = (
            f"{curve[0]:.4f} .. {curve[-1]:.4f}"
            if curve is reference
            else ("equal" if curve == reference else "differ")
        )
        line += f" {m['warmup_s']:7.1f}s  {same}"
        lines.append(line)
        print(line, flush=True)
        rows.append({"config": text, **{k: v for k, v in m.items() if k != "plan"}})
        rows[-1]["gemms"] = m["plan"].splitlines()[0]
        if args.plans:
            args.plans.mkdir(parents=True, exist_ok=True)
            name = text.replace(":", "-").replace("@", "-")
            (args.plans / f"{name}.txt").write_text(m["plan"] + "\n")
    lines += ["", f"load average (1/5/15 min): before {load_before}, after {_load()}"]
    print(lines[-1])
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
