"""Merging fine-tuned runs: soups, task arithmetic, TIES, DARE, Fisher averaging.

    nblab merge SWEEP --method greedy              # the sweep's succeeded runs
    nblab merge RUN_A RUN_B RUN_C --method ties --base BASE_RUN
    nblab merge SWEEP --method uniform --top-k 3   # the 3 with the best val loss

    from nblab.merge import plan_merge, run_merge
    result = run_merge(plan_merge("ft-sweep", "greedy"))

methods.py holds one function per paper on state dicts; run.py makes a merge a run of kind
"merge" (checked first, then made; evaluated on the same val batches as its members);
command.py is `nblab merge`; report.py is the report's section.
"""

from nblab.merge.run import (
    METHODS,
    MergeError,
    MergeResult,
    MergeSpec,
    plan_merge,
    run_merge,
)

__all__ = ["METHODS", "MergeError", "MergeResult", "MergeSpec", "plan_merge", "run_merge"]
