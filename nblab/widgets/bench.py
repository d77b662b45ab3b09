"""Time RunMonitor.refresh for many long runs (target: < 100 ms per live refresh).

    python -m nblab.widgets.bench --runs 32 --points 20000

Writes `runs` fake runs of `points` loss steps (and a val_loss every 100 steps) into
a temporary store, then times, in this one process: the first refresh (reads every
row), live refreshes (each run gained `new` steps since the last one: what the
periodic callback does while jobs train), and a smoothing change (recomputes every
run's curve). Prints milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

RECIPE = 'name = "bench"\n[train]\nsteps = 1\n[optimizer]\nlr = {lr}\n'  # one point per run


def _write(writer, start: int, stop: int, rng: np.random.Generator) -> None:
    steps = np.arange(start, stop)
    loss = 4.0 / np.sqrt(steps) + 0.05 * rng.standard_normal(len(steps))
    for step, value in zip(steps.tolist(), loss.tolist(), strict=True):
        writer.log_metrics(step, {"loss": value})
        if step % 100 == 0:
            writer.log_metrics(step, {"val_loss": value + 0.1})
    writer.flush()


def monitor_refresh_benchmark(
    n_runs: int = 32, points: int = 20_000, new: int = 20, repeats: int = 10
) -> dict[str, float]:
    """Milliseconds: first (full read), live (median of `repeats`), smoothing change."""
    from nblab.runs import RunStore
    from nblab.widgets.monitor import RunMonitor

    with tempfile.TemporaryDirectory() as home:
        store = RunStore(home)
        rng = np.random.default_rng(0)
        writers = []
        for i in range(n_runs):
            run_id = store.create_run(f"run{i}", RECIPE.format(lr=1e-3 * (i + 1)), sweep="bench")
            writer = store.writer(run_id, flush_every=None)
            _write(writer, 1, points + 1, rng)
            writers.append(writer)
        t0 = time.perf_counter()
        monitor = RunMonitor("bench", store=store, autostart=False)
        first = (time.perf_counter() - t0) * 1e3
        live = []
        for r in range(repeats):
            start = points + 1 + r * new
            for writer in writers:
                _write(writer, start, start + new, rng)
            t0 = time.perf_counter()
            read = monitor.refresh()
            live.append((time.perf_counter() - t0) * 1e3)
            assert read >= n_runs * new, read
        t0 = time.perf_counter()
        monitor.set_view(smoothing=0.6)
        smoothing = (time.perf_counter() - t0) * 1e3
        drawn = max(len(f) for f in monitor.data.values())
        for writer in writers:
            writer.close()
    return {
        "first_ms": first,
        "live_ms": statistics.median(live),
        "live_max_ms": max(live),
        "smoothing_ms": smoothing,
        "points_drawn_per_run": drawn,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--new", type=int, default=20, help="steps per run between refreshes")
    args = parser.parse_args(argv)
    result = monitor_refresh_benchmark(args.runs, args.points, args.new)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"RunMonitor refresh, {args.runs} runs x {args.points} points (load {load:.1f}):")
    print(f"  first refresh (reads every row): {result['first_ms']:8.1f} ms")
    print(
        f"  live refresh (+{args.new} steps/run):  {result['live_ms']:8.1f} ms median,"
        f" {result['live_max_ms']:.1f} ms max"
    )
    print(f"  smoothing change (all curves):   {result['smoothing_ms']:8.1f} ms")
    print(f"  points drawn per run (all keys): <= {result['points_drawn_per_run']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
