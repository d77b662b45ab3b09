"""`nblab export RUN_ID|SWEEP --hf DIR [--step N]`: a run's weights as a Hugging Face
checkpoint (save_pretrained, safetensors) with its tokenizer, which
AutoModelForCausalLM.from_pretrained(DIR) loads with the run's logits. The work is
nblab.train.export.export_hf; a sweep writes one folder per run (checkpoint_folders).
"""

from __future__ import annotations

from nblab.export import checkpoint_folders
from nblab.runs import RunStore


def export(
    store: RunStore, run_ids: list[str], destination: str, step: str | None = None
) -> list[str]:
    from nblab.train.export import export_hf  # torch, transformers: only when asked

    return [
        f"{run_id}: {export_hf(run_id, folder, step=n, store=store)}"
        for run_id, _, folder, n in checkpoint_folders(store, run_ids, destination, step)
    ]
