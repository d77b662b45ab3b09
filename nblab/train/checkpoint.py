"""Checkpoints with torch.distributed.checkpoint (DCP): reshardable, one folder each.

A checkpoint holds the model, the optimizer, the scheduler, the step (the data
position: batches are drawn per step) and every RNG state, so a resumed CPU run
reproduces the uninterrupted one exactly.

Under a process group every rank calls save() and load() (DCP writes and reads each
rank's shards); rank 0 alone touches the folders and writes extra.pt (its RNG state).
A checkpoint saved under one layout loads under another (tested: FSDP 2 <-> 1 process,
FSDP 2 -> TP 2, PP 2 <-> 1 process, PP 2 x dp_shard 2 <-> 1 process). The model is keyed by
parameter name, and so is the optimizer (flatten_optimizer_state_dict: keys
state.{name}.{field} and param_groups.{name}.{field}, not by group index), so every
layout uses the same keys and a pipeline's stages together save the whole model's.

A tied embedding is one tensor in one process, named tok_emb.weight in the optimizer
(lm_head.weight is the same tensor in the model's state dict). Under pp the last stage
holds its own copy, lm_head.weight, equal to stage 0's: `aliases` ({"lm_head.weight":
"tok_emb.weight"} on that stage) makes it save no optimizer state of its own (stage 0's
is the same) and load its optimizer state from tok_emb.weight's, as one process does.

Checkpoints written before the optimizer was keyed by name (extra.pt without
"optimizer_keys", from before pipeline parallelism existed) load without pp; load()
refuses them under pp > 1 with a clear error.
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
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

_PREFIX = "step_"
# optimizer state keyed by parameter name (state.{name}.{field}, param_groups.{name}.{..})
_BY_NAME = StateDictOptions(flatten_optimizer_state_dict=True)


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


def _param_name(key: str) -> tuple[str, str, str]:
    """A flattened optimizer key split into (kind, parameter name, field)."""
    kind, rest = key.split(".", 1)
    name, field = rest.rsplit(".", 1)
    return kind, name, field


def _optimizer_state(model, optimizer, aliases: dict[str, str]) -> dict:
    """The optimizer's state keyed by parameter name; a parameter in `aliases` under the
    name it stands for."""
    state = get_optimizer_state_dict(model, optimizer, options=_BY_NAME)
    if not aliases:
        return state
    out = {}
    for key, value in state.items():
        kind, name, field = _param_name(key)
        out[f"{kind}.{aliases.get(name, name)}.{field}"] = value
    return out


def _unaliased(state: dict, aliases: dict[str, str]) -> dict:
    """_optimizer_state's dict back under this rank's own parameter names."""
    if not aliases:
        return state
    back = {v: k for k, v in aliases.items()}
    out = {}
    for key, value in state.items():
        kind, name, field = _param_name(key)
        out[f"{kind}.{back.get(name, name)}.{field}"] = value
    return out


def save(
    folder: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    keep: int,
    pp: int = 1,
    aliases: dict[str, str] | None = None,
) -> Path:
    """Write checkpoint `step` under folder/step_NNNNNNN and keep only the last `keep`.
    pp: the run's pipeline degree (recorded); each rank saves what it holds. aliases:
    {this rank's parameter: the parameter it copies}, whose optimizer state another rank
    saves (see the module docstring)."""
    path = folder / f"{_PREFIX}{step:07d}"
    tmp = folder / f".{path.name}.partial"
    if _rank0():
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    aliases = aliases or {}
    # the model first: its state_dict reshards FSDP parameters an eval forward left whole,
    # and the optimizer's state dict finds its (sharded) parameters by name after that
    state = {"model": get_model_state_dict(model)}
    optim = get_optimizer_state_dict(model, optimizer, options=_BY_NAME)
    state["optimizer"] = {k: v for k, v in optim.items() if _param_name(k)[1] not in aliases}
    with _single_process_ok():
        dcp.save(state, checkpoint_id=tmp)
    _barrier()  # every rank's shards are written
    if _rank0():
        extra = {"step": step, "scheduler": scheduler.state_dict(), "rng": _rng_state()}
        extra["pp"] = pp
        extra["optimizer_keys"] = "by_name"
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


def model_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{parameter name: shape} of the model a checkpoint holds (read from its metadata)."""
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    out = {}
    for key, value in metadata.state_dict_metadata.items():
        if key.startswith("model.") and hasattr(value, "size"):
            out[key[len("model.") :]] = tuple(value.size)
    return out


def save_model(folder: Path, step: int, model) -> Path:
    """Only `model`'s weights as checkpoint `step` under folder (one process): a model made
    rather than trained (a merge) has no optimizer, schedule or RNG to resume. load_model,
    model_shapes and model.init_from read it like any other."""
    path = folder / f"{_PREFIX}{step:07d}"
    tmp = folder / f".{path.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with _single_process_ok():
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)  # complete or absent
    return path


def load_model(path: Path, model) -> None:
    """Only the model's weights of checkpoint `path` (a fine-tuning run's start), into a
    model of any layout; the optimizer, schedule, step and RNG are left alone."""
    state = {"model": get_model_state_dict(model)}
    with _single_process_ok():
        dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])


def load(
    path: Path, model, optimizer, scheduler, pp: int = 1, aliases: dict[str, str] | None = None
) -> int:
    """Restore everything saved at `path` (in any layout); returns the step to continue
    from. pp, aliases: the resuming run's pipeline degree and aliases (as for save)."""
    extra = torch.load(path / "extra.pt", weights_only=False)
    aliases = aliases or {}
    state = {"model": get_model_state_dict(model)}
    if extra.get("optimizer_keys") == "by_name":
        state["optimizer"] = _optimizer_state(model, optimizer, aliases)
        with _single_process_ok():
            dcp.load(state, checkpoint_id=path)
        optim = _unaliased(state["optimizer"], aliases)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, optim, options=_BY_NAME)
    else:  # written before the optimizer was keyed by name, so before pp existed
        if pp != 1:
            raise NotImplementedError(
                f"checkpoint {path.name} was saved with parallel.pp=1 by an older nblab "
                f"(optimizer state keyed by group index) and cannot resume with "
                f"parallel.pp={pp}; resume it with parallel.pp=1"
            )
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
        with _single_process_ok():
            dcp.load(state, checkpoint_id=path)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    _set_rng_state(extra["rng"])
    return int(extra["step"])
