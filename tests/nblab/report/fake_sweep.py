"""A fake sweep written straight into a run store, so report tests need no training."""

import math

from nblab.runs import RunStore

SWEEP = "fp4-study"


def recipe(preset: str, lr: float) -> str:
    return (
        f'name = "{SWEEP}/preset={preset},lr={lr:g}"\n\n'
        '[model]\nname = "gpt"\nflavour = "debug"\n\n'
        f"[optimizer]\nlr = {lr!r}\nweight_decay = 0.1\n\n"
        "[train]\nsteps = 4\nbatch_size = 4\n\n"
        f'[precision]\npreset = "{preset}"\n'
    )


# point -> (preset, lr, status, error, [(step, loss, val_loss or None)])
POINTS = {
    "preset=bf16,lr=0.003": ("bf16", 3e-3, "succeeded", None, [(1, 3.0, None), (4, 2.0, 2.5)]),
    "preset=nvfp4,lr=0.003": ("nvfp4", 3e-3, "succeeded", None, [(1, 3.1, None), (4, 2.2, 2.75)]),
    "preset=mxfp8,lr=0.003": ("mxfp8", 3e-3, "succeeded", None, [(1, 3.0, None), (4, 2.1, 2.625)]),
    "preset=mxfp4,lr=0.003": (
        "mxfp4",
        3e-3,
        "failed",
        "RuntimeError: tile 16x16 does not divide in_features 40 of <layers.0.mlp.up>",
        [(1, 3.2, None)],
    ),
    "preset=mxfp4,lr=0.01": (
        "mxfp4",
        1e-2,
        "diverged",
        "diverged at step 3: loss is nan",
        [(1, 3.5, None), (2, 9.0, 8.0)],
    ),
}
# mean SQNR (dB) of each quantized preset; bf16 records no stats
SQNR = {"nvfp4": 12.0, "mxfp8": 30.0, "mxfp4": 8.0}
MODULES = [f"layers.{i}.mlp.down" for i in range(3)] + ["layers.0.attn.qkv", "lm_head"]
ROLES = ("weight", "input", "grad_output")


def write_run(store: RunStore, point: str, spec, *, sweep: str = SWEEP, offset: float = 0.0):
    preset, lr, status, error, curve = spec
    run_id = store.create_run(f"{sweep}/{point}", recipe(preset, lr), sweep=sweep, steps=4)
    writer = store.writer(run_id, flush_every=None)
    store.set_params(run_id, 88_832)  # as the trainer records its model's count
    for step, loss, val_loss in curve:
        values = {"loss": loss + offset, "tokens_per_s": 1000.0 * step, "peak_memory_bytes": 0}
        if val_loss is not None:
            values["val_loss"] = val_loss + offset
        writer.log_metrics(step, values)
    if preset in SQNR:
        for m, module in enumerate(MODULES):
            for r, role in enumerate(ROLES):
                # module m, role r: SQNR base - m - r/10 (the last modules are worst)
                writer.log_stats(2, module, role, SQNR[preset] - m - r / 10, 0.001 * m, 0.01 * r)
    if status == "diverged":
        writer.log_metrics(3, {"loss": math.nan})
    writer.close(status, error=error)
    return run_id


# A sweep with a seed axis: preset -> {seed: final val loss}; None: that seed diverged
SEEDED = "seeds"
SEEDED_VAL = {
    "bf16": {0: 2.50, 1: 2.52, 2: 2.48},
    "mxfp8": {0: 2.51, 1: 2.54, 2: 2.48},  # gaps by seed 0.01, 0.02, 0.00: within noise
    "mxfp4": {0: 2.60, 1: 2.63, 2: 2.58},  # gaps 0.10, 0.11, 0.10: beyond noise
    "nvfp4": {0: 2.55, 1: None},
}


def write_seeded(store: RunStore) -> dict[tuple[str, int], str]:
    """Sweep `seeds` (preset x train.seed) into `store`; returns {(preset, seed): run_id}."""
    ids = {}
    for preset, by_seed in SEEDED_VAL.items():
        for seed, val in by_seed.items():
            point = f"preset={preset},seed={seed}"
            text = recipe(preset, 3e-3).replace(f"{SWEEP}/preset={preset},lr=0.003", point)
            text = text.replace("[train]\n", f"[train]\nseed = {seed}\n")
            run_id = store.create_run(f"{SEEDED}/{point}", text, sweep=SEEDED, steps=4)
            writer = store.writer(run_id, flush_every=None)
            for step in (2, 4):
                loss = (val if val is not None else math.nan) + (4 - step) * 0.1
                writer.log_metrics(step, {"loss": loss, "val_loss": loss, "tokens_per_s": 1e3})
            if val is None:
                writer.close("diverged", error="diverged at step 4: loss is nan")
            else:
                writer.close("succeeded")
            ids[(preset, seed)] = run_id
    return ids
