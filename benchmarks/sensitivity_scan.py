"""The full sensitivity scan of gpt-tiny: every linear, three formats, timed in one process.

    .venv/bin/python benchmarks/sensitivity_scan.py [--presets nvfp4 mxfp4 int4_b32]
        [--steps 30] [--batches N] [--weights-only] [--compare-full] [--threads N]
        [--compare-threads N] [--out FILE]

A gpt-tiny checkpoint is trained in bf16 for --steps steps (the scan's cost does not depend
on how well it trained), loaded once, then scanned by module in each format: every linear
quantized alone (weights and activations, or --weights-only), on the run's fixed eval
batches (eval.batches, 10 of 16 x 128 tokens, unless --batches). Printed per format: the
configurations, forward passes (one per batch: the high-precision pass and one per
configuration), blocks computed (the prefix replay skips those before the quantized
module), wall and CPU seconds. --compare-full also scans the first format with full
forwards (no replay) and prints the ratio, measured in the same process.
The target (issue 14): the whole scan under 60 s on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
from pathlib import Path

import torch

from nblab import Recipe
from nblab.eval.ptq import Evaluator
from nblab.eval.sensitivity import scan
from nblab.eval.source import eval_recipe, resolve_source
from nblab.runs import RunStore
from nblab.train.trainer import train

PRESETS = ["nvfp4", "mxfp4", "int4_b32"]


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, {gpu}"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batches", type=int)
    parser.add_argument("--weights-only", action="store_true")
    parser.add_argument("--compare-full", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, help="torch threads (default torch's: one per core)")
    parser.add_argument(
        "--compare-threads",
        type=int,
        metavar="N",
        help="then scan the first format again with N torch threads, in this process",
    )
    args = parser.parse_args()
    if args.threads:  # on a busy machine two OpenMP threads can wait on each other
        torch.set_num_threads(args.threads)

    home = os.environ.get("NBLAB_HOME") or tempfile.mkdtemp(prefix="nblab-bench-")
    store = RunStore(home)
    os.environ["NBLAB_HOME"] = str(store.home)  # recipe validation reads the store there
    recipe = Recipe.preset("gpt-tiny").with_overrides(
        [
            f"train.steps={args.steps}",
            f"eval.interval={args.steps}",
            "metrics.stats_interval=0",
            "metrics.histogram_interval=0",
        ]
    )
    trained = train(recipe, store=store)
    source = resolve_source(trained.run_id, store=store)
    evaluator = Evaluator(eval_recipe(source, batches=args.batches), source)
    batches = evaluator.trainer.val_batches()
    tokens = sum(x.numel() for x, _ in batches)
    what = "weights only" if args.weights_only else "weights and activations"
    lines = [
        f"sensitivity_scan: gpt-tiny ({len(evaluator.linears)} linears) trained {args.steps} "
        f"steps in bf16, scanned by module, {what}, {len(batches)} eval batches "
        f"({tokens} tokens), torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"machine: {machine()}; start: {load()}",
        "",
        f"{'format':10s} {'configs':>7s} {'forwards':>8s} {'blocks':>7s} {'wall s':>7s} "
        f"{'cpu s':>7s}  most sensitive",
    ]
    print("\n".join(lines), flush=True)
    total_wall = total_cpu = 0.0
    total_forwards = 0
    for preset in args.presets:
        result = scan(evaluator, preset, weights_only=args.weights_only)
        total_wall += result.seconds
        total_cpu += result.cpu_seconds
        total_forwards += result.forward_passes
        configs = sum(1 for r in result.rows if not r.reason)
        top = max((r for r in result.rows if not r.reason), key=lambda r: r.delta_loss)
        line = (
            f"{preset:10s} {configs:7d} {result.forward_passes:8d} {result.block_passes:7d} "
            f"{result.seconds:7.1f} {result.cpu_seconds:7.1f}  {top.module} "
            f"({top.delta_loss:+.4f})"
        )
        print(line, flush=True)
        lines.append(line)
    summary = [
        f"{'all':10s} {'':7s} {total_forwards:8d} {'':7s} {total_wall:7.1f} {total_cpu:7.1f}",
        "",
        f"the full scan ({len(args.presets)} formats): {total_forwards} forward passes of "
        f"one eval batch ({tokens // len(batches)} tokens), {total_wall:.1f} s wall, "
        f"{total_cpu:.1f} s CPU (target: under 60 s)",
    ]
    if args.compare_full:
        preset = args.presets[0]
        replayed = scan(evaluator, preset, weights_only=args.weights_only)
        full = scan(evaluator, preset, weights_only=args.weights_only, replay=False)
        same = all(
            a.delta_loss == b.delta_loss or a.reason
            for a, b in zip(replayed.rows, full.rows, strict=True)
        )
        summary.append(
            f"{preset} with full forwards (no prefix replay): {full.block_passes} blocks, "
            f"{full.seconds:.1f} s wall, {full.cpu_seconds:.1f} s CPU; with replay "
            f"{replayed.block_passes} blocks, {replayed.seconds:.1f} s, {replayed.cpu_seconds:.1f}"
            f" s CPU: {full.cpu_seconds / replayed.cpu_seconds:.2f}x less CPU; rows identical: "
            f"{same}"
        )
    if args.compare_threads:
        preset, threads = args.presets[0], torch.get_num_threads()
        torch.set_num_threads(args.compare_threads)
        other = scan(evaluator, preset, weights_only=args.weights_only)
        torch.set_num_threads(threads)
        again = scan(evaluator, preset, weights_only=args.weights_only)
        summary.append(
            f"{preset} with {args.compare_threads} threads: {other.seconds:.1f} s wall, "
            f"{other.cpu_seconds:.1f} s CPU; with {threads} again after it: {again.seconds:.1f}"
            f" s wall, {again.cpu_seconds:.1f} s CPU: {other.seconds / again.seconds:.2f}x the "
            f"wall time ({load()})"
        )
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    summary.append(f"end: {load()}; measured {when}")
    print("\n".join(summary), flush=True)
    lines += summary
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
