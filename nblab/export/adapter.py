"""`nblab export RUN_ID|SWEEP --adapter DIR [--step N]`: a LoRA run's adapter alone, in
peft's format (adapter_model.safetensors, adapter_config.json), for
`PeftModel.from_pretrained(base, DIR)` over the base `--hf` exported from the run it
fine-tuned. (`--hf` of a LoRA run writes its merged weights, W + B A alpha / r.) The work is
nblab.train.finetuned.export_adapter; a sweep writes one folder per LoRA run.
"""

from __future__ import annotations

import tomllib

from nblab.export import checkpoint_folders
from nblab.runs import RunStore


def export(
    store: RunStore, run_ids: list[str], destination: str, step: str | None = None
) -> list[str]:
    from nblab.train.finetuned import export_adapter  # torch, peft: only when asked

    lines = []
    for run_id, run, folder, n in checkpoint_folders(store, run_ids, destination, step):
        method = tomllib.loads(run["recipe"]).get("finetune", {}).get("method", "full")
        if len(run_ids) > 1 and method != "lora":
            lines.append(f"{run_id}: skipped (finetune.method={method!r} has no adapter)")
            continue
        lines.append(f"{run_id}: {export_adapter(run_id, folder, step=n, store=store)}")
    return lines
