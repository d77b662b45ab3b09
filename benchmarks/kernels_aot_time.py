"""Cold and warm time of the AOT compile of every kernel specialization, in one run.

    PYTHONPATH=.:kernels python benchmarks/kernels_aot_time.py [--out PATH] [--jobs N]

Runs `python -m nblab.precision.aot` twice against one fresh cache folder: cold (every
specialization compiled, over N worker processes) then warm (every record from the
cache: only the enumeration and the compile-only capture run). Prints and writes the
wall time and the CPU time of each (the process and its workers and ptxas), and the
load average, since the machine is shared: CPU seconds / cores is what an idle
machine of the same kind would take at best.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cache: Path, jobs: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "kernels")])
    cmd = [sys.executable, "-m", "nblab.precision.aot", "--cache", str(cache)]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    cpu0, wall0 = _cpu(), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    summary = [line for line in done.stdout.splitlines() if "specializations" in line]
    return dict(wall=wall, cpu=cpu, code=done.returncode, summary=summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    out = ROOT / "benchmarks" / "results" / "kernels-aot-time.txt"
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument(
        "--cache", type=Path, default=None,
        help="an existing cache folder (the first run is then warm too); default: a fresh one",
    )  # fmt: skip
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="nblab-aot-bench-") as tmp:
        cache = args.cache or Path(tmp)
        cold = timed(cache, args.jobs)
        warm = timed(cache, args.jobs)
    load_after = os.getloadavg()
    cores = os.cpu_count()
    lines = [
        "AOT compile of every kernel specialization (python -m nblab.precision.aot), "
        "twice against one cache folder: "
        + ("a fresh one (cold, then warm)" if args.cache is None else f"{args.cache} (given)"),
        f"machine: {platform.machine()} CPU, {cores} cores (shared), no GPU, "
        f"{platform.platform()}, python {platform.python_version()}",
        f"workers: {args.jobs or cores}; load average (1/5/15 min): before "
        + " ".join(f"{v:.2f}" for v in load_before)
        + ", after "
        + " ".join(f"{v:.2f}" for v in load_after),
        "",
        f"{'run':6} {'wall s':>8} {'CPU s':>8} {'CPU s / cores':>14}  exit",
    ]
    for name, r in (("cold", cold), ("warm", warm)):
        lines.append(
            f"{name:6} {r['wall']:8.1f} {r['cpu']:8.1f} {r['cpu'] / cores:14.1f}  {r['code']}"
        )
    lines += ["", "cold: " + " | ".join(cold["summary"]), "warm: " + " | ".join(warm["summary"])]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0 if cold["code"] == warm["code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
