"""Where a run's starting weights come from (model.init_from), and a run's weights out to
a Hugging Face checkpoint (nblab export --hf).

    model.init_from = "/exports/best"        # a folder of *.safetensors (an export, an HF
                                             # checkpoint): weights by parameter name
    model.init_from = "20261206-101500-1234"        # a run's latest checkpoint
    model.init_from = "20261206-101500-1234:200"    # ... the one of step 200

Only the model's weights are taken (not the optimizer, the schedule or the step): the run
starts at step 0 from them, a fine-tuning run. Every parameter of the model must be found
with its shape; a missing or differently shaped one is an error that names it. A GPT run's
export is a LlamaForCausalLM: its names map back (nblab.models.gpt.gpt_name). The run folder's
init_from.json records what was loaded: the source, the folder or checkpoint, the step.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nblab.models.gpt import GPT, gpt_name
from nblab.models.protocol import tied_weights
from nblab.runs import RunStore
from nblab.train import checkpoint

Problem = tuple[str, Any, str]


@dataclass(frozen=True)
class WeightSource:
    """A resolved init_from: a folder of safetensors, or a run's checkpoint at a step."""

    spec: str  # as the recipe says it
    path: str  # the folder, or the checkpoint's folder
    kind: str  # "folder" | "run"
    run_id: str | None = None
    step: int | None = None

    def describe(self) -> str:
        if self.kind == "folder":
            return f"weights from {self.path}"
        return f"weights from run {self.run_id} step {self.step} ({self.path})"


def resolve(spec: str, store: RunStore | None = None) -> WeightSource:
    """The WeightSource of an init_from value. ValueError names what is not there: the
    folder, its safetensors, the run, its checkpoints, the step (with the saved ones)."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        if not sorted(folder.glob("*.safetensors")):
            raise ValueError(f"{folder} holds no *.safetensors weights")
        return WeightSource(spec, str(folder.resolve()), "folder")
    run_id, _, step_text = spec.partition(":")
    store = store or RunStore()
    try:
        store.run(run_id)
    except (KeyError, ValueError):
        raise ValueError(
            f"{spec!r} is neither a folder of *.safetensors nor a run of the store at "
            f"{store.home} (RUN_ID or RUN_ID:STEP)"
        ) from None
    saved = checkpoint.list_checkpoints(store.run_dir(run_id) / "checkpoints")
    steps = [int(p.name.split("_")[-1]) for p in saved]
    if not steps:
        raise ValueError(f"run {run_id} has no checkpoint to start from")
    if step_text:
        if not step_text.isdigit() or int(step_text) not in steps:
            raise ValueError(f"run {run_id} saved no step {step_text}; saved steps: {steps}")
        step = int(step_text)
    else:
        step = steps[-1]
    path = saved[steps.index(step)]
    return WeightSource(spec, str(path), "run", run_id, step)


def init_problems(recipe: Any) -> list[Problem]:
    """nblab.recipe.SOURCE_CHECKS: model.init_from names weights that are there."""
    spec = recipe.model.init_from
    if not spec:
        return []
    try:
        resolve(spec)
    except ValueError as err:
        return [("model.init_from", spec, str(err))]
    return []


def _check_shapes(model: nn.Module, found: dict[str, tuple[int, ...]], where: str) -> None:
    """Every parameter and persistent buffer of `model` is in `found` with its shape."""
    for name, tensor in model.state_dict().items():
        if name not in found:
            raise ValueError(f"{where} has no {name!r} (the model's first missing weight)")
        if tuple(found[name]) != tuple(tensor.shape):
            raise ValueError(
                f"{where}: {name!r} has shape {tuple(found[name])}, the model's is "
                f"{tuple(tensor.shape)}: the first weight whose shape differs"
            )


def _folder_state(model: nn.Module, folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(path))
    if isinstance(model, GPT) and not set(model.state_dict()) & set(state):
        state = {gpt_name(k): v for k, v in state.items()}  # a GPT run's export is a Llama
    for head, embedding in tied_weights(model).items():  # saved once, under one name
        if head not in state and embedding in state:
            state[head] = state[embedding]
        elif embedding not in state and head in state:
            state[embedding] = state[head]
    return state


@torch.no_grad()
def load_weights(model: nn.Module, source: WeightSource) -> None:
    """Load `source`'s weights into `model` (unsharded, before the parallel plan)."""
    if source.kind == "folder":
        state = _folder_state(model, Path(source.path))
        _check_shapes(model, {k: tuple(v.shape) for k, v in state.items()}, source.path)
        own = model.state_dict()
        for name in own:
            own[name].copy_(state[name])
        return
    shapes = checkpoint.model_shapes(Path(source.path))
    _check_shapes(model, shapes, f"run {source.run_id} step {source.step}")
    checkpoint.load_model(Path(source.path), model)


def record(run_dir: Path, source: WeightSource) -> None:
    (run_dir / "init_from.json").write_text(json.dumps(asdict(source), indent=1) + "\n")


__all__ = ["WeightSource", "init_problems", "load_weights", "record", "resolve"]
