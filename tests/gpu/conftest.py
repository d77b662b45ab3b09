"""CUDA-only tests, run by scripts/gpu-check.sh (with TRITON_INTERPRET=0). Without a
GPU, or under the Triton interpreter that the rest of the suite turns on, every test
here is skipped: `make test` collects them and runs none."""

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    interpreted = os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on")
    if torch.cuda.is_available() and not interpreted:
        return
    reason = "needs a CUDA GPU" if not torch.cuda.is_available() else "TRITON_INTERPRET is on"
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.skip(reason=f"{reason}: run scripts/gpu-check.sh"))
