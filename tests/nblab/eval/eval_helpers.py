"""Recipes the evaluation tests train (imported by conftest.py and the tests: the test
folders are no packages)."""

from __future__ import annotations

import contextlib

import torch

from nblab import Recipe


@contextlib.contextmanager
def one_torch_thread():
    """torch on one thread for the duration: on a busy 2-core machine two OpenMP threads
    wait on each other (the sensitivity benchmark measured a scan 7x slower on two)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# gpt-tiny, smaller batches: about 1.5 s of training per 100 steps on an idle 2-core CPU
TINY = Recipe.preset("gpt-tiny").with_overrides(
    [
        "train.steps=120",
        "train.batch_size=8",
        "train.seq_len=64",
        "eval.interval=60",
        "eval.batches=4",
        "checkpoint.interval=60",
        "checkpoint.keep=2",
        "metrics.stats_interval=0",
        "metrics.histogram_interval=0",
    ]
)


def debug(*overrides: str) -> Recipe:
    return Recipe.preset("gpt-debug").with_overrides(
        [
            "train.steps=12",
            "checkpoint.interval=6",
            "checkpoint.keep=2",
            "eval.interval=6",
            *overrides,
        ]
    )
