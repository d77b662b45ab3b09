"""Tokens/s of a Hugging Face Llama against nblab's GPT of the same size, one process.

    .venv/bin/python benchmarks/model_throughput.py [--steps 10] [--rounds 3] [--out FILE]

Both are gpt-tiny's shape (d 128, 4 layers, 4 heads, 4 kv heads, SwiGLU 384, tied
embeddings, char vocabulary of pydoc), trained by the same Trainer with precision preset
bf16 (no quantization; fp32 weights). The two alternate over --rounds rounds of --steps
timed steps, so a change of machine load hits both; the ratio is of their median
seconds per step. Prints a table; --out writes it too.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import torch
from steps import QUIET, seconds_per_step

from nblab import Recipe
from nblab.train.trainer import Trainer

LLAMA_TINY = {
    "model.name": "hf",
    "model.architecture": "llama",
    "model.config": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "tie_word_embeddings": True,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    total = 2 + args.steps * args.rounds
    base = Recipe.preset("gpt-tiny").with_overrides([*QUIET, f"train.steps={total}"])
    trainers = {
        "gpt (nblab)": Trainer(base),
        "llama (transformers)": Trainer(base.with_overrides(LLAMA_TINY)),
    }
    params = {name: t.shape.n_params for name, t in trainers.items()}
    for trainer in trainers.values():  # warm-up
        trainer.train_step()
        trainer.train_step()
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            seconds[name].append(seconds_per_step(trainer, args.steps))
    t = base.train
    tokens = t.batch_size * t.seq_len
    name = platform.processor() or platform.machine()
    lines = [
        f"model throughput: gpt-tiny's shape, precision bf16, batch {t.batch_size} x seq "
        f"{t.seq_len}, {args.rounds} rounds of {args.steps} steps, alternating",
        f"device: cpu ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}",
        "",
        f"{'model':22s} {'params':>9s} {'s/step':>8s} {'tokens/s':>9s} {'vs gpt':>7s}",
    ]
    gpt = statistics.median(seconds["gpt (nblab)"])
    for model, values in seconds.items():
        sec = statistics.median(values)
        lines.append(
            f"{model:22s} {params[model]:9,d} {sec:8.3f} {tokens / sec:9.0f} {sec / gpt:6.2f}x"
        )
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
