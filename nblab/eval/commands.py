"""The evaluation commands of the `nblab` CLI (nblab.cli hands these argv to `main`).

  nblab eval RUN [--step N] --precision P1,P2 [--weights-only] [--batches N]
                 [--save-recipe FILE]
      one eval run per format: val loss, perplexity (and accuracy for addition), the gap
      to the checkpoint in high precision, bits per element. --save-recipe writes the
      evaluation recipe instead, to sweep: nblab sweep FILE --grid eval.precision=a,b
  nblab sensitivity RUN [--step N] --precision P [--by module|role] [--weights-only]
                 [--batches N]
      quantize one module (or role) at a time: Δ val loss and SQNR per module
  nblab advise RUN [--step N] --preset P (--budget DLOSS | --bits B) [--weights-only]
                 [--batches N] [--train] [--no-refine]
      the modules to keep in high precision (a module scan, reused when one exists),
      the recipe patch and predicted Δ loss; then a PTQ eval of the advised recipe
      (while it misses a loss budget, the next module by the greedy order is kept too,
      unless --no-refine), and with --train a training run of it

Bad input (an unknown run, a run without checkpoints, a step not saved, an unknown
format) is named with what exists, exit code 2, and nothing is written.
Exit codes: 0 done, 1 an evaluation failed or the advice missed its budget, 2 bad input.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
COMMANDS = ("eval", "sensitivity", "advise")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_ID", help="the training run to evaluate")
    parser.add_argument(
        "--step", type=int, default=0, help="its checkpoint step (default: the latest)"
    )
    parser.add_argument(
        "--weights-only", action="store_true", help="quantize the weights, not the activations"
    )
    parser.add_argument(
        "--batches",
        type=int,
        metavar="N",
        help="fixed eval batches (default: the run's eval.batches, the ones it logged)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nblab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser("eval", help="evaluate a checkpoint quantized after training")
    _common(ev)
    ev.add_argument(
        "--precision",
        required=True,
        metavar="P1,P2",
        help="formats: precision presets or QuantSpec names, comma-separated",
    )
    ev.add_argument(
        "--save-recipe",
        metavar="FILE",
        type=Path,
        help="write the evaluation recipe (to sweep over eval.precision); no run",
    )
    ev.set_defaults(func=cmd_eval)
    sens = commands.add_parser("sensitivity", help="Δ val loss per module or role")
    _common(sens)
    sens.add_argument("--precision", required=True, metavar="P", help="the format")
    sens.add_argument("--by", choices=("module", "role"), default="module")
    sens.set_defaults(func=cmd_sensitivity)
    adv = commands.add_parser("advise", help="which modules to keep in high precision")
    _common(adv)
    adv.add_argument("--preset", required=True, help="the precision preset to serve in")
    budget = adv.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", type=float, metavar="DLOSS", help="Δ val loss allowed")
    budget.add_argument("--bits", type=float, metavar="B", help="bits per element allowed")
    adv.add_argument("--train", action="store_true", help="also train the advised recipe")
    adv.add_argument(
        "--no-refine",
        action="store_true",
        help="measure the greedy advice as it is, even when it misses the budget",
    )
    adv.set_defaults(func=cmd_advise)
    return parser


def _fail(command: str, err: Exception) -> int:
    print(f"nblab {command}: {err}", file=sys.stderr)
    return EXIT_USAGE


def _prepare(args, **fields):
    """(store, source, recipe) of an evaluation; raises what bad input raises."""
    from nblab.eval.source import eval_recipe, resolve_source
    from nblab.recipe import RecipeError
    from nblab.runs import RunStore

    if args.batches is not None and args.batches < 1:
        raise RecipeError([("--batches", args.batches, "an integer >= 1")])
    store = RunStore()
    source = resolve_source(args.run, args.step, store)
    recipe = eval_recipe(source, weights_only=args.weights_only, batches=args.batches, **fields)
    return store, source, recipe


def _bad_input() -> tuple[type[Exception], ...]:
    from nblab.eval.advisor import AdviceError
    from nblab.eval.source import SourceError
    from nblab.recipe import RecipeError

    return (SourceError, RecipeError, AdviceError)


def cmd_eval(args) -> int:
    from nblab.eval.ptq import Evaluator
    from nblab.eval.run import run
    from nblab.eval.source import eval_recipe

    names = [p.strip() for p in args.precision.split(",") if p.strip()]
    try:
        if not names:
            raise ValueError("--precision: give one or more formats, e.g. nvfp4,mxfp4")
        store, source, first = _prepare(args, precision=names[0])
        recipes = [first] + [
            eval_recipe(source, precision=p, weights_only=args.weights_only, batches=args.batches)
            for p in names[1:]
        ]
    except (*_bad_input(), ValueError) as err:
        return _fail("eval", err)
    if args.save_recipe:
        base = eval_recipe(source, weights_only=args.weights_only, batches=args.batches)
        args.save_recipe.write_text(base.to_toml())
        print(
            f"wrote {args.save_recipe}: sweep it with\n  nblab sweep {args.save_recipe} "
            f"--grid eval.precision={','.join(names)}"
        )
        return EXIT_OK
    evaluator = Evaluator(first, source)
    high = evaluator.evaluate()["val_loss"]
    print(
        f"{source.describe()}: val loss {high:.4f} in high precision "
        f"({first.eval.batches} eval batches)"
    )
    print(
        f"{'format':16s} {'weights':8s} {'val_loss':>9s} {'gap':>8s} {'ppl':>8s} {'bits':>6s}  run"
    )
    status = EXIT_OK
    for recipe in recipes:
        try:
            result = run(recipe, store=store, evaluator=evaluator)
        except Exception as err:  # recorded as failed in the store; go on with the rest
            print(f"{recipe.eval.precision}: failed: {type(err).__name__}: {err}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        m = result.metrics
        acc = f"  accuracy {m['val_accuracy']:.3f}" if "val_accuracy" in m else ""
        print(
            f"{recipe.eval.precision:16s} {'only' if args.weights_only else 'and x':8s} "
            f"{m['val_loss']:9.4f} {m['val_loss'] - high:+8.4f} {m['val_ppl']:8.3f} "
            f"{m['bits_per_element']:6.2f}  {result.run_id}{acc}"
        )
    return status


def _bar(total_hint: int = 0):
    from tqdm import tqdm

    bar = tqdm(total=total_hint or None, unit="config", file=sys.stderr, dynamic_ncols=True)

    def update(step: int, metrics: dict) -> None:
        if "of" in metrics:
            bar.total = int(metrics["of"])
            bar.update(int(metrics["scanned"]) - bar.n)

    return bar, update


def _print_scan(result) -> None:
    frame = result.frame().sort_values("delta_loss", ascending=False, na_position="last")
    print(
        f"high-precision val loss {result.base_loss:.4f}; Δ val loss when quantized alone "
        f"({result.precision}{' weights only' if result.weights_only else ''}, by {result.by}):"
    )
    for r in frame.itertuples():
        if r.reason:
            print(f"  {r.module:28s} {r.role:6s}  not quantizable: {r.reason}")
        else:
            print(
                f"  {r.module:28s} {r.role:6s} {r.delta_loss:+.5f}  SQNR {r.sqnr_db:6.2f} dB"
                f"  {r.bits:5.2f} bits"
            )
    print(
        f"{result.forward_passes} forward passes over {result.batches} batches "
        f"({result.tokens} tokens each pass set), {result.block_passes} blocks computed, "
        f"{result.seconds:.1f} s ({result.cpu_seconds:.1f} s CPU)"
    )


def cmd_sensitivity(args) -> int:
    from nblab.eval.run import run

    try:
        store, source, recipe = _prepare(args, precision=args.precision, scan=args.by)
    except (*_bad_input(), ValueError) as err:
        return _fail("sensitivity", err)
    bar, update = _bar()
    try:
        result = run(recipe, store=store, progress=update)
    except Exception as err:
        bar.close()
        print(f"nblab sensitivity: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    bar.close()
    print(f"run {result.run_id} ({source.describe()})")
    _print_scan(result.scan)
    return EXIT_OK


def cmd_advise(args) -> int:
    from nblab.eval.advisor import advise, floor_bits
    from nblab.eval.report import find_scan
    from nblab.eval.run import run
    from nblab.eval.sensitivity import Scan
    from nblab.precision.presets import PRECISION_PRESETS

    try:
        if args.preset not in PRECISION_PRESETS:
            raise ValueError(
                f"--preset {args.preset!r} is unknown; accepted: {', '.join(PRECISION_PRESETS)}"
            )
        if args.budget is not None and not (math.isfinite(args.budget) and args.budget >= 0):
            raise ValueError(f"--budget {args.budget}: a Δ val loss >= 0")
        if args.bits is not None and not (math.isfinite(args.bits) and args.bits > 0):
            raise ValueError(f"--bits {args.bits}: bits per element > 0")
        store, source, scan_recipe = _prepare(args, precision=args.preset, scan="module")
        if args.bits is not None:  # refused before anything is scanned or written
            floor = floor_bits(scan_recipe, args.preset)
            if floor > args.bits + 1e-12:
                raise ValueError(
                    f"--bits {args.bits:g} is below what {args.preset} takes with every module "
                    f"it can quantize quantized: {floor:.3f} bits per element"
                )
    except (*_bad_input(), ValueError) as err:
        return _fail("advise", err)
    from nblab.eval.advisor import measure_and_record
    from nblab.eval.ptq import Evaluator

    batches = scan_recipe.eval.batches
    found = find_scan(store, source.run_id, source.step, args.preset, args.weights_only, batches)
    evaluator = Evaluator(scan_recipe, source)
    if found is not None:
        scan_run, data = found
        result = Scan.from_dict(data)
        print(f"module scan: run {scan_run} (reused)")
    else:
        bar, update = _bar()
        try:
            done = run(scan_recipe, store=store, evaluator=evaluator, progress=update)
        finally:
            bar.close()
        scan_run, result = done.run_id, done.scan
        print(
            f"module scan: run {scan_run}, {result.forward_passes} forward passes, "
            f"{result.seconds:.1f} s"
        )
    try:
        advice = advise(result, args.preset, budget=args.budget, bits=args.bits)
    except (*_bad_input(), ValueError) as err:
        return _fail("advise", err)
    advice.scan_run = scan_run
    advice = measure_and_record(
        advice,
        result,
        source,
        scan_recipe,
        store=store,
        evaluator=evaluator,
        refine=not args.no_refine,
        train=args.train,
    )
    print(advice.describe())
    if len(advice.rounds) > 1:
        for r in advice.rounds[1:]:
            print(
                f"  kept {r['module']} too (the measured Δ missed the budget): measured Δ "
                f"{r['measured_delta']:.4f}"
            )
    advised = store.run_dir(advice.measured_run) / "advised.toml"
    print(f"the advised training recipe: {advised}")
    if args.train and advice.trained_run is None:
        print(f"it trains on several processes: nblab run {advised}", file=sys.stderr)
    if advice.budget is not None and advice.measured_delta > advice.budget:
        print(
            f"nblab advise: the measured Δ loss {advice.measured_delta:.4f} misses the "
            f"budget {advice.budget:g}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


__all__ = ["COMMANDS", "build_parser", "main"]
