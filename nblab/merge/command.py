"""`nblab merge SWEEP | RUN_ID... --method M [--top-k K] [--base RUN_ID] [options]`.

Exit codes: 0 the merge succeeded, 1 it failed while being made (the run records why),
2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import sys

from nblab.merge.run import DARE_THEN, DEFAULT_TRIM, METHODS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nblab merge",
        description="Merge fine-tuned runs into a run of kind merge, evaluated on the same "
        "val batches as its members.",
    )
    p.add_argument("members", nargs="+", metavar="SWEEP|RUN_ID", help="a sweep, or run ids")
    p.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    p.add_argument(
        "--top-k", type=int, metavar="K", help="only the K members with the best val loss"
    )
    p.add_argument(
        "--base",
        metavar="RUN_ID|DIR",
        help="what the members were fine-tuned from (task-arithmetic, ties, dare; default: "
        "their shared model.init_from)",
    )
    p.add_argument(
        "--lam",
        type=float,
        help="scale of the merged task vector, in (0, 1] "
        "(default 1/n for task-arithmetic and dare, 1 for ties and dare --then ties)",
    )
    p.add_argument("--p", type=float, default=0.0, help="DARE's drop rate, in [0, 1)")
    p.add_argument(
        "--trim",
        type=float,
        default=DEFAULT_TRIM,
        help=f"TIES keeps this percent of each task vector (default {DEFAULT_TRIM:g})",
    )
    p.add_argument(
        "--then", default="task-arithmetic", help=f"after DARE: {' or '.join(DARE_THEN)}"
    )
    p.add_argument("--seed", type=int, default=0, help="DARE's drop masks")
    return p


def merge_command(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:  # argparse printed the error (or --help)
        return int(exit_.code or 0)
    from nblab.merge.run import MergeError, plan_merge, run_merge
    from nblab.runs import RunStore

    store = RunStore()
    target = args.members[0] if len(args.members) == 1 else args.members
    try:
        spec = plan_merge(
            target,
            args.method,
            top_k=args.top_k,
            base=args.base,
            lam=args.lam,
            p=args.p,
            trim=args.trim,
            then=args.then,
            seed=args.seed,
            store=store,
        )
    except MergeError as err:
        print(f"nblab merge: {err}", file=sys.stderr)
        return 2
    print(
        f"merging {len(spec.members)} runs with {spec.method}: {', '.join(spec.members)}",
        flush=True,
    )
    try:
        result = run_merge(spec, store=store)
    except Exception as err:
        print(f"nblab merge failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    best = result.best_member
    print(f"run {result.run_id} ({spec.name}): val_loss {result.val_loss:.4f}", end="")
    if result.val_accuracy is not None:
        print(f", exact match {result.val_accuracy:.3f}", end="")
    print(f"\nbest member {best['run_id']} ({best['name']}): val_loss {best['val_loss']:.4f}")
    print(f"soup minus best: {result.soup_minus_best:+.4f} val loss")
    if spec.method == "greedy":
        taken = ", ".join(result.taken)
        print(f"greedy soup took {len(result.taken)} of {len(spec.members)}: {taken}")
    return 0


__all__ = ["merge_command", "parser"]
