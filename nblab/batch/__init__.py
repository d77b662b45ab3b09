"""Batch execution: sweeps -> runs -> jobs (papermill executions of notebooks/train.ipynb).

    from nblab.batch import run_sweep, cancel, LocalLauncher
    handle = run_sweep(sweep, jobs=2, wait=False)

`job` runs one notebook for one run, `base` is the `Launcher` interface, `launcher`
starts jobs (LocalLauncher: a local process pool), `slurm` the same as Slurm jobs,
`cancellation` stops runs wherever they run, `sweeps` turns a sweep into queued runs,
`progress.watch` shows runs as they go (a bar per run). The run store holds every
status. Imports point one way: job, base < slurm < cancellation < launcher < sweeps.
"""

import importlib
from typing import Any

_EXPORTS = {
    "LAUNCHERS": "nblab.batch.launcher",
    "Launcher": "nblab.batch.base",
    "LocalLauncher": "nblab.batch.launcher",
    "get_launcher": "nblab.batch.launcher",
    "launch_detached": "nblab.batch.launcher",
    "SweepHandle": "nblab.batch.sweeps",
    "cancel": "nblab.batch.cancellation",
    "cancel_run": "nblab.batch.cancellation",
    "latest_runs": "nblab.batch.sweeps",
    "run_sweep": "nblab.batch.sweeps",
    "watch": "nblab.batch.progress",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy: `python -m nblab.batch.job` installs its signal handlers before pandas loads.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nblab.batch' has no attribute {name!r}")
