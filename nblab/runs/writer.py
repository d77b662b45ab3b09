"""RunWriter: what a training job uses to append events to its run.

Events are buffered in memory and written by `flush()` in one transaction, so readers
see a batch whole or not at all, and a job killed without warning loses only what it
had not flushed.
"""

import json
import numbers
import os
import sqlite3
import time
import traceback
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from nblab.runs.db import StoreFullError
from nblab.runs.schema import TERMINAL_STATUSES, check_status

if TYPE_CHECKING:
    from nblab.runs.store import RunStore


def _step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return int(step)


def _number(what: str, value: Any) -> float:
    try:
        return float(value)  # also takes numpy scalars and one-element tensors
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None


def _name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _numbers(what: str, values: Any) -> list[float | int]:
    if hasattr(values, "tolist"):  # numpy array or torch tensor (any device)
        values = values.tolist()
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ValueError(f"{what} must be a sequence of numbers, got {values!r}")
    return [
        int(v) if isinstance(v, numbers.Integral) else _number(f"{what}[{i}]", v)
        for i, v in enumerate(values)
    ]


class RunWriter:
    """Buffered writer of one run's metrics, stats and histograms (see `RunStore.writer`).

    Use as a context manager: a clean exit closes the run `succeeded`, an exception
    `failed` (with the traceback as error), KeyboardInterrupt `cancelled`. A writer
    belongs to the process that made it; do not hand it to a forked child.
    """

    def __init__(self, store: "RunStore", run_id: str, *, flush_every: float | None = 5.0):
        store.set_status(run_id, "running", pid=os.getpid())
        self.store = store
        self.run_id = run_id
        self.flush_every = flush_every
        self.closed = False
        self._metrics: list[tuple] = []
        self._stats: list[tuple] = []
        self._histograms: list[tuple] = []
        self._max_step: int | None = None
        self._last_flush = time.monotonic()

    def __repr__(self) -> str:
        return f"RunWriter({self.run_id!r}, buffered={self.buffered})"

    @property
    def buffered(self) -> int:
        """Events logged but not yet flushed."""
        return len(self._metrics) + len(self._stats) + len(self._histograms)

    def _logged(self, step: int) -> None:
        self._max_step = step if self._max_step is None else max(self._max_step, step)
        if self.flush_every is not None and time.monotonic() - self._last_flush >= self.flush_every:
            self.flush()

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"the writer of run {self.run_id} is closed")

    def log_metrics(self, step: int, values: Mapping[str, Any]) -> None:
        """Buffer scalar metrics `{key: value}` at `step` (NaN and inf are kept)."""
        self._check_open()
        step = _step(step)
        if not isinstance(values, Mapping):
            raise ValueError(f"metrics must be a mapping of key to number, got {values!r}")
        now = time.time()
        rows = [
            (step, _name("metric key", key), _number(f"metric {key!r}", v), now)
            for key, v in values.items()
        ]
        self._metrics += rows  # only after every value passed: a bad dict adds nothing
        self._logged(step)

    def log_stats(
        self, step: int, module: str, role: str, sqnr: float, saturation: float, underflow: float
    ) -> None:
        """Buffer the quantization error of tensor `role` (weight, input, grad...) in `module`.

        `sqnr` in dB; `saturation` and `underflow` as fractions of elements.
        """
        self._check_open()
        row = (
            self.run_id,
            _step(step),
            _name("module", module),
            _name("role", role),
            _number("sqnr", sqnr),
            _number("saturation", saturation),
            _number("underflow", underflow),
            time.time(),
        )
        self._stats.append(row)
        self._logged(row[1])

    def log_histogram(self, step: int, module: str, edges: Any, counts: Any) -> None:
        """Buffer a histogram of `module` at `step`: len(edges) == len(counts) + 1."""
        self._check_open()
        step = _step(step)
        edges, counts = _numbers("edges", edges), _numbers("counts", counts)
        if len(edges) != len(counts) + 1:
            raise ValueError(
                f"histogram of {module!r} at step {step}: len(edges) must be len(counts) + 1, "
                f"got {len(edges)} edges and {len(counts)} counts"
            )
        row = (self.run_id, step, _name("module", module), json.dumps(edges), json.dumps(counts))
        self._histograms.append((*row, time.time()))
        self._logged(step)

    def flush(self) -> None:
        """Write every buffered event and the heartbeat in one transaction."""
        self._check_open()
        self._flush(merge=False)

    def _flush(self, merge: bool) -> None:
        """flush(); `merge`: also merge the run's small metric chunks (at close)."""
        from nblab.runs import series  # numpy: not needed by those who only read runs

        metrics, stats, histograms = self._metrics, self._stats, self._histograms
        max_step = self._max_step

        def body(conn: sqlite3.Connection) -> None:
            series.write(conn, self.run_id, metrics)
            if merge:
                series.merge(conn, self.run_id)
            conn.executemany("INSERT INTO stats VALUES (?, ?, ?, ?, ?, ?, ?, ?)", stats)
            conn.executemany("INSERT INTO histograms VALUES (?, ?, ?, ?, ?, ?)", histograms)
            sql, params = "UPDATE runs SET heartbeat = ?", [time.time()]
            if max_step is not None:  # progress: the furthest step written so far
                sql += ", step = MAX(COALESCE(step, ?), ?)"
                params += [max_step, max_step]
            conn.execute(sql + " WHERE run_id = ?", (*params, self.run_id))

        self.store._write(body)
        # Cleared only after the commit: a failed flush keeps its events for the next.
        self._metrics, self._stats, self._histograms = [], [], []
        self._max_step = None
        self._last_flush = time.monotonic()

    def heartbeat(self) -> None:
        """Tell readers this writer is alive, without writing events (e.g. during eval)."""
        self._check_open()
        self.store._write(
            lambda conn: conn.execute(
                "UPDATE runs SET heartbeat = ? WHERE run_id = ?", (time.time(), self.run_id)
            )
        )

    def close(self, status: str = "succeeded", error: str | None = None) -> None:
        """Flush, then end the run with a terminal `status`. Closing twice does nothing."""
        if self.closed:
            return
        check_status(status, TERMINAL_STATUSES)
        self._check_open()
        try:
            self._flush(merge=True)  # its small metric chunks become one per key
        except StoreFullError:
            if status == "succeeded":
                raise  # the caller fails the run, closing again with the error
            # the events that did not fit are dropped so the end of the run is recorded:
            # a one-row update, which fits where the rolled-back write's pages were
            self._metrics, self._stats, self._histograms = [], [], []
        self.store.set_status(self.run_id, status, error=error)
        self.closed = True

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close("succeeded")
        elif isinstance(exc, KeyboardInterrupt):
            self.close("cancelled", error="interrupted (KeyboardInterrupt)")
        else:
            self.close("failed", error="".join(traceback.format_exception(exc)).strip())
