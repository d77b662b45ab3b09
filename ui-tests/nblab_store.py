"""The run store the galata tests see: seeded when the test server starts, changed by
the tests through `python nblab_store.py set-status HOME NAME STATUS [SWEEP]` and
`python nblab_store.py seed-many HOME N` (N more runs, in sweep ui-scale)."""

import shutil
import sys
from pathlib import Path

from nblab.runs import RunStore

SWEEP = "ui-sweep"
RECIPE = 'name = "ui"\n'


def seed(home: Path) -> RunStore:
    """A fresh store: sweep ui-sweep with a succeeded, a failed and a live (running) run.

    The running run belongs to the calling process (the Jupyter server), so the store's
    liveness check keeps it running for as long as the server lives."""
    shutil.rmtree(home, ignore_errors=True)
    store = RunStore(home)
    done = store.create_run("bf16", RECIPE, SWEEP, steps=40)
    with store.writer(done, flush_every=None) as writer:
        for step in range(1, 41):
            writer.log_metrics(step, {"loss": 4.0 * 0.95**step + 0.5})
    failed = store.create_run("nvfp4", RECIPE, SWEEP, steps=40)
    writer = store.writer(failed, flush_every=None)
    writer.log_metrics(1, {"loss": 4.1})
    writer.close("failed", error="RuntimeError: a fake failure for the UI test")
    live = store.create_run("mxfp8", RECIPE, SWEEP, steps=40)
    writer = store.writer(live, flush_every=None)
    for step in range(1, 21):
        writer.log_metrics(step, {"loss": 4.2 * 0.96**step + 0.6})
    writer.flush()
    return store


def seed_many(home: Path, runs: int, sweep: str = "ui-scale", steps: int = 300) -> None:
    """Add `runs` succeeded runs to sweep `sweep`, each with `steps` loss rows written
    through the store's writer as a job writes them (the sidebar at scale)."""
    store = RunStore(home)
    for i in range(runs):
        run_id = store.create_run(f"point-{i:03d}", RECIPE, sweep, steps=steps)
        writer = store.writer(run_id, flush_every=None)
        for step in range(1, steps + 1):
            writer.log_metrics(step, {"loss": 4.0 * 0.99**step + 0.5 + i / runs})
            if step % 50 == 0:
                writer.flush()
        writer.close("succeeded")


def set_status(home: Path, name: str, status: str, sweep: str = SWEEP) -> None:
    store = RunStore(home)
    frame = store.runs(sweep=sweep)
    run_id = frame[frame.name == name].run_id.iloc[-1]
    store.set_status(run_id, status)


if __name__ == "__main__":
    command, home, *rest = sys.argv[1:]
    if command == "seed":
        seed(Path(home))
    elif command == "seed-many":
        seed_many(Path(home), int(rest[0]))
    elif command == "set-status":
        set_status(Path(home), *rest)
    else:
        sys.exit(f"unknown command {command!r}")
