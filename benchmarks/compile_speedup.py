"""train.compile = true against eager, per precision preset, measured in one process.

    .venv/bin/python benchmarks/compile_speedup.py [--recipe gpt-tiny] [--steps 10] [--out F]

For each preset: the first two steps of the compiled trainer (where torch.compile
traces and compiles), then --steps timed steps of eager and of compiled, alternating in
--rounds rounds so a change of load hits both; the speedup is eager / compiled median
seconds per step. Prints a table; --out writes it too.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from steps import QUIET, seconds_per_step

from nblab import Recipe
from nblab.train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="gpt-tiny")
    parser.add_argument("--presets", nargs="*", default=["bf16", "fp8_tensorwise"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base = Recipe.preset(args.recipe).with_overrides(
        [*QUIET, f"train.steps={2 + args.steps * args.rounds}"]
    )
    t = base.train
    lines = [
        f"train.compile benchmark: recipe {args.recipe}, batch {t.batch_size} x seq "
        f"{t.seq_len}, {args.rounds} rounds of {args.steps} steps, eager and compiled "
        f"alternating",
        f"device: cpu ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}",
        "",
        f"{'preset':16s} {'compile s':>9s} {'eager s/step':>12s} {'compiled':>9s} {'speedup':>8s}",
    ]
    print("\n".join(lines), flush=True)
    for preset in args.presets:
        recipe = base.with_overrides([f"precision.preset={preset}"])
        torch._dynamo.reset()
        eager = Trainer(recipe)
        compiled = Trainer(recipe.with_overrides(["train.compile=true"]))
        start = time.perf_counter()
        compiled.train_step()
        compiled.train_step()
        first = time.perf_counter() - start
        eager.train_step()
        eager.train_step()
        seconds = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            seconds["eager"].append(seconds_per_step(eager, args.steps))
            seconds["compiled"].append(seconds_per_step(compiled, args.steps))
        e, c = (statistics.median(seconds[k]) for k in ("eager", "compiled"))
        line = f"{preset:16s} {first:9.1f} {e:12.3f} {c:9.3f} {e / c:7.2f}x"
        lines.append(line)
        print(line, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
