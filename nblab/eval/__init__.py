"""Evaluations of trained checkpoints: post-training quantization (PTQ), per-layer
sensitivity and the precision advisor (nblab eval / sensitivity / advise).

    source = resolve_source("RUN_ID")                    # a training run's checkpoint
    recipe = eval_recipe(source, precision="nvfp4")      # an evaluation is a recipe
    result = nblab.eval.run.run(recipe)                  # an eval run in the store

Modules, one concept each: source (what is evaluated), precision (formats and their bits),
ptq (quantize after training, evaluate), sensitivity (one module at a time), advisor
(what to keep high), run (an evaluation as a run), report (reading evaluations back,
without torch), commands (the CLI). Imports are lazy: `import nblab.eval.report` loads
no torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "EvalSource": "nblab.eval.source",
    "SourceError": "nblab.eval.source",
    "resolve_source": "nblab.eval.source",
    "eval_recipe": "nblab.eval.source",
    "run_fields": "nblab.eval.source",
    "forward_preset": "nblab.eval.precision",
    "weight_bits": "nblab.eval.precision",
    "Evaluator": "nblab.eval.ptq",
    "Scan": "nblab.eval.sensitivity",
    "scan": "nblab.eval.sensitivity",
    "Advice": "nblab.eval.advisor",
    "advise": "nblab.eval.advisor",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nblab.eval' has no attribute {name!r}")
