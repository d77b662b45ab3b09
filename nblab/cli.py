"""The `nblab` command line.

  nblab demo                                 the main job
  nblab run RECIPE [--set k=v ...] [--name N] train one recipe (a TOML file or a preset)
  nblab run --resume RUN                     continue an interrupted run from its checkpoint
  nblab runs [--sweep S] [--status S]        list runs
  nblab show RUN                             a run's recipe and last metrics

Exit codes of `run`: 0 succeeded, 1 failed or diverged, 2 bad recipe or arguments.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _load_recipe(source: str, overrides: list[str], name: str | None):
    from nblab.recipe import RECIPE_PRESETS, Recipe

    if source in RECIPE_PRESETS and not Path(source).exists():
        recipe = Recipe.preset(source)
    else:
        recipe = Recipe.from_toml(Path(source))
    if name:
        overrides = [*overrides, f"name={name}"]
    return recipe.with_overrides(overrides) if overrides else recipe


def _progress_bar(total: int, initial: int):
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(step: int, metrics: dict) -> None:
        bar.update(step - bar.n)
        shown = {k: f"{metrics[k]:.4f}" for k in ("loss", "val_loss") if k in metrics}
        bar.set_postfix(shown, refresh=False)

    return bar, update


def _cancel_on_sigterm() -> None:
    """A launcher stops a job with SIGTERM: record it as cancelled, not failed."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_run(args) -> int:
    from nblab.recipe import Recipe, RecipeError
    from nblab.runs import RunStore
    from nblab.train.trainer import train

    store = RunStore()
    try:
        if args.resume:
            if args.recipe or args.set:
                print("--resume takes the run's own recipe; drop RECIPE and --set", file=sys.stderr)
                return EXIT_USAGE
            recipe = Recipe.from_toml(store.run(args.resume)["recipe"])
        elif not args.recipe:
            print("nblab run: give a RECIPE (a .toml file or a preset name)", file=sys.stderr)
            return EXIT_USAGE
        else:
            recipe = _load_recipe(args.recipe, args.set, args.name)
    except (RecipeError, KeyError, ValueError) as err:
        print(f"nblab run: {err}", file=sys.stderr)
        return EXIT_USAGE
    _cancel_on_sigterm()
    run_id = args.resume or store.create_run(
        recipe.name, recipe.to_toml(), steps=recipe.train.steps
    )
    print(f"run {run_id}  ({store.run_dir(run_id)})", flush=True)
    bar, update = _progress_bar(recipe.train.steps, 0)
    try:
        result = train(
            recipe, store=store, run_id=run_id, resume=bool(args.resume), progress=update
        )
    except KeyboardInterrupt:
        bar.close()
        print(f"run {run_id} cancelled", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:
        bar.close()
        print(f"run {run_id} failed: {type(err).__name__}: {err}", file=sys.stderr)
        print(f"log: {store.run_dir(run_id) / 'train.log'}", file=sys.stderr)
        return EXIT_FAILED
    bar.close()
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if "loss" in k)
    print(f"run {run_id} {result.status} at step {result.step}: {shown}")
    if result.error:
        print(result.error, file=sys.stderr)
    return EXIT_OK if result.status == "succeeded" else EXIT_FAILED


def cmd_runs(args) -> int:
    from nblab.runs import RunStore

    frame = RunStore().runs(sweep=args.sweep, status=args.status)
    if frame.empty:
        print("no runs")
        return EXIT_OK
    columns = ["run_id", "name", "sweep", "status", "step", "steps", "error"]
    print(frame[columns].fillna("").to_string(index=False, max_colwidth=60))
    return EXIT_OK


def cmd_show(args) -> int:
    from nblab.runs import RunStore

    store = RunStore()
    try:
        run = store.run(args.run)
    except KeyError as err:
        print(f"nblab show: {err}", file=sys.stderr)
        return EXIT_USAGE
    for key in ("run_id", "name", "sweep", "status", "step", "steps", "error"):
        print(f"{key:8s} {run.get(key)}")
    print(f"folder   {store.run_dir(args.run)}\n\n{run['recipe']}")
    metrics = store.metrics(args.run)
    if not metrics.empty:
        last = metrics.sort_values("step").groupby("key").tail(1)
        print("last metrics:")
        print(last[["key", "step", "value"]].to_string(index=False))
    return EXIT_OK


def cmd_demo(args) -> int:
    from nblab import demo

    demo.main(size=args.size, seed=args.seed)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nblab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the main job")
    demo.add_argument("--size", type=int, default=1024, help="N of the NxN test tensor")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    run = commands.add_parser("run", help="train one recipe")
    run.add_argument("recipe", nargs="?", help="a recipe .toml file or a preset name")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override, e.g. precision.preset=nvfp4 (repeatable)",
    )
    run.add_argument("--name", help="the run's name (default: the recipe's)")
    run.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    run.set_defaults(func=cmd_run)

    runs = commands.add_parser("runs", help="list runs")
    runs.add_argument("--sweep")
    runs.add_argument("--status")
    runs.set_defaults(func=cmd_runs)

    show = commands.add_parser("show", help="a run's recipe and last metrics")
    show.add_argument("run")
    show.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
