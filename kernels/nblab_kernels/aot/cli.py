"""python -m nblab_kernels.aot: compile every kernel specialization for GPU targets.

    python -m nblab_kernels.aot [--targets 80,89,90,100] [--jobs N] [--json PATH]
                                [--report [DIR]]

Enumerates the cases (the named QuantSpecs; nblab.precision.aot adds the precision
presets' roles), captures their specializations in the launcher's compile-only mode,
compiles the ones not cached over worker processes, prints a summary and every
failure, and exits 1 on any. --report writes kernels-aot.txt and kernels-roofline.txt
(default: the repository's benchmarks/results); --json the records and failures.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from . import build, capture, cases, report

TARGETS = (80, 89, 90, 100)
RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"


def _targets(text: str) -> list[int]:
    try:
        archs = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        archs = []
    if not archs or any(a < 75 for a in archs):
        raise argparse.ArgumentTypeError(
            f"--targets={text!r}: accepted: compute capabilities as integers, comma "
            f"separated, each >= 75 (e.g. 80,89,90,100)"
        )
    return archs


def run(
    all_cases: Sequence[cases.Case],
    archs: Sequence[int] = TARGETS,
    jobs: int | None = None,
    cache: Path | None = None,
    log=print,
) -> dict:
    """Capture, build, check. Returns the table, the problems and the timings."""
    start = time.perf_counter()
    specs = capture.capture(all_cases, archs)
    captured = time.perf_counter() - start
    log(f"{len(all_cases)} cases -> {len(specs)} specializations over {len(archs)} targets "
        f"(captured in {captured:.1f} s)")  # fmt: skip
    records, errors, stats = build.build(specs, jobs=jobs, cache=cache, progress=log)
    table = report.rows(specs, records, errors)
    return dict(
        specs=specs,
        table=table,
        problems=report.problems(table, archs),
        stats=dict(stats, capture_seconds=captured, total_seconds=time.perf_counter() - start),
    )


def main(
    argv: Sequence[str] | None = None,
    extra_cases: Sequence[cases.Case] = (),
    command: str = "python -m nblab_kernels.aot",
) -> int:
    parser = argparse.ArgumentParser(prog=command, description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=_targets, default=list(TARGETS))
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPUs)")
    parser.add_argument("--cache", type=Path, default=None, help=f"default {build.cache_dir()}")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--report", type=Path, nargs="?", const=RESULTS, default=None,
        help=f"write the report files to this folder (default {RESULTS})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.report is not None and not args.report.parent.is_dir():
        parser.error(f"--report {args.report}: its parent folder does not exist; pass a folder")

    import triton

    all_cases = [*cases.api_cases(), *extra_cases]
    result = run(all_cases, args.targets, jobs=args.jobs, cache=args.cache)
    table, problems, stats = result["table"], result["problems"], result["stats"]
    aot = report.aot_text(table, args.targets, len(all_cases), triton.__version__, command)
    print(
        f"{len(table)} specializations x {len(args.targets)} targets: {stats['hits']} cached, "
        f"{stats['compiled']} compiled in {stats['seconds']:.1f} s; "
        f"{len(problems)} problems (total {stats['total_seconds']:.1f} s)"
    )
    for line in problems:
        print("PROBLEM", line)
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "kernels-aot.txt").write_text(aot)
        roof = report.roofline_text(all_cases, command)
        (args.report / "kernels-roofline.txt").write_text(roof)
        print(f"wrote {args.report / 'kernels-aot.txt'} and kernels-roofline.txt")
    if args.json is not None:
        fields = ("kernel", "label", "plan", "consts", "records", "errors", "fusion_on")
        out = dict(
            targets=args.targets,
            cases=[c.label for c in all_cases],
            reached=sorted({c.label for s in result["specs"] for c in s.cases}),
            rows=[{f: getattr(r, f) for f in fields} for r in table],
            problems=problems,
            stats=stats,
            report=aot,
        )
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if problems else 0
