"""What a packed frozen base holds and costs: gpt-125m's block linears packed in each
format (nblab.finetune.PackedLinear), the bytes measured from the buffers against bf16,
and one forward of the whole model with LoRA on the packed base against the same model
unpacked (in this process, same input): the price of dequantizing on the fly with the
reference (pure torch) decoder.

    python benchmarks/packed_base.py [--flavour 125m] [--formats nvfp4 mxfp4 int4_b32 mxfp8]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from nblab import Recipe
from nblab.finetune import prepare, storage
from nblab.models import build_model
from nblab.models.protocol import architecture


def forward_seconds(model, idx, repeats: int) -> float:
    arch = architecture(model)
    with torch.no_grad():
        arch.logits(model, idx)  # warm up
        start = time.perf_counter()
        for _ in range(repeats):
            arch.logits(model, idx)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flavour", default="125m")
    parser.add_argument("--formats", nargs="+", default=["nvfp4", "mxfp4", "int4_b32", "mxfp8"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = Recipe.preset("gpt-tiny").with_overrides(
        {"model.flavour": args.flavour, "finetune.method": "lora"}
    )
    idx = torch.randint(0, 256, (4, 128))
    torch.manual_seed(0)
    plain = build_model(base.model, vocab_size=256, max_seq_len=128)
    prepare(plain, base.finetune, architecture(plain))
    reference = forward_seconds(plain, idx, args.repeats)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"# {os.cpu_count()}-core {platform.machine()} CPU, torch threads 1, load average {load}; "
        f"gpt-{args.flavour}, the reference decoder"
    )
    print(f"# LoRA on the unpacked fp32 base: forward of 4 x 128 tokens {reference * 1e3:.0f} ms")
    print(
        f"{'format':10s} {'linears':>7s} {'weights':>12s} {'held bytes':>12s} {'bf16 bytes':>12s} "
        f"{'bits/w':>6s} {'x smaller':>9s} {'forward vs unpacked':>19s}"
    )
    for fmt in args.formats:
        torch.manual_seed(0)
        model = build_model(base.model, vocab_size=256, max_seq_len=128)
        prepare(
            model, base.with_overrides({"finetune.base_format": fmt}).finetune, architecture(model)
        )
        s = storage(model)
        ratio = forward_seconds(model, idx, args.repeats) / reference
        print(
            f"{fmt:10s} {s.modules:7d} {s.elements:12,d} {s.packed_bytes:12,d} {s.bf16_bytes:12,d} "
            f"{s.bits_per_weight:6.2f} {s.bf16_bytes / s.packed_bytes:9.2f} {ratio:18.2f}x"
        )


if __name__ == "__main__":
    main()
