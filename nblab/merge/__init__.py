"""Merging fine-tuned runs: soups, task arithmetic, TIES, DARE, Fisher averaging.

    nblab merge SWEEP --method greedy              # the sweep's succeeded runs
    nblab merge RUN_A RUN_B RUN_C --method ties --base BASE_RUN
    nblab merge SWEEP --method uniform --top-k 3   # the 3 with the best val loss

    from nblab.merge import plan_merge, run_merge
    result = run_merge(plan_merge("ft-sweep", "greedy"))

methods.py holds one function per paper on state dicts; run.py makes a merge a run of kind
"merge" (checked first, then made; evaluated on the same val batches as its members);
command.py is `nblab merge`; report.py is the report's section (no torch: this package
imports run.py only when one of its names is used).
"""

from __future__ import annotations

import importlib

_FROM_RUN = ("METHODS", "MergeError", "MergeResult", "MergeSpec", "plan_merge", "run_merge")


def __getattr__(name: str):
    if name in _FROM_RUN:
        return getattr(importlib.import_module("nblab.merge.run"), name)
    raise AttributeError(f"module 'nblab.merge' has no attribute {name!r}")


__all__ = list(_FROM_RUN)
