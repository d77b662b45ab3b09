"""What the training-step benchmarks share: a recipe override that stops evaluation
and statistics (so a step times only the step) and seconds per step of a Trainer.
Imported by the scripts beside it (`python benchmarks/<script>.py` puts this folder on
the path)."""

from __future__ import annotations

import time

from nblab.train.trainer import Trainer

QUIET = ["eval.interval=0", "metrics.stats_interval=0", "metrics.histogram_interval=0"]


def seconds_per_step(trainer: Trainer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - start) / steps
