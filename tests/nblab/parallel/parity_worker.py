"""20-step loss parity of every layout with one process (run by test_parity.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 parity_worker.py OUT
    python -m torch.distributed.run --standalone --nproc-per-node 4 parity_worker.py OUT

Each layout of PARITY_LAYOUTS whose world size is this job's trains parity_recipe() for
20 steps in bf16 and in mxfp4; rank 0 saves OUT/{layout}_{preset}.pt with the losses of
every step and the val loss after the last. The Hugging Face Llama of LLAMA (random init)
trains the same way under LLAMA_LAYOUTS in bf16: OUT/llama_{layout}_bf16.pt.
"""

import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from nblab.parallel import runtime
from nblab.recipe import PARALLEL_DEGREES, Recipe
from nblab.train.trainer import Trainer, build_data

STEPS = 20
PRESETS = ("bf16", "mxfp4")
# layout -> its parallel section (nproc is the product of the degrees)
PARITY_LAYOUTS = {
    "ddp2": {"dp_replicate": 2},
    "fsdp2": {"dp_shard": 2},
    "tp2": {"tp": 2},
    "pp2": {"pp": 2, "pp_schedule": "1f1b"},
    "fsdp2_tp2": {"dp_shard": 2, "tp": 2},
    "pp2_tp2": {"pp": 2, "tp": 2, "pp_schedule": "gpipe"},
}


# a tiny Llama (transformers, random init): GQA with 2 kv heads, so tp 2 splits every head
LLAMA = {
    "model.name": "hf",
    "model.architecture": "llama",
    "model.config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}
LLAMA_LAYOUTS = ("fsdp2", "tp2")


def nproc(layout: str) -> int:
    return math.prod(PARITY_LAYOUTS[layout].get(d, 1) for d in PARALLEL_DEGREES)


def micro_batches(layout: str | None) -> int:
    """train.grad_accum: 2 under pp (a micro-batch per stage), else 1 (fewer collectives)."""
    return 1 if layout is None else PARITY_LAYOUTS[layout].get("pp", 1)


def parity_recipe(
    layout: str | None, preset: str, grad_accum: int | None = None, model: dict | None = None
) -> Recipe:
    """gpt-tiny with a global batch of 4 x 64 tokens in micro_batches(layout) micro-batches;
    `layout` None is the single process (with `grad_accum`). At a stable learning rate:
    at gpt-tiny's 3e-3, mxfp4 spikes near step 20, which magnifies any difference. mxfp4's
    blocks of 32 run along the features and the 64-token sequences, so a dp rank's rows
    quantize the same groups as one process."""
    grad_accum = grad_accum or micro_batches(layout)
    base = Recipe.preset("gpt-tiny").with_overrides(
        [
            f"train.steps={STEPS}",
            "train.batch_size=4",
            "train.seq_len=64",
            f"train.grad_accum={grad_accum}",
            "train.device=cpu",
            "optimizer.lr=1e-3",
            "eval.interval=0",
            "eval.batches=2",
            "metrics.stats_interval=0",
            "metrics.histogram_interval=0",
            f"precision.preset={preset}",
        ]
    )
    if model is not None:
        base = base.with_overrides(model)
    if layout is None:
        return base
    sets = [f"parallel.{k}={v}" for k, v in PARITY_LAYOUTS[layout].items()]
    return base.with_overrides([*sets, f"parallel.nproc={nproc(layout)}"])


def train(recipe: Recipe, dataset) -> dict:
    trainer = Trainer(recipe, dataset=dataset)
    losses = [trainer.train_step() for _ in range(STEPS)]
    return {"losses": losses, "val_loss": trainer.evaluate()["val_loss"]}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    dataset = build_data(parity_recipe(None, "bf16"))
    for layout in PARITY_LAYOUTS:
        if nproc(layout) != world:
            continue
        for preset in PRESETS:
            result = train(parity_recipe(layout, preset), dataset)
            if dist.get_rank() == 0:
                torch.save(result, out / f"{layout}_{preset}.pt")
        if layout in LLAMA_LAYOUTS:
            result = train(parity_recipe(layout, "bf16", model=LLAMA), dataset)
            if dist.get_rank() == 0:
                torch.save(result, out / f"llama_{layout}_bf16.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    runtime.exit_rank(0)
