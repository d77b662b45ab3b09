"""`nblab export RUN_ID|SWEEP --hf DIR [--step N]`: a run's weights as a Hugging Face
checkpoint (save_pretrained, safetensors) with its tokenizer, which
AutoModelForCausalLM.from_pretrained(DIR) loads with the run's logits. The work is
nblab.train.export.export_hf; a sweep writes one folder per run, DIR/<run name>-<run_id>.
"""

from __future__ import annotations

from pathlib import Path

from nblab.runs import RunStore


def export(
    store: RunStore, run_ids: list[str], destination: str, step: str | None = None
) -> list[str]:
    from nblab.train.export import export_hf  # torch, transformers: only when asked

    if step is not None and len(run_ids) > 1:
        raise ValueError(f"--step {step} names one checkpoint; give one run, not a sweep")
    lines = []
    for run_id in run_ids:
        folder = Path(destination)
        if len(run_ids) > 1:
            folder = folder / f"{store.run(run_id)['name']}-{run_id}"
        out = export_hf(run_id, folder, step=None if step is None else int(step), store=store)
        lines.append(f"{run_id}: {out}")
    return lines
