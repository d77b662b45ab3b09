"""An evaluation run: a recipe whose eval.source is set, run instead of trained.

    result = run(recipe, store=store)    # what nblab.launch.launch does with such a recipe

So `nblab run`, sweeps and papermill batch jobs (notebooks/train.ipynb calls launch) run an
evaluation unchanged. The run has kind "eval" and its source run and step; its metrics
are logged at the source step; its folder holds plan.txt and, as JSON:
- eval.json: what was evaluated (source, step, format, weights_only) and the metrics;
- sensitivity.json (eval.scan set): the scan (nblab.eval.sensitivity.Scan).
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nblab.eval.ptq import Evaluator, evaluate_precision
from nblab.eval.report import ADVICE_FILE, EVAL_FILE, SCAN_FILE
from nblab.eval.sensitivity import Scan, scan
from nblab.eval.source import EvalSource, recorded_step, resolve_source, run_fields
from nblab.precision.plan import PlanReport
from nblab.recipe import Recipe
from nblab.runs import RunStore

log = logging.getLogger("nblab.eval")


@dataclass
class EvalResult:
    """What an evaluation run ended with (the fields of nblab.train.trainer.TrainResult, so
    the train notebook reads either)."""

    run_id: str
    status: str
    step: int  # the source step evaluated
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    plan: PlanReport | None = None
    scan: Scan | None = None


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=_plain) + "\n")
    tmp.replace(path)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _source_of(recipe: Recipe, store: RunStore, run_id: str | None) -> EvalSource:
    """The checkpoint the recipe means; for a created run, the step its sources recorded
    (eval.step 0 means the latest when the run was created)."""
    step = recipe.eval.step
    if not step and run_id is not None:
        step = recorded_step(store, run_id) or 0
    return resolve_source(recipe.eval.source, step, store)


def run(
    recipe: Recipe,
    *,
    store: RunStore | None = None,
    run_id: str | None = None,
    sweep: str | None = None,
    evaluator: Evaluator | None = None,
    progress: Callable[[int, dict], None] | None = None,
) -> EvalResult:
    """Run the evaluation `recipe` says, recording it as an eval run in `store`.

    run_id: an existing queued run (a batch job's); else one is created. evaluator: one
    already holding this source's checkpoint (the CLI shares it between formats).
    progress(done, metrics): as the trainer's, once per scanned configuration.
    Exceptions are recorded (failed, or cancelled on KeyboardInterrupt) and raised again."""
    recipe.validate()
    if not recipe.eval.source:
        raise ValueError("eval.source is empty: this recipe trains (nblab.launch.launch)")
    store = store or RunStore()
    source = _source_of(recipe, store, run_id)
    if run_id is None:
        run_id = store.create_run(recipe.name, recipe.to_toml(), sweep, **run_fields(recipe, store))
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = store.writer(run_id)
    e = recipe.eval
    try:
        log.info("evaluating %s in %s", source.describe(), e.precision or "[precision]")
        if evaluator is None or not evaluator.serves(recipe, source):
            evaluator = Evaluator(recipe, source)
        precision = e.precision or recipe.precision
        record = {
            "source": source.run_id,
            "step": source.step,
            "precision": e.precision or recipe.precision.preset,
            "keep_high_precision": list(recipe.precision.keep_high_precision),
            "weights_only": e.weights_only,
            "scan": e.scan,
            "batches": e.batches,
        }
        if e.scan:

            def tick(i: int, total: int) -> None:
                writer.heartbeat()
                if progress is not None:
                    progress(source.step, {"scanned": float(i), "of": float(total)})

            result = scan(
                evaluator,
                precision,
                by=e.scan,
                weights_only=e.weights_only,
                progress=tick,
                writer=writer,
            )
            write_json(run_dir / SCAN_FILE, result.to_dict())
            metrics = {
                "val_loss": result.base_loss,
                "scan_forward_passes": float(result.forward_passes),
                "scan_seconds": result.seconds,
            }
            writer.log_metrics(source.step, metrics)
            plan = None
        else:
            metrics, plan = evaluate_precision(evaluator, precision, e.weights_only, writer)
            (run_dir / "plan.txt").write_text(f"{source.describe()}\n{plan}\n")
            result = None
        write_json(run_dir / EVAL_FILE, {**record, "metrics": metrics})
        writer.close("succeeded")
        if progress is not None:
            progress(source.step, metrics)
        return EvalResult(run_id, "succeeded", source.step, metrics, plan=plan, scan=result)
    except KeyboardInterrupt:
        writer.close("cancelled", error="cancelled by the user")
        raise
    except BaseException as err:
        log.error("failed:\n%s", traceback.format_exc())
        writer.close("failed", error=f"{type(err).__name__}: {err}")
        raise


__all__ = ["ADVICE_FILE", "EVAL_FILE", "SCAN_FILE", "EvalResult", "run"]
