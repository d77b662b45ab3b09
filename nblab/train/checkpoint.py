"""Checkpoints with torch.distributed.checkpoint (DCP): reshardable, one folder each.

A checkpoint holds the model, the optimizer, the scheduler, the step (the data
position: batches are drawn per step) and every RNG state, so a resumed CPU run
reproduces the uninterrupted one exactly.

Under a process group every rank calls save() and load() (DCP writes and reads each
rank's shards); rank 0 alone touches the folders and writes extra.pt (its RNG state).
A checkpoint saved under one layout loads under another (FSDP 2 -> 1 process, ...),
except across pipeline degrees: a checkpoint saved with parallel.pp = n (extra.pt
records it) resumes only with pp = n (load() refuses any other pp before reading).
Under pp each stage's optimizer state is stored under its own key, optimizer_stage{s}:
DCP keys the optimizer's param_groups by group index, the same on every stage, so one
shared "optimizer" key would keep one stage's groups only.
"""

from __future__ import annotations

import random
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

_PREFIX = "step_"


@contextmanager
def _single_process_ok():
    """DCP warns when no process group exists; one process is a supported case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _optimizer_key(pp: int, stage: int) -> str:
    return "optimizer" if pp == 1 else f"optimizer_stage{stage}"


def save(
    folder: Path, step: int, model, optimizer, scheduler, keep: int, pp: int = 1, stage: int = 0
) -> Path:
    """Write checkpoint `step` under folder/step_NNNNNNN and keep only the last `keep`.
    pp, stage: the run's pipeline degree and this rank's stage (it saves what it owns)."""
    path = folder / f"{_PREFIX}{step:07d}"
    tmp = folder / f".{path.name}.partial"
    if _rank0():
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    state = {
        "model": get_model_state_dict(model),
        _optimizer_key(pp, stage): get_optimizer_state_dict(model, optimizer),
    }
    with _single_process_ok():
        dcp.save(state, checkpoint_id=tmp)
    _barrier()  # every rank's shards are written
    if _rank0():
        extra = {"step": step, "scheduler": scheduler.state_dict(), "rng": _rng_state()}
        extra["pp"] = pp
        torch.save(extra, tmp / "extra.pt")
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)  # a checkpoint folder is complete or absent
        for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))


def latest(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load(path: Path, model, optimizer, scheduler, pp: int = 1, stage: int = 0) -> int:
    """Restore everything saved at `path`; returns the step to continue from. pp, stage:
    the resuming run's pipeline degree (it must be the saved one) and this rank's stage."""
    extra = torch.load(path / "extra.pt", weights_only=False)
    saved_pp = int(extra.get("pp", 1))
    if saved_pp != pp:
        raise NotImplementedError(
            f"checkpoint {path.name} was saved with parallel.pp={saved_pp} and cannot resume "
            f"with parallel.pp={pp}: resharding across pipeline degrees is not supported; "
            f"resume with parallel.pp={saved_pp}"
        )
    state = {
        "model": get_model_state_dict(model),
        _optimizer_key(pp, stage): get_optimizer_state_dict(model, optimizer),
    }
    with _single_process_ok():
        dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state[_optimizer_key(pp, stage)])
    scheduler.load_state_dict(extra["scheduler"])
    _set_rng_state(extra["rng"])
    return int(extra["step"])
