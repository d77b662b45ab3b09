"""The `nblab` command line.

  nblab demo [--jobs N]                      the main job: formats, a CPU sweep, its report
  nblab run RECIPE [--set k=v ...] [--name N] train one recipe (a TOML file or a preset)
  nblab run RECIPE --dry-run                 the model and every module's spec per role, no run
  nblab run RECIPE --nproc N                 ... on N processes with torchrun (FSDP over the
                                             rest when the recipe sets no [parallel] degrees)
  nblab run --resume RUN                     continue an interrupted run from its checkpoint
  nblab runs [--sweep S] [--status S]        list runs
  nblab show RUN                             a run's recipe and last metrics
  nblab sweep FILE.toml [--jobs N] [--timeout S] [--resume] [--grid k=v1,v2 ...] [--no-wait]
                                             run a sweep as batch jobs (FILE may be a preset
                                             with --grid and --name); --spare keeps a warm
                                             job ready for the next run
  nblab sweep FILE.toml --launcher slurm [--partition P] [--time-min N]
                                             ... as Slurm jobs (one per point)
  nblab sweeps                               one line per sweep: counts per status
  nblab cancel SWEEP|RUN                     stop a sweep's unfinished runs, or one run
  nblab report SWEEP [--log-x]               the sweep's report.ipynb and offline report.html
  nblab export RUN|SWEEP [--tensorboard DIR] [--mlflow URI [--experiment NAME]]
                         [--hf DIR [--step N]]
                                             runs as TensorBoard events / MLflow runs /
                                             Hugging Face checkpoints
  nblab plan RECIPE --gpus N --gpu-mem 80GB  rank DP/FSDP/TP/PP layouts by memory and time
  nblab merge SWEEP|RUN... --method M [--top-k K] [--base RUN]
                                             merge fine-tuned runs (uniform, greedy,
                                             task-arithmetic, ties, dare, fisher) into a run
  nblab eval RUN --precision P1,P2 [--weights-only] [--step N]
                                             a checkpoint quantized after training (eval runs)
  nblab sensitivity RUN --precision P [--by module|role]
                                             Δ val loss with one module (or role) quantized
  nblab advise RUN --preset P --budget DLOSS | --bits B [--train]
                                             which modules to keep high; measures the advice
  nblab lab [JUPYTER LAB OPTIONS]            JupyterLab here, with the sidebar and the quickstart

Exit codes of `run` and `sweep`: 0 all succeeded, 1 a run failed, diverged or was
cancelled, 2 bad recipe, sweep or arguments.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _load_recipe(source: str, overrides: list[str], name: str | None, nproc: int | None = None):
    """The recipe `source` (a preset name or a TOML file) with the --set overrides, the
    name and --nproc applied together, so that e.g. `--nproc 2 --set parallel.pp=2` is
    validated as one recipe."""
    from nblab.recipe import RECIPE_PRESETS, Recipe

    if source in RECIPE_PRESETS and not Path(source).exists():
        recipe = Recipe.preset(source)
    else:
        recipe = Recipe.from_toml(Path(source))
    overrides = list(overrides)
    if name:
        overrides.append(f"name={name}")
    if nproc is not None:
        overrides += _nproc_overrides(recipe, overrides, nproc)
    return recipe.with_overrides(overrides) if overrides else recipe


def _nproc_overrides(recipe, overrides: list[str], nproc: int) -> list[str]:
    """parallel.nproc = nproc; and dp_shard = nproc when neither the recipe nor the
    overrides set a parallel degree (plain `--nproc N` means FSDP over N processes)."""
    from nblab.recipe import PARALLEL_DEGREES

    named = {o.split("=", 1)[0].strip() for o in overrides}
    degrees = [getattr(recipe.parallel, d) for d in PARALLEL_DEGREES]
    if named & {f"parallel.{d}" for d in PARALLEL_DEGREES} or math.prod(degrees) != 1:
        return [f"parallel.nproc={nproc}"]
    return [f"parallel.nproc={nproc}", f"parallel.dp_shard={nproc}"]


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
    from nblab.launch import check_layout, launch
    from nblab.recipe import Recipe, RecipeError
    from nblab.runs import RunStore

    store = RunStore()
    try:
        if args.resume and args.nproc is not None:
            print("--resume runs with the run's own parallel.nproc", file=sys.stderr)
            return EXIT_USAGE
        if args.resume:
            if args.recipe or args.set:
                print("--resume takes the run's own recipe; drop RECIPE and --set", file=sys.stderr)
                return EXIT_USAGE
            recipe = Recipe.from_toml(store.run(args.resume)["recipe"])
        elif not args.recipe:
            print("nblab run: give a RECIPE (a .toml file or a preset name)", file=sys.stderr)
            return EXIT_USAGE
        else:
            recipe = _load_recipe(args.recipe, args.set, args.name, args.nproc)
        if recipe.parallel.nproc > 1:
            check_layout(recipe)
        if args.dry_run:
            from nblab.train.trainer import dry_run

            print(dry_run(recipe))
            return EXIT_OK
    except (RecipeError, KeyError, ValueError, NotImplementedError) as err:
        print(f"nblab run: {err}", file=sys.stderr)
        return EXIT_USAGE
    _cancel_on_sigterm()
    from nblab.eval.source import run_fields

    run_id = args.resume or store.create_run(
        recipe.name, recipe.to_toml(), **run_fields(recipe, store)
    )
    print(f"run {run_id}  ({store.run_dir(run_id)})", flush=True)
    bar, update = _progress_bar(recipe.train.steps, 0)
    try:
        result = launch(
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


def _table(rows: list[dict], columns: list[str], width: int = 60) -> str:
    """Rows as a text table, each column right-aligned under its name (as pandas prints
    one), a value longer than `width` cut with "...", a missing one blank. Plain Python:
    `nblab runs` and `nblab show` answer without importing pandas."""

    def text(value) -> str:
        shown = "" if value is None else " ".join(str(value).split())
        return shown if len(shown) <= width else shown[: width - 3] + "..."

    cells = [[text(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [[c.rjust(w) for c, w in zip(columns, widths, strict=True)]]
    lines += [[v.rjust(w) for v, w in zip(r, widths, strict=True)] for r in cells]
    return "\n".join(" ".join(line) for line in lines)


def cmd_runs(args) -> int:
    from nblab.runs import RunStore

    rows = RunStore().rows(sweep=args.sweep, status=args.status)
    if not rows:
        print("no runs")
        return EXIT_OK
    columns = ["run_id", "name", "kind", "sweep", "status", "step", "steps", "error"]
    print(_table(rows, columns))
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
    series = store.series(args.run).get(args.run, {})
    if series:
        last = [
            {"key": key, "step": int(s.step[-1]), "value": f"{float(s.value[-1]):.6g}"}
            for key, s in series.items()
        ]
        print("last metrics:")
        print(_table(last, ["key", "step", "value"]))
    return EXIT_OK


def cmd_demo(args) -> int:
    from nblab import demo

    _cancel_on_sigterm()  # the demo cancels its jobs on Ctrl-C; SIGTERM means the same
    return demo.main(jobs=args.jobs, size=args.size, formats_only=args.formats_only)


def cmd_report(args) -> int:
    from nblab.report import build_report

    try:
        ipynb, html = build_report(args.sweep, log_x=args.log_x)
    except ValueError as err:
        print(f"nblab report: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"report: {html}\nnotebook: {ipynb}")
    return EXIT_OK


def cmd_export(args) -> int:
    from nblab.export import EXPORTERS, export
    from nblab.runs import RunStore

    destinations = {name: getattr(args, name) for name in EXPORTERS}
    if not any(destinations.values()):
        flags = " or ".join(f"--{name} {e.metavar}" for name, e in EXPORTERS.items())
        print(f"nblab export: say where to: {flags}", file=sys.stderr)
        return EXIT_USAGE
    options = {o: getattr(args, o) for e in EXPORTERS.values() for o in e.option_names}
    try:
        done = export(args.target, store=RunStore(), **destinations, **options)
    except (KeyError, ValueError) as err:
        print(f"nblab export: {err.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    for name, lines in done.items():
        print(f"{name}:")
        for line in lines:
            print(f"  {line}")
    return EXIT_OK


def _load_sweep(args):
    """The sweep of `nblab sweep`: a TOML file (plus --grid axes), or a recipe preset /
    recipe file with --grid axes."""
    import tomllib

    from nblab.recipe import RECIPE_PRESETS, Recipe, RecipeError
    from nblab.sweep import Sweep, SweepError

    path = Path(args.file)
    if args.file in RECIPE_PRESETS and not path.exists():
        return Sweep.from_overrides(args.file, args.grid, name=args.name)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        problem = ("(file)", args.file, f"a readable sweep TOML: {err}")
        raise SweepError(args.name, [problem]) from None
    from nblab.batch.slurm import split_launcher_settings

    try:  # `launcher = "slurm"` and [slurm] are the launcher's, not the sweep's
        args.toml_launcher = split_launcher_settings(data)
    except ValueError as err:
        raise SweepError(args.name, [("launcher", args.file, str(err))]) from None
    if "base" not in data and "model" in data:  # a recipe file: sweep it over --grid
        try:
            base = Recipe.from_toml(path)
        except RecipeError as err:
            raise SweepError(args.name, err.problems) from None
        return Sweep.from_overrides(base, args.grid, name=args.name)
    extra = Sweep.from_overrides(Recipe(), args.grid).grid if args.grid else {}
    data["grid"] = {**data.get("grid", {}), **extra}
    if args.name:
        data["name"] = args.name
    return Sweep.from_dict(data, root=path.parent)


def cmd_sweep(args) -> int:
    from nblab.batch.progress import watch
    from nblab.batch.slurm import SlurmError
    from nblab.batch.sweeps import run_sweep
    from nblab.sweep import SweepError

    try:
        sweep = _load_sweep(args)
        sweep.expand()
    except SweepError as err:
        print(f"nblab sweep: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.jobs < 1 or (args.timeout is not None and args.timeout <= 0):
        print("nblab sweep: --jobs must be >= 1 and --timeout > 0", file=sys.stderr)
        return EXIT_USAGE
    launcher = _sweep_launcher(args)
    if isinstance(launcher, str):
        print(f"nblab sweep: {launcher}", file=sys.stderr)
        return EXIT_USAGE
    # --no-wait: a local scheduler must outlive this process, so it runs detached
    # (Slurm jobs outlive it anyway)
    try:
        handle = run_sweep(
            sweep,
            launcher=launcher,
            jobs=args.jobs,
            timeout=args.timeout,
            resume=args.resume,
            wait=False,
            detach=args.no_wait and launcher is None,
            spare=args.spare,
        )
    except SlurmError as err:  # sbatch refused the jobs (their runs are marked failed)
        print(f"nblab sweep: {err}", file=sys.stderr)
        return EXIT_FAILED
    if launcher is not None and not args.no_wait:
        _refresh_in_background(launcher)
    print(f"sweep {sweep.name}: {len(handle.run_ids)} runs", flush=True)
    if handle.skipped:
        print(f"  left alone (succeeded or running): {', '.join(handle.skipped)}")
    for run_id, row in zip(handle.run_ids, handle.status().itertuples(), strict=True):
        print(f"  {run_id}  {row.name}", flush=True)
    if args.no_wait or not handle.run_ids:
        return EXIT_OK
    _cancel_on_sigterm()
    try:
        watch(handle)  # a bar per run on a terminal, plain lines otherwise
    except KeyboardInterrupt:
        print(f"\ncancelling sweep {sweep.name}", file=sys.stderr)
        handle.cancel()
        handle.wait(timeout=30)
    frame = handle.wait()
    shown = frame[["run_id", "name", "status", "step", "error"]].astype(object).fillna("")
    print(shown.to_string(index=False, max_colwidth=80))
    return EXIT_OK if (frame.status == "succeeded").all() else EXIT_FAILED


def _sweep_launcher(args):
    """None (the local launcher), a SlurmLauncher, or a usage error message."""
    toml_name, options = getattr(args, "toml_launcher", (None, {}))
    name = args.launcher or toml_name or "local"
    if name != "slurm":
        if args.partition is not None or args.time_min is not None:
            return "--partition and --time-min are options of --launcher slurm"
        return None
    if args.timeout is not None:
        return "--timeout limits local jobs; with --launcher slurm give --time-min"
    if args.spare:
        return "--spare keeps a local job warm; Slurm starts its own jobs"
    from nblab.batch.slurm import SlurmError, SlurmLauncher

    options = dict(options)
    if args.partition is not None:
        options["partition"] = args.partition
    if args.time_min is not None:
        options["time_min"] = args.time_min
    try:
        return SlurmLauncher(**options)
    except (SlurmError, ValueError, TypeError) as err:
        return str(err)


def _refresh_in_background(launcher) -> None:
    """Slurm states reach slurm.json, and a job that died unrecorded ends its run."""
    import threading
    import time

    def loop() -> None:
        while True:
            launcher.refresh()
            time.sleep(launcher.POLL_S)

    threading.Thread(target=loop, name="nblab-slurm-poll", daemon=True).start()


def cmd_sweeps(args) -> int:
    from nblab.batch.sweeps import latest_runs
    from nblab.runs import STATUSES, RunStore

    store = RunStore()
    frame = store.runs()
    names = [s for s in dict.fromkeys(frame.sweep.dropna())]
    if not names:
        print("no sweeps")
        return EXIT_OK
    width = max(len(n) for n in names)
    for name in names:
        latest = latest_runs(store, name)
        counts = latest.status.value_counts()
        shown = ", ".join(f"{counts[s]} {s}" for s in STATUSES if s in counts)
        runs = int((frame.sweep == name).sum())
        extra = f"  ({runs} runs in all)" if runs != len(latest) else ""
        print(f"{name:<{width}}  {len(latest)} points: {shown}{extra}")
    return EXIT_OK


def cmd_cancel(args) -> int:
    from nblab.batch.cancellation import cancel
    from nblab.runs import RunStore

    try:
        result = cancel(args.target, store=RunStore())
    except KeyError as err:
        print(f"nblab cancel: {err.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    if not result:
        print(f"{args.target}: nothing to cancel (every run has ended)")
    for run_id, status in result.items():
        print(f"{run_id} {status}")
    return EXIT_OK


LAB_HELP = """usage: nblab lab [JUPYTER LAB OPTIONS]

JupyterLab in the current folder, with what nblab adds:
  - the nblab sidebar (every sweep and run of $NBLAB_HOME, live, with actions) and the
    nblab server API it reads (both installed with nblab);
  - notebooks/quickstart.ipynb, copied here as nblab-quickstart.ipynb the first time
    (a notebook must lie inside the server's root to open) and opened; a copy you
    edited is never overwritten.
Every option is JupyterLab's own and passes through unchanged; they follow.
"""
# options that only print: they start no server and copy nothing
LAB_INFO_OPTIONS = ("-h", "--help", "--help-all", "--version")


def cmd_lab(lab_args: list[str]) -> int:
    """JupyterLab in the current folder with the nblab sidebar and the quickstart open
    (copied here as nblab-quickstart.ipynb the first time: a notebook must live inside
    the server's root to open). --help says what nblab adds, then JupyterLab's help."""
    import os
    import shutil
    import subprocess

    from nblab.notebooks import notebook

    if any(a in LAB_INFO_OPTIONS for a in lab_args):
        if "--version" not in lab_args:
            print(LAB_HELP, flush=True)
        return subprocess.run([sys.executable, "-m", "jupyterlab", *lab_args]).returncode
    target = Path.cwd() / "nblab-quickstart.ipynb"
    if not target.exists():
        shutil.copyfile(notebook("quickstart.ipynb"), target)
    argv = [sys.executable, "-m", "jupyterlab", target.name, *lab_args]
    print(f"starting JupyterLab in {Path.cwd()} with {target.name}", flush=True)
    os.execv(sys.executable, argv)  # JupyterLab takes over this process (and Ctrl-C)


def _add_export_targets(parser: argparse.ArgumentParser) -> None:
    """One option per nblab.export.EXPORTERS target, and the options targets take."""
    from nblab.export import EXPORTERS

    added: set[str] = set()
    for name, exporter in EXPORTERS.items():
        parser.add_argument(f"--{name}", metavar=exporter.metavar, help=exporter.help)
        for option, metavar, text in exporter.options:
            if option not in added:  # one --step serves --hf and --adapter
                parser.add_argument(f"--{option}", metavar=metavar, help=f"{text} (--{name})")
                added.add(option)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nblab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="the main job: format table, a CPU sweep of four formats, its report"
    )
    demo.add_argument("--jobs", type=int, default=2, help="sweep jobs at once (default 2)")
    demo.add_argument("--size", type=int, default=1024, help="N of the NxN format-table tensor")
    demo.add_argument("--formats-only", action="store_true", help="print the table, no sweep")
    demo.set_defaults(func=cmd_demo)

    # listed for --help; main() passes `nblab lab ...` options on to jupyter lab
    commands.add_parser("lab", help="JupyterLab with the sidebar and the quickstart open")

    # listed for --help; main() hands `nblab plan ...` to the planner's own parser
    commands.add_parser("plan", help="rank parallel layouts: RECIPE --gpus N --gpu-mem 80GB")
    # likewise `nblab merge ...` (nblab.merge.command)
    commands.add_parser("merge", help="merge fine-tuned runs: SWEEP|RUN... --method M")

    # listed for --help; main() hands these to nblab.eval.commands (`nblab eval --help`)
    commands.add_parser("eval", help="evaluate a checkpoint quantized after training")
    commands.add_parser("sensitivity", help="Δ val loss per module or role of a format")
    commands.add_parser("advise", help="which modules to keep in high precision")

    report = commands.add_parser("report", help="a sweep's report: report.ipynb + report.html")
    report.add_argument("sweep")
    report.add_argument("--log-x", action="store_true", help="log-scale step axis")
    report.set_defaults(func=cmd_report)

    export = commands.add_parser(
        "export", help="runs as TensorBoard event files, MLflow runs, Hugging Face checkpoints"
    )
    export.add_argument("target", metavar="RUN_ID|SWEEP", help="a run, or every run of a sweep")
    _add_export_targets(export)
    export.set_defaults(func=cmd_export)

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
    run.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="processes (torchrun --standalone); sets parallel.nproc, and parallel.dp_shard "
        "when the recipe sets no degree",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the model and what each of its linear modules' roles would be quantized "
        "to, validate the layout, and stop (nothing is trained or written)",
    )
    run.set_defaults(func=cmd_run)

    runs = commands.add_parser("runs", help="list runs")
    runs.add_argument("--sweep")
    runs.add_argument("--status")
    runs.set_defaults(func=cmd_runs)

    show = commands.add_parser("show", help="a run's recipe and last metrics")
    show.add_argument("run")
    show.set_defaults(func=cmd_show)

    sweep = commands.add_parser("sweep", help="run a sweep as batch jobs")
    sweep.add_argument("file", help="a sweep .toml (or a recipe / preset swept over --grid)")
    sweep.add_argument("--jobs", type=int, default=1, help="jobs at once (default 1)")
    sweep.add_argument("--timeout", type=float, help="seconds per job")
    sweep.add_argument("--resume", action="store_true", help="rerun only unsucceeded points")
    sweep.add_argument(
        "--spare",
        action="store_true",
        help="local jobs: keep a warm job ready for the next run (~0.8 s of overhead a "
        "job instead of ~3.4 s, for ~2.5 s of CPU to warm each spare)",
    )
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a grid axis, added to the file's (repeatable)",
    )
    sweep.add_argument("--name", help="the sweep's name (default: the file's)")
    sweep.add_argument("--no-wait", action="store_true", help="start the jobs and return")
    sweep.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        help="where jobs run (default: the file's `launcher`, else local)",
    )
    sweep.add_argument("--partition", help="Slurm partition (--launcher slurm)")
    sweep.add_argument(
        "--time-min", type=int, metavar="N", help="Slurm time limit per job, minutes"
    )
    sweep.set_defaults(func=cmd_sweep)

    sweeps = commands.add_parser("sweeps", help="one line per sweep with counts per status")
    sweeps.set_defaults(func=cmd_sweeps)

    cancel = commands.add_parser("cancel", help="cancel a sweep's unfinished runs, or one run")
    cancel.add_argument("target", metavar="SWEEP|RUN")
    cancel.set_defaults(func=cmd_cancel)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lab"]:
        return cmd_lab(argv[1:])
    if argv[:1] == ["plan"]:  # the planner owns its options, --help included
        from nblab.parallel.planner import plan_command

        return plan_command(argv[1:])
    if argv[:1] == ["merge"]:
        from nblab.merge.command import merge_command

        return merge_command(argv[1:])
    if argv[:1] in (["eval"], ["sensitivity"], ["advise"]):  # evaluations own their options
        from nblab.eval.commands import main as eval_main

        return eval_main(argv)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
