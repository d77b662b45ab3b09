"""Every scale figure of issue 17 section 4, measured on this machine, each against its
target.

    .venv/bin/python benchmarks/store_gen.py --home /tmp/nblab-1k
    .venv/bin/python benchmarks/store_gen.py --home /tmp/nblab-200 --runs 200 \
        --rows 4000000 --sweep-size 200 --quant-stats
    .venv/bin/python benchmarks/scale.py --home /tmp/nblab-1k --sweep-home /tmp/nblab-200 \
        [--sidebar ui-tests/test-results/sidebar-scale.json] [--repeat 5]

1. The 1,000-run / 20M-row store (--home): `nblab runs` and `nblab show RUN` (a run in the
   middle) as the user runs them, a fresh `python -m nblab.cli` process each time: wall
   seconds and the CPU seconds the process used (`python -c pass` and `python -c "import
   numpy"` timed beside them say how much of a second the scheduler gave); the API's
   runs list in this process (list_runs + JSON: the server's work per request) and over
   HTTP against a real `jupyter server` with nblab's extension (GET runs, and the
   sidebar's one request for every sparkline, GET series); the database file per 1M
   metric rows.
2. RunMonitor, 32 runs x 20k points (nblab.widgets.bench): first refresh and live refresh.
3. A 200-point sweep (gpt-tiny, 5 presets x 40 seeds): expand, validate and queue (its
   200 runs created in a fresh store; no job started); and its report (nblab report:
   report.ipynb executed by papermill, then HTML) over the 200-run sweep of --sweep-home
   (20k metric rows per run, and the stats and weight histograms of gpt-tiny's defaults).
4. The sidebar with 200 runs: galata's measurement (ui-tests/tests/sidebar-scale.spec.ts
   writes the JSON given to --sidebar); that spec also checks the one events stream.

Prints one line per measurement, then the table: figure, target, measured, met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of one process run to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def summary(label: str, tries: list[tuple[float, float]], unit: str = "s") -> str:
    walls, cpus = [t[0] for t in tries], [t[1] for t in tries]
    scale = 1e3 if unit == "ms" else 1.0
    text = (
        f"{label:<44} wall {statistics.median(walls) * scale:8.3f} {unit} median"
        f" ({max(walls) * scale:.3f} max)"
    )
    if cpus[0] is not None:
        text += f", CPU {statistics.median(cpus) * scale:.3f} {unit}"
    return text


def metric_rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "metric_chunks" in tables:
            return int(conn.execute("SELECT SUM(n) FROM metric_chunks").fetchone()[0])
        return int(conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, b""
    except urllib.error.URLError:  # not listening yet
        return 0, b""


def api_timings(
    home: Path, env: dict[str, str], repeat: int
) -> dict[str, tuple[str, float | None]]:
    """Start a jupyter server with nblab over `home`, time its routes, stop it."""
    port, token = free_port(), "bench-token"
    root = tempfile.mkdtemp(prefix="nblab-bench-root-")
    cmd = [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}"]
    cmd += [f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}"]
    cmd += ["--ServerApp.jpserver_extensions={'nblab.server': True}"]
    cmd += [f"--NblabApp.home={home}", "--ServerApp.allow_root=True"]
    log = open(Path(root) / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/nblab/api"
    out: dict[str, tuple[str, float | None]] = {}
    try:
        deadline = time.monotonic() + 300  # a loaded machine starts a server slowly
        while get(f"{base}/info?token={token}")[0] != 200:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the jupyter server did not start; see {log.name}")
            time.sleep(0.5)
        routes = {
            "API runs list (GET runs)": f"{base}/runs?token={token}",
            "API every sparkline (GET series, loss, 100 pts)": (
                f"{base}/series?keys=loss&max_points=100&token={token}"
            ),
        }
        for label, url in routes.items():
            code, body = get(url)
            if code != 200:
                out[label] = (f"{label:<44} not in this version (HTTP {code})", None)
                continue
            tries = []
            for _ in range(repeat):
                start = time.perf_counter()
                code, body = get(url)
                tries.append((time.perf_counter() - start, None))
            size = len(body) / 1024
            text = summary(label, tries, "ms") + f", {size:,.0f} KiB reply"
            out[label] = (text, statistics.median(t[0] for t in tries) * 1e3)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    return out


def api_in_process(home: Path, repeat: int) -> tuple[str, float]:
    """The runs list the API sends (nblab.server.api.list_runs, then JSON), called in this
    process: its CPU time is the server's work per request, whatever the load."""
    import json

    from nblab.runs import RunStore
    from nblab.server import api

    store, root = RunStore(home), Path(tempfile.gettempdir())
    tries = []
    for _ in range(repeat + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        json.dumps(api.list_runs(store, root, None, None), allow_nan=False)
        tries.append((time.perf_counter() - wall, time.process_time() - cpu))
    line = summary("API runs list, in process (list_runs + JSON)", tries[1:], "ms")
    return line, statistics.median(t[0] for t in tries[1:]) * 1e3


TARGETS: list[tuple[str, str, float | None]] = []  # (figure, target text, limit) in order
FOUND: dict[str, float] = {}


def figure(name: str, target: str, limit: float | None, value: float | None) -> None:
    TARGETS.append((name, target, limit))
    if value is not None:
        FOUND[name] = value


def store_figures(home: Path, repeat: int) -> None:
    env = dict(os.environ, NBLAB_HOME=str(home))
    py = sys.executable
    with sqlite3.connect(f"file:{home / 'nblab.db'}?mode=ro", uri=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT run_id FROM runs ORDER BY created, run_id")]
    middle = ids[len(ids) // 2]
    rows = metric_rows(home / "nblab.db")
    print(f"store {home}: {len(ids)} runs, {rows:,} metric rows")
    commands = {
        "python -c pass (baseline)": [py, "-c", "pass"],
        'python -c "import numpy" (baseline)': [py, "-c", "import numpy"],
        "nblab runs": [py, "-m", "nblab.cli", "runs"],
        "nblab show": [py, "-m", "nblab.cli", "show", middle],
    }
    walls = {}
    for label, cmd in commands.items():
        timed(cmd, env)  # warm the page cache
        tries = [timed(cmd, env) for _ in range(repeat)]
        walls[label] = statistics.median(t[0] for t in tries)
        print(summary(label, tries), flush=True)
    label = f"store of {len(ids):,} runs, {rows / 1e6:.0f}M metric rows:"
    figure(f"{label} `nblab runs` (s, wall)", "under 1 s", 1.0, walls["nblab runs"])
    figure(f"{label} `nblab show` of one run (s, wall)", "under 1 s", 1.0, walls["nblab show"])
    line, in_process = api_in_process(home, max(repeat, 10))
    print(line, flush=True)
    http = api_timings(home, env, max(repeat, 10))
    for text in http.values():
        print(text[0], flush=True)
    figure("same store: the API's runs list, in process (ms)", "under 200 ms", 200, in_process)
    figure(
        "same store: GET nblab/api/runs over HTTP (ms)",
        "under 200 ms",
        200,
        http.get("API runs list (GET runs)", (None, None))[1],
    )
    db = home / "nblab.db"
    size = sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())
    per = size / rows * 1e6 / 2**20
    print(f"database {size / 2**20:,.1f} MiB for {rows:,} metric rows: {per:.1f} MiB per 1M")
    figure("database file per 1M metric rows (MiB)", "report it", None, per)


def monitor_figures() -> None:
    """Twice in this process: the first time RunMonitor also imports bokeh's models and
    plotting (once per kernel: any panel or holoviews view imports them too), the
    second time its first refresh is only its own work: read every row, build the
    figure."""
    from nblab.widgets.bench import monitor_refresh_benchmark

    cold = monitor_refresh_benchmark(32, 20_000)
    got = monitor_refresh_benchmark(32, 20_000)
    print(
        f"RunMonitor 32 runs x 20k points: first {got['first_ms']:.1f} ms "
        f"({cold['first_ms']:.1f} ms the first time in a process, importing bokeh's "
        f"models), live {got['live_ms']:.1f} ms median ({got['live_max_ms']:.1f} max)",
        flush=True,
    )
    figure(
        "RunMonitor first refresh, 32 runs x 20k points (ms)",
        "under 300 ms",
        300,
        got["first_ms"],
    )
    figure(
        "the same, first RunMonitor of a kernel (imports bokeh.models) (ms)",
        "under 300 ms",
        300,
        cold["first_ms"],
    )
    figure("RunMonitor live refresh, same (ms, median)", "under 100 ms", 100, got["live_ms"])


class NoJobs:
    """A launcher that starts nothing: the sweep's runs are queued and stay queued."""

    def __init__(self, store):
        self.store, self.submitted = store, []

    def submit(self, run_ids) -> None:
        self.submitted += list(run_ids)


SWEEP_200 = {
    "name": "scale-200",
    "base": "gpt-tiny",
    "set": {"train.steps": 120, "train.device": "cpu", "eval.interval": 40},
    "grid": {
        "precision.preset": ["bf16", "mxfp8", "nvfp4", "mxfp4", "fp8_tensorwise"],
        "train.seed": list(range(40)),
    },
}


def sweep_figures(sweep_home: Path | None, repeat: int) -> None:
    from nblab.batch.sweeps import run_sweep
    from nblab.runs import RunStore
    from nblab.sweep import Sweep

    tries = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as home:
            store = RunStore(home)
            start = time.perf_counter()
            sweep = Sweep.from_dict(SWEEP_200)
            launcher = NoJobs(store)
            handle = run_sweep(sweep, launcher=launcher, wait=False, store=store)
            tries.append((time.perf_counter() - start, None))
            queued = store.rows(sweep="scale-200", status=["queued"])
            assert len(handle.run_ids) == len(launcher.submitted) == len(queued) == 200
            store.close()
    print(summary("200-point sweep: expand, validate, queue", tries), flush=True)
    figure(
        "a 200-point sweep: expands, validates and queues (s)",
        "under 5 s",
        5.0,
        statistics.median(t[0] for t in tries),
    )
    if sweep_home is None:
        figure("a 200-point sweep: its report builds (s)", "under 60 s", 60.0, None)
        return
    from nblab.report import build_report

    store = RunStore(sweep_home)
    sizes = store.rows()
    name = sizes[0]["sweep"]
    n = sum(1 for r in sizes if r["sweep"] == name)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        build_report(name, store=store, out_dir=out)
        seconds = time.perf_counter() - start
        html = (Path(out) / "report.html").stat().st_size
    print(f"report of sweep {name} ({n} runs): {seconds:.1f} s, HTML {html / 2**20:.1f} MiB")
    figure(f"a {n}-point sweep: its report builds (s)", "under 60 s", 60.0, seconds)


def sidebar_figures(path: Path | None) -> None:
    name = "sidebar with 200 runs, galata: refresh (ms, median)"
    if path is None or not path.exists():
        figure(name, "under 200 ms", 200, None)
        return
    got = json.loads(path.read_text())
    print(f"sidebar ({path}): {got}")
    figure(name.replace("200", str(got["runs"]), 1), "under 200 ms", 200, got["refresh_median_ms"])


def table() -> str:
    lines = ["| figure | target | measured | met |", "|---|---|---|---|"]
    for name, target, limit in TARGETS:
        value = FOUND.get(name)
        if value is None:
            lines.append(f"| {name} | {target} | not measured | |")
            continue
        met = "" if limit is None else ("yes" if value < limit else f"no ({value / limit:.1f}x)")
        lines.append(f"| {name} | {target} | {value:,.3g} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a store from store_gen.py")
    parser.add_argument("--sweep-home", type=Path, help="a store whose one sweep has 200 runs")
    parser.add_argument("--sidebar", type=Path, help="galata's sidebar-scale.json")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    import nblab

    print(f"nblab from {Path(nblab.__file__).parent}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"1-min load at start: {os.getloadavg()[0]:.1f}", flush=True)
    store_figures(args.home, args.repeat)
    monitor_figures()
    sweep_figures(args.sweep_home, args.repeat)
    sidebar_figures(args.sidebar)
    print(f"1-min load at end: {os.getloadavg()[0]:.1f}")
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
