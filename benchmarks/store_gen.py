"""Generate a run store at scale: 1,000 runs, 20M metric rows in all (issue 17 section 4).

    .venv/bin/python benchmarks/store_gen.py --home /tmp/nblab-1k [--runs 1000]
                                             [--rows 20000000] [--sweep-size 20]

Every row goes through the store's own writer (RunStore.writer: RunWriter.log_metrics,
flushed every --flush-steps steps as a job flushes every few seconds, closed at the
end), so the database holds exactly what training jobs would leave: the runs table,
their recipe.toml folders, and the metric chunks with the merges the writer does. What
a trainer logs at each step: loss, lr, grad_norm, tokens, tokens_per_s, tflops,
peak_memory_bytes, and val_loss every --val-every steps; steps per run are chosen so
the store holds --rows rows in all.

Runs come in sweeps of --sweep-size points over the precision presets and seeds;
statuses are what a lab accumulates: mostly succeeded, some failed (with an error),
diverged (a NaN loss last) and cancelled (its last step logged). No run is left `running`:
its writer (this process) would be gone, and the first read would fail it.

Prints rows/s written and the database's bytes per 1M metric rows.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

KEYS = ("loss", "lr", "grad_norm", "tokens", "tokens_per_s", "tflops", "peak_memory_bytes")
PRESETS = ("bf16", "mxfp8", "nvfp4", "mxfp4", "fp8_tensorwise")
# (status, share of runs): cumulative draw below
OUTCOMES = (("succeeded", 0.90), ("failed", 0.05), ("diverged", 0.03), ("cancelled", 0.02))


def steps_for(rows: int, val_every: int) -> int:
    """Steps whose rows (len(KEYS) per step, a val_loss every `val_every`) reach `rows`."""
    steps = rows // len(KEYS)
    while steps * len(KEYS) + steps // val_every < rows:
        steps += 1
    while steps * len(KEYS) + steps // val_every > rows:
        steps -= 1
    return steps


def recipe_toml(preset: str, seed: int, steps: int) -> str:
    from nblab.recipe import Recipe

    sets = [f"precision.preset={preset}", f"train.seed={seed}", f"train.steps={steps}"]
    return Recipe.preset("gpt-tiny").with_overrides(sets).to_toml()


# --quant-stats: what gpt-tiny's trainer logs at its default intervals (4 layers of 7
# Linears): quantization stats of 3 roles every 50 steps (quantized presets), weight
# histograms of 64 bins every 100 steps
MODULES = [
    f"layers.{i}.{m}"
    for i in range(4)
    for m in ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.gate", "mlp.up", "mlp.down")
]
ROLES = ("weight", "input", "grad_output")
STATS_EVERY, HISTOGRAM_EVERY, BINS = 50, 100, 64


def write_quant(writer, step: int, preset: str, rng) -> None:
    """The stats and histograms a trainer logs at `step` (see MODULES)."""
    if step % STATS_EVERY == 0 and preset != "bf16":
        for m, module in enumerate(MODULES):
            for role in ROLES:
                sqnr = 20.0 - 0.2 * m + rng.standard_normal()
                writer.log_stats(step, module, role, sqnr, 1e-3 * rng.random(), 1e-2 * rng.random())
    if step % HISTOGRAM_EVERY == 0:
        edges = np.linspace(-0.2, 0.2, BINS + 1).tolist()
        for module in MODULES:
            counts = rng.multinomial(4096, np.full(BINS, 1 / BINS)).tolist()
            writer.log_histogram(step, module, edges, counts)


def write_run(
    writer,
    steps: int,
    val_every: int,
    flush_steps: int,
    rng,
    outcome: str,
    preset: str | None = None,
) -> int:
    """Log `steps` steps as a trainer does; return the metric rows written. `preset`: also
    log quantization stats and weight histograms (write_quant)."""
    step = np.arange(1, steps + 1)
    loss = 4.0 / np.sqrt(step) + 1.5 + 0.05 * rng.standard_normal(steps)
    if outcome == "diverged":
        loss[-1] = np.nan
    columns = {
        "loss": loss,
        "lr": 3e-3 * np.minimum(1.0, step / 100) * np.cos(0.5 * np.pi * step / steps),
        "grad_norm": 1.0 + np.abs(rng.standard_normal(steps)),
        "tokens": step * 16.0 * 128,
        "tokens_per_s": 5e4 + 1e3 * rng.standard_normal(steps),
        "tflops": 0.02 + 1e-3 * rng.standard_normal(steps),
        "peak_memory_bytes": np.full(steps, 2.1e8),
    }
    lists = {k: v.tolist() for k, v in columns.items()}
    rows = 0
    for i, s in enumerate(step.tolist()):
        writer.log_metrics(s, {k: lists[k][i] for k in KEYS})
        rows += len(KEYS)
        if s % val_every == 0:
            writer.log_metrics(s, {"val_loss": lists["loss"][i] + 0.05})
            rows += 1
        if preset is not None:
            write_quant(writer, s, preset, rng)
        if s % flush_steps == 0:
            writer.flush()
    return rows


def generate(
    home: Path,
    runs: int = 1000,
    rows: int = 20_000_000,
    sweep_size: int = 20,
    val_every: int = 57,
    flush_steps: int = 50,
    seed: int = 0,
    quiet: bool = False,
    quant_stats: bool = False,
) -> dict:
    from nblab.runs import RunStore

    store = RunStore(home)
    rng = np.random.default_rng(seed)
    per_run = rows // runs
    steps = steps_for(per_run, val_every)
    recipes: dict[tuple[str, int], str] = {}
    written, start = 0, time.perf_counter()
    draws = np.cumsum([share for _, share in OUTCOMES])
    for i in range(runs):
        sweep, point = f"sweep-{i // sweep_size:03d}", i % sweep_size
        preset, run_seed = PRESETS[point % len(PRESETS)], point // len(PRESETS)
        key = (preset, run_seed)
        if key not in recipes:
            recipes[key] = recipe_toml(preset, run_seed, steps)
        outcome = OUTCOMES[int(np.searchsorted(draws, rng.random() * draws[-1]))][0]
        name = f"{preset}-seed{run_seed}"
        run_id = store.create_run(name, recipes[key], sweep, steps=steps)
        writer = store.writer(run_id, flush_every=None)
        stats_of = preset if quant_stats else None
        written += write_run(writer, steps, val_every, flush_steps, rng, outcome, stats_of)
        error = {
            "failed": "RuntimeError: CUDA error: an illegal memory access was encountered",
            "diverged": f"loss is nan at step {steps}",
            "cancelled": "cancelled (SIGTERM to the job)",
        }.get(outcome)
        writer.close(outcome, error=error)
        if not quiet and (i + 1) % max(1, runs // 20) == 0:
            elapsed = time.perf_counter() - start
            print(f"  {i + 1} runs, {written:,} rows, {written / elapsed:,.0f} rows/s", flush=True)
    seconds = time.perf_counter() - start
    store.close()
    size = sum(
        os.path.getsize(p) for p in (store.db_path, Path(f"{store.db_path}-wal")) if p.exists()
    )
    return {
        "runs": runs,
        "rows": written,
        "steps_per_run": steps,
        "seconds": seconds,
        "db_bytes": size,
        "bytes_per_million_rows": size / written * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="the new store's folder")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=20_000_000, help="metric rows in all")
    parser.add_argument("--sweep-size", type=int, default=20)
    parser.add_argument("--flush-steps", type=int, default=50, help="steps between flushes")
    parser.add_argument("--val-every", type=int, default=57)
    parser.add_argument(
        "--quant-stats",
        action="store_true",
        help="also quantization stats and weight histograms, as gpt-tiny's trainer logs them",
    )
    args = parser.parse_args(argv)
    if (args.home / "nblab.db").exists():
        parser.error(f"--home {args.home} already holds a store; give a new folder")
    print(f"generating {args.runs} runs, {args.rows:,} metric rows into {args.home}")
    out = generate(
        args.home,
        args.runs,
        args.rows,
        args.sweep_size,
        args.val_every,
        args.flush_steps,
        quant_stats=args.quant_stats,
    )
    print(
        f"wrote {out['rows']:,} rows ({out['steps_per_run']} steps per full run) in "
        f"{out['seconds']:.0f} s: {out['rows'] / out['seconds']:,.0f} rows/s through RunWriter"
    )
    print(
        f"database {out['db_bytes'] / 2**20:,.1f} MiB: "
        f"{out['bytes_per_million_rows'] / 2**20:.1f} MiB per 1M metric rows"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
