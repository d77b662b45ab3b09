"""Final loss per precision preset for one recipe, trained to the end in this process.

    .venv/bin/python benchmarks/formats_loss.py [--recipe gpt-tiny] [--steps 200]

Every preset trains the same model from the same seed on the same batches; the
table gives final train loss, val loss and the gap to bf16.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from nblab import Recipe
from nblab.runs import RunStore
from nblab.train.trainer import train

PRESETS = ["bf16", "mxfp8", "nvfp4", "mxfp4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="gpt-tiny")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    home = os.environ.get("NBLAB_HOME") or tempfile.mkdtemp(prefix="nblab-bench-")
    store = RunStore(home)
    base = Recipe.preset(args.recipe).with_overrides(
        [
            f"train.steps={args.steps}",
            f"eval.interval={args.steps}",
            "metrics.stats_interval=0",
            "metrics.histogram_interval=0",
        ]
    )
    lines = [
        f"formats_loss: recipe {args.recipe}, {args.steps} steps, seed {base.train.seed}, "
        f"torch {torch.__version__}, device {'cuda' if torch.cuda.is_available() else 'cpu'}",
        "",
        f"{'preset':14s} {'loss':>8s} {'val_loss':>9s} {'gap':>8s} {'minutes':>8s}",
    ]
    print("\n".join(lines), flush=True)
    bf16 = None
    for preset in args.presets:
        start = time.perf_counter()
        result = train(base.with_overrides([f"precision.preset={preset}"]), store=store)
        minutes = (time.perf_counter() - start) / 60
        val = result.metrics.get("val_loss", float("nan"))
        bf16 = val if preset == "bf16" else bf16
        gap = f"{val - bf16:+8.4f}" if bf16 is not None else "       -"
        line = (
            f"{preset:14s} {result.metrics.get('loss', float('nan')):8.4f} {val:9.4f} "
            f"{gap} {minutes:8.1f}  {result.status}"
        )
        lines.append(line)
        print(line, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
