"""Live progress of batch runs, read from the run store: one bar per run on a terminal,
plain lines elsewhere (CI logs, files).

    handle = run_sweep(sweep, jobs=2, wait=False)
    frame = watch(handle)                      # blocks until every run has ended
    watch(["r1a2b", "r3c4d"], store)           # any runs, by id

Every `interval` seconds `watch` reads the runs' rows (`RunStore.runs()`: status,
step, steps) and shows them. A run's `step` is what its writer flushed last (every
few seconds), so a bar moves in those steps, not every optimizer step.

- Terminal: one tqdm bar per run, at a fixed position in launch order, described by
  the run's name (the sweep point), total = its steps, status in the postfix. A bar's
  clock starts when its run starts. When a run ends its bar is drawn one last time
  (final step and status) and stops; the bars are closed together, top to bottom,
  once the last run has ended, since tqdm garbles the screen when a bar at a fixed
  position closes while bars above it still draw.
- Not a terminal: one line when a run starts or ends, and one line per running run
  every `line_every` seconds if its step moved; no carriage returns.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

import pandas as pd

from nblab.runs import TERMINAL_STATUSES

LINE_EVERY_S = 30.0  # plain lines: progress of a running run at most this often


@dataclass
class _Run:
    """What the watcher last showed of one run."""

    run_id: str
    name: str
    status: str = "unknown"
    step: int = 0
    steps: int | None = None
    error: str | None = None
    started: float | None = None  # time.monotonic() when the watcher saw it start
    shown_step: int = -1  # last step printed as a plain line
    bar: Any = field(default=None, repr=False)


def _target(runs, store) -> tuple[list[str], Any, str | None]:
    """(run ids, store, sweep name or None) of a SweepHandle or a list of run ids."""
    if hasattr(runs, "run_ids"):  # a SweepHandle
        return list(runs.run_ids), store or runs.store, getattr(runs, "sweep", None)
    if isinstance(runs, str):
        runs = [runs]
    if store is None:
        from nblab.runs import RunStore

        store = RunStore()
    return list(runs), store, None


def _read(store, run_ids: list[str], sweep: str | None) -> pd.DataFrame:
    """The rows of `run_ids`, in that order, indexed by run_id."""
    frame = store.runs(sweep=sweep) if sweep is not None else store.runs()
    frame = frame[frame.run_id.isin(run_ids)].drop_duplicates("run_id")
    return frame.set_index("run_id").reindex(run_ids)


def _int(value) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def watch(
    runs: Any,
    store=None,
    *,
    interval: float = 1.0,
    stream: IO[str] | None = None,
    tty: bool | None = None,
    line_every: float = LINE_EVERY_S,
) -> pd.DataFrame:
    """Show the progress of `runs` (a SweepHandle, or run ids of `store`) until each
    has ended; return their rows (RunStore.runs() columns, launch order).

    interval: seconds between reads of the store. stream: where to draw (default
    sys.stderr). tty: bars (True) or plain lines (False); default: stream.isatty().
    line_every: seconds between plain progress lines of one run. A run missing from
    the store counts as ended (status "unknown"). KeyboardInterrupt closes the bars
    and propagates (the caller decides whether to cancel).
    """
    run_ids, store, sweep = _target(runs, store)
    stream = sys.stderr if stream is None else stream
    if tty is None:
        tty = bool(getattr(stream, "isatty", lambda: False)())
    view = _Bars(stream) if tty else _Lines(stream, line_every)
    shown: dict[str, _Run] = {}
    try:
        while True:
            frame = _read(store, run_ids, sweep)
            if not shown:  # the first read: every run gets its bar, names of one width
                names = [r if pd.isna(n) else str(n) for r, n in frame["name"].items()]
                width = max((len(n) for n in names), default=0)
                for (run_id, row), name in zip(frame.iterrows(), names, strict=True):
                    shown[run_id] = _Run(run_id, name, steps=_int(row["steps"]))
                    view.add(shown[run_id], width)
            for run_id, row in frame.iterrows():
                view.update(shown[run_id], row)
            if all(r.status not in ("queued", "running") for r in shown.values()):
                break
            time.sleep(interval)
    finally:
        view.close()
    return frame.reset_index()


class _View:
    def __init__(self, stream: IO[str]):
        self.stream = stream

    def add(self, run: _Run, width: int) -> None:
        pass

    def update(self, run: _Run, row: pd.Series) -> None:
        status = "unknown" if pd.isna(row["status"]) else str(row["status"])
        step, steps = _int(row["step"]) or 0, _int(row["steps"])
        error = None if pd.isna(row["error"]) else str(row["error"])
        changed = status != run.status
        if changed and status == "running":
            run.started = time.monotonic()
        run.status, run.step, run.steps, run.error = status, step, steps, error
        self.show(run, changed)

    def show(self, run: _Run, status_changed: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Bars(_View):
    """One tqdm bar per run, at a fixed position (see the module doc)."""

    def __init__(self, stream: IO[str]):
        super().__init__(stream)
        self.bars: list = []

    def add(self, run: _Run, width: int) -> None:
        from tqdm import tqdm

        run.bar = tqdm(
            desc=run.name.ljust(width),  # names of one width: the bars line up
            total=run.steps,
            position=len(self.bars),
            leave=True,
            unit="step",
            file=self.stream,
            dynamic_ncols=True,
        )
        self.bars.append(run.bar)

    def show(self, run: _Run, status_changed: bool) -> None:
        bar = run.bar
        if getattr(bar, "_nblab_done", False):
            return
        if run.status == "queued" or (status_changed and run.status == "running"):
            bar.reset(total=run.steps)  # the clock starts with the run
        if run.steps is not None and bar.total != run.steps:
            bar.total = run.steps
        postfix = run.status if run.error is None else f"{run.status}: {run.error[:60]}"
        bar.set_postfix_str(postfix, refresh=False)
        bar.n = run.step  # no update(): the rate shown is the run's average, steps/elapsed
        bar.refresh()
        if run.status in TERMINAL_STATUSES or run.status == "unknown":
            ended = bar._time()
            bar._time = lambda: ended  # its elapsed time and rate stop with the run
            bar._nblab_done = True  # drawn for the last time; closed with the others

    def close(self) -> None:
        for bar in self.bars:  # top to bottom: each leaves its final line in place
            bar.close()


class _Lines(_View):
    """Plain lines: starts, ends, and progress at most every `every` seconds per run."""

    def __init__(self, stream: IO[str], every: float):
        super().__init__(stream)
        self.every = every
        self.last: dict[str, float] = {}
        self.start = time.monotonic()

    def _print(self, run: _Run, text: str) -> None:
        print(f"[{time.monotonic() - self.start:5.0f}s] {run.name}: {text}", file=self.stream)
        self.stream.flush()

    def show(self, run: _Run, status_changed: bool) -> None:
        steps = "?" if run.steps is None else run.steps
        now = time.monotonic()
        if status_changed and run.status in TERMINAL_STATUSES:
            took = "" if run.started is None else f" in {now - run.started:.0f}s"
            error = "" if run.error is None else f": {run.error}"
            self._print(run, f"{run.status} at step {run.step}/{steps}{took}{error}")
        elif status_changed and run.status != "queued":
            self._print(run, run.status)
            self.last[run.run_id] = now
        elif run.status == "running" and run.step != run.shown_step:
            if now - self.last.get(run.run_id, 0.0) >= self.every:
                self._print(run, f"step {run.step}/{steps}")
                self.last[run.run_id] = now
            else:
                return
        else:
            return
        run.shown_step = run.step
