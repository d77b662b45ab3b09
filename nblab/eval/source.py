"""What an evaluation run evaluates: a training run's checkpoint at a step.

An evaluation is a recipe like any other (so sweeps and batch jobs run it unchanged): the
source run's recipe with its [eval] section naming the run and step,

    [eval]
    source = "20261206-101500-1a2b"   # the training run
    step = 300                        # its checkpoint; 0: the latest
    precision = "nvfp4"               # the format (nblab.eval.precision)
    weights_only = false
    scan = ""                         # "module" | "role": a sensitivity scan

and its run in the store has kind "eval" and sources [{"run_id", "step"}] (`run_fields`).
Every bad source is named with what exists: an unknown run (with the runs that have
checkpoints), a run that is not a training run, a run without checkpoints, a step that
was not saved (with the saved steps).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nblab.runs import RunStore
from nblab.train import checkpoint

Problem = tuple[str, Any, str]
LISTED = 8  # runs named in an "unknown run" error


class SourceError(ValueError):
    """A source run or step that cannot be evaluated; `field` is eval.source or eval.step."""

    def __init__(self, field: str, value: Any, message: str):
        self.field, self.value = field, value
        super().__init__(message)


@dataclass(frozen=True)
class EvalSource:
    """A training run's checkpoint: the run, the step, the checkpoint folder, the run's
    recipe (TOML text) and name."""

    run_id: str
    step: int
    path: Path
    recipe: str
    name: str

    def describe(self) -> str:
        return f"run {self.run_id} ({self.name}) step {self.step}"


def saved_steps(store: RunStore, run_id: str) -> list[int]:
    folders = checkpoint.list_checkpoints(store.run_dir(run_id) / "checkpoints")
    return [int(p.name.split("_")[-1]) for p in folders]


def _runs_with_checkpoints(store: RunStore) -> list[str]:
    frame = store.runs()
    frame = frame[frame.kind == "train"]
    return [r for r in reversed(list(frame.run_id)) if saved_steps(store, r)][:LISTED]


def resolve_source(run_id: str, step: int = 0, store: RunStore | None = None) -> EvalSource:
    """The checkpoint of `run_id` at `step` (0: the latest). SourceError names what exists."""
    store = store or RunStore()
    try:
        run = store.run(run_id)
    except (KeyError, ValueError):
        known = _runs_with_checkpoints(store)
        listing = ", ".join(known) if known else "none (train one with `nblab run`)"
        raise SourceError(
            "eval.source",
            run_id,
            f"unknown run {run_id!r} in {store.home}; runs with checkpoints, newest first: "
            f"{listing}",
        ) from None
    if run["kind"] != "train":
        raise SourceError(
            "eval.source",
            run_id,
            f"run {run_id} is an {run['kind']} run; evaluate the training run it was made "
            f"from ({_source_ids(run)})",
        )
    steps = saved_steps(store, run_id)
    if not steps:
        raise SourceError(
            "eval.source",
            run_id,
            f"run {run_id} ({run['name']}, {run['status']}) has no checkpoints: a run saves "
            f"one when it ends and every checkpoint.interval steps",
        )
    if step and step not in steps:
        raise SourceError(
            "eval.step", step, f"run {run_id} saved no checkpoint at step {step}; saved: {steps}"
        )
    step = step or steps[-1]
    path = checkpoint.list_checkpoints(store.run_dir(run_id) / "checkpoints")[steps.index(step)]
    return EvalSource(run_id, step, path, run["recipe"], run["name"])


def _source_ids(run: dict[str, Any]) -> str:
    sources = json.loads(run.get("sources") or "[]")
    return ", ".join(s["run_id"] for s in sources) or "none recorded"


def source_problems(recipe: Any) -> list[Problem]:
    """nblab.recipe.SOURCE_CHECKS: eval.source and eval.step name a saved checkpoint."""
    if not recipe.eval.source:
        return []
    try:
        resolve_source(recipe.eval.source, recipe.eval.step)
    except SourceError as err:
        return [(err.field, err.value, str(err))]
    return []


def eval_name(source: EvalSource, *parts: str) -> str:
    """A name for an evaluation of `source`, e.g. gpt-tiny.step300.nvfp4.weights-only: also
    a valid sweep name (letters, digits, '.', '_', '-'), as `nblab sweep` takes a recipe's."""
    text = ".".join([source.name, f"step{source.step}", *parts])
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def eval_recipe(
    source: EvalSource,
    *,
    precision: str = "",
    weights_only: bool = False,
    scan: str = "",
    batches: int | None = None,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
):
    """The recipe of an evaluation of `source`: the source run's recipe (model, data, seed,
    sequence length, batch size and dtype as it trained) with [eval] naming the source,
    in one process and without model.init_from (the checkpoint holds every weight).
    batches: eval.batches (default the source's). `overrides`: more dotted fields, e.g.
    the [precision] section an advised recipe is evaluated in (with precision "")."""
    from nblab.recipe import PARALLEL_DEGREES, Recipe

    base = Recipe.from_toml(source.recipe)
    parts = [precision or base.precision.preset]
    parts += (["weights-only"] if weights_only else []) + ([f"by-{scan}"] if scan else [])
    fields: dict[str, Any] = {
        "name": name or eval_name(source, *parts),
        "eval.source": source.run_id,
        "eval.step": source.step,
        "eval.precision": precision,
        "eval.weights_only": weights_only,
        "eval.scan": scan,
        "model.init_from": "",
        "parallel.nproc": 1,
        **{f"parallel.{d}": 1 for d in PARALLEL_DEGREES},
    }
    if batches is not None:
        fields["eval.batches"] = batches
    return base.with_overrides({**fields, **(overrides or {})})


def recorded_step(store: RunStore, run_id: str) -> int | None:
    """The source step an eval run's sources recorded when it was created, or None."""
    sources = json.loads(store.run(run_id).get("sources") or "[]")
    return sources[0].get("step") if sources else None


def run_fields(recipe: Any, store: RunStore | None = None) -> dict[str, Any]:
    """The keyword arguments of RunStore.create_run for a run of `recipe`: steps; and for
    an evaluation, kind "eval" and its source run and step (step 0 resolved to the saved
    step it means now), with steps = that step (the one its metrics are logged at)."""
    if not recipe.eval.source:
        return {"steps": recipe.train.steps}
    source = resolve_source(recipe.eval.source, recipe.eval.step, store)
    return {
        "steps": source.step,
        "kind": "eval",
        "sources": [{"run_id": source.run_id, "step": source.step}],
    }


__all__ = [
    "EvalSource",
    "SourceError",
    "eval_name",
    "eval_recipe",
    "recorded_step",
    "resolve_source",
    "run_fields",
    "saved_steps",
    "source_problems",
]
