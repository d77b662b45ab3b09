"""RunStore: create runs, change their status, and read everything back as DataFrames.

Times are Unix seconds (float, UTC) everywhere: in the database, in DataFrames and in
`run()` dicts, so they compare and serialise (JSON) without conversion. For display:
`pd.to_datetime(df.created, unit="s", utc=True)`.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import secrets
import sqlite3
import threading
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nblab.runs import db
from nblab.runs.liveness import HOST, death_of
from nblab.runs.schema import RUN_KINDS, TERMINAL_STATUSES, check_status
from nblab.runs.writer import RunWriter

if TYPE_CHECKING:
    import pandas as pd

    from nblab.runs.series import Series


def _dataframe(rows: list, columns: Iterable[str], dtypes: dict) -> pd.DataFrame:
    # pandas is imported here, not at the top: a training job (a bare GPU machine
    # included) writes to the store without it
    import pandas as pd

    return pd.DataFrame(rows, columns=list(columns)).astype(dtypes)


RUN_COLUMNS = (
    "run_id",
    "name",
    "sweep",
    "status",
    "step",
    "steps",
    "pid",
    "host",
    "created",
    "started",
    "ended",
    "heartbeat",
    "error",
    "scheduler_job",
    "scheduler_state",
    "kind",
    "sources",
    "params",
)
_RUN_DTYPES = {"step": "Int64", "steps": "Int64", "pid": "Int64", "params": "Int64"} | {
    t: "float64" for t in ("created", "started", "ended", "heartbeat")
}
_SAFE_RUN_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]*")
_INHERITED: list[sqlite3.Connection] = []  # see RunStore._conn


def _plain(value: Any) -> Any:
    # sqlite3 would bind a numpy integer as a blob, which equals no INTEGER step.
    return int(value) if isinstance(value, numbers.Integral) else value


def _new_run_id(now: float) -> str:
    # UTC time first so ids sort by creation; 4 hex digits to tell apart the runs of
    # one second (a collision is retried, so they need not be unique on their own).
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(2)


class RunStore:
    """The run store at `home` (default `$NBLAB_HOME`, else `~/.nblab`).

    Safe to use from many processes and threads at once: each (process, thread) gets
    its own SQLite connection, opened on first use, so a store survives fork and
    pickles (for multiprocessing) as just its arguments.

    `stale_after`: seconds without a heartbeat after which a `running` run whose
    writer cannot be checked directly (another host) is declared `failed`.
    """

    def __init__(self, home: str | os.PathLike | None = None, stale_after: float = 120.0):
        home = home or os.environ.get("NBLAB_HOME") or Path.home() / ".nblab"
        self.home = Path(home).expanduser()
        self.stale_after = float(stale_after)
        self.db_path = self.home / "nblab.db"
        (self.home / "runs").mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn()  # open now, so a bad home or a too-new schema fails here

    def __reduce__(self):
        return (type(self), (self.home, self.stale_after))

    def __repr__(self) -> str:
        return f"RunStore({str(self.home)!r})"

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            if hasattr(local, "conn"):
                # Inherited across fork: it belongs to the parent, and SQLite forbids
                # using it in the child, even closing it (which garbage collection
                # would do), so it is kept referenced and never touched again.
                _INHERITED.append(local.conn)
            local.conn = db.connect(self.db_path)
            local.pid = os.getpid()
        return local.conn

    def _write(self, body):
        return db.write(self._conn(), body)

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        return db.retry(lambda: self._conn().execute(sql, tuple(params)).fetchall())

    def close(self) -> None:
        """Close this thread's connection (another is opened if the store is used again)."""
        if getattr(self._local, "pid", None) == os.getpid():
            self._local.conn.close()
            del self._local.pid, self._local.conn

    def run_dir(self, run_id: str) -> Path:
        """The folder of run `run_id`: recipe.toml, log, checkpoints, output notebooks."""
        if not isinstance(run_id, str) or not _SAFE_RUN_ID.fullmatch(run_id):
            raise ValueError(f"run_id {run_id!r} is not a run id (letters, digits, '-', '_')")
        return self.home / "runs" / run_id

    # -- writes ---------------------------------------------------------------------

    def create_run(
        self,
        name: str,
        recipe: str,
        sweep: str | None = None,
        *,
        steps: int | None = None,
        kind: str = "train",
        sources: list[dict[str, Any]] | None = None,
    ) -> str:
        """Register a `queued` run; write its recipe to `run_dir(run_id)/recipe.toml`.

        `recipe` is the recipe as TOML text; `steps`, if known, the total for progress.
        `kind`: train, eval or merge; `sources`: what an eval or merge run was made from,
        [{"run_id": ..., "step": ...}, ...] (each run must exist).
        """
        if kind not in RUN_KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(RUN_KINDS)}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if sweep is not None and (not isinstance(sweep, str) or not sweep):
            raise ValueError(f"sweep must be None or a non-empty string, got {sweep!r}")
        if steps is not None and (not isinstance(steps, int) or steps < 0):
            raise ValueError(f"steps must be None or a non-negative integer, got {steps!r}")
        if not isinstance(recipe, str):
            raise TypeError(f"recipe must be TOML text (str), got {type(recipe).__name__}")
        try:
            tomllib.loads(recipe)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"recipe is not valid TOML: {error}") from None
        sources_json = None
        if sources is not None:
            for source in sources:
                if not isinstance(source, dict) or "run_id" not in source:
                    raise ValueError(f"a source must be a dict with a run_id, got {source!r}")
                self.run(source["run_id"])  # KeyError names an unknown run
            sources_json = json.dumps([dict(s) for s in sources])

        for _ in range(100):
            now = time.time()
            run_id = _new_run_id(now)
            try:
                self._write(
                    lambda conn, run_id=run_id, now=now: conn.execute(
                        "INSERT INTO runs (run_id, name, sweep, recipe, status, steps, created,"
                        " kind, sources) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                        (run_id, name, sweep, recipe, steps, now, kind, sources_json),
                    )
                )
                break
            except sqlite3.IntegrityError:
                continue  # same second, same suffix: draw another
        else:
            raise RuntimeError("could not draw an unused run_id in 100 tries")
        run_dir = self.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.toml").write_text(recipe)
        return run_id

    def rewind(self, run_id: str, step: int) -> None:
        """Forget the events logged after `step`: a run resuming from its checkpoint at
        `step` logs those steps again, and each step must appear once."""

        from nblab.runs import series

        def body(conn: sqlite3.Connection) -> None:
            series.rewind(conn, run_id, step)
            for table in ("stats", "histograms"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ? AND step > ?", (run_id, step))

        self._write(body)

    def set_params(self, run_id: str, params: int) -> None:
        """Record the parameter count of the model `run_id` trains."""
        if isinstance(params, bool) or not isinstance(params, numbers.Integral) or params < 0:
            raise ValueError(f"params must be a non-negative integer, got {params!r}")
        self._write(
            lambda conn: conn.execute(
                "UPDATE runs SET params = ? WHERE run_id = ?", (int(params), run_id)
            )
        )

    def set_scheduler_job(self, run_id: str, job: str | None, state: str | None) -> None:
        """Record the cluster scheduler's job of `run_id` (e.g. "slurm:1234_0") and its
        latest state, so `nblab runs`, the widgets and the sidebar can show them."""

        def body(conn: sqlite3.Connection) -> int:
            sql = "UPDATE runs SET scheduler_job = ?, scheduler_state = ? WHERE run_id = ?"
            return conn.execute(sql, (job, state, run_id)).rowcount

        if self._write(body) == 0:
            raise KeyError(f"unknown run_id {run_id!r}")

    def set_status(
        self, run_id: str, status: str, *, error: str | None = None, pid: int | None = None
    ) -> None:
        """Set the status of `run_id` (and its error text, which any new status replaces).

        `running` records `pid` with this host and starts the heartbeat clock; a
        terminal status (succeeded, failed, diverged, cancelled) records the end time.
        """
        check_status(status)
        now = time.time()
        sets = {"status": status, "error": error}
        if status == "running":
            sets |= {"heartbeat": now, "ended": None}
            if pid is not None:
                sets |= {"pid": pid, "host": HOST}
        elif status in TERMINAL_STATUSES:
            sets["ended"] = now
        assignments = ", ".join(f"{column} = ?" for column in sets)
        if status == "running":
            assignments += ", started = COALESCE(started, ?)"
            sets["started"] = now

        def body(conn: sqlite3.Connection) -> int:
            sql = f"UPDATE runs SET {assignments} WHERE run_id = ?"
            return conn.execute(sql, (*sets.values(), run_id)).rowcount

        if self._write(body) == 0:
            raise KeyError(f"unknown run_id {run_id!r}")

    def writer(self, run_id: str, *, flush_every: float | None = 5.0) -> RunWriter:
        """A buffered event writer for `run_id`; marks the run `running` by this process.

        Events are written when `flush()` is called, and also automatically at the first
        `log_*` call `flush_every` seconds after the last flush (None: only by hand).
        """
        return RunWriter(self, run_id, flush_every=flush_every)

    # -- liveness -------------------------------------------------------------------

    def _reap(self, run_ids: list[str] | None = None) -> None:
        """Turn `running` runs whose writer is dead into `failed`, in the database."""
        sql = "SELECT run_id, pid, host, COALESCE(heartbeat, started, created) FROM runs"
        sql += " WHERE status = 'running'"
        params: list[Any] = []
        if run_ids is not None:
            sql += f" AND run_id IN ({', '.join('?' * len(run_ids))})"
            params = run_ids
        now = time.time()
        for run_id, pid, host, heartbeat in self._read(sql, params):
            error = death_of(pid, host, heartbeat, now, self.stale_after)
            if error is None:
                continue
            # Only if nothing moved since we looked: a writer that heartbeats or closes
            # in the meantime is alive (or finished) and keeps its own word.
            self._write(
                lambda conn, run_id=run_id, error=error, heartbeat=heartbeat: conn.execute(
                    "UPDATE runs SET status = 'failed', error = ?, ended = ?"
                    " WHERE run_id = ? AND status = 'running'"
                    " AND COALESCE(heartbeat, started, created) = ?",
                    (error, now, run_id, heartbeat),
                )
            )

    # -- reads ----------------------------------------------------------------------

    def runs(
        self, sweep: str | None = None, status: str | Iterable[str] | None = None
    ) -> pd.DataFrame:
        """One row per run (oldest first), optionally of one sweep and/or some statuses.

        Columns: run_id, name, sweep, status, step, steps, pid, host, created, started,
        ended, heartbeat, error, scheduler_job, scheduler_state, kind, sources (JSON
        text), params (the model's parameter count, once training built it). The recipe
        text is left out; `run()` has it.
        """
        rows = self._run_rows(sweep, status)
        return _dataframe(rows, RUN_COLUMNS, _RUN_DTYPES)

    def rows(
        self, sweep: str | None = None, status: str | Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """What `runs()` returns, as one dict of plain values (None for a missing one) per
        run: for callers that must not pay for pandas (the command line, the server)."""
        return [dict(zip(RUN_COLUMNS, row, strict=True)) for row in self._run_rows(sweep, status)]

    def _run_rows(self, sweep: str | None, status: str | Iterable[str] | None) -> list[tuple]:
        where, params = [], []
        if sweep is not None:
            where.append("sweep = ?")
            params.append(sweep)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for s in statuses:
                check_status(s)
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += statuses
        self._reap()
        sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._read(sql + " ORDER BY created, run_id", params)

    def run(self, run_id: str) -> dict[str, Any]:
        """Everything about `run_id` (the `runs()` columns plus `recipe`) as plain values."""
        self._reap([run_id])
        columns = (*RUN_COLUMNS, "recipe")
        rows = self._read(f"SELECT {', '.join(columns)} FROM runs WHERE run_id = ?", [run_id])
        if not rows:
            raise KeyError(f"unknown run_id {run_id!r}")
        return dict(zip(columns, rows[0], strict=True))

    def _known(self, run_ids: str | Iterable[str]) -> list[str]:
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        found = {
            row[0]
            for row in self._read(
                f"SELECT run_id FROM runs WHERE run_id IN ({', '.join('?' * len(ids))})", ids
            )
        }
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"unknown run_id(s): {', '.join(map(repr, missing))}")
        return ids

    def _events(
        self,
        table: str,
        columns: tuple[str, ...],
        run_ids: str | Iterable[str],
        filters: dict[str, Any],
        since_step: int | None,
    ) -> list[tuple]:
        ids = self._known(run_ids)
        where = [f"run_id IN ({', '.join('?' * len(ids))})"]
        params: list[Any] = list(ids)
        for column, value in filters.items():
            if value is not None:
                one = isinstance(value, str) or not isinstance(value, Iterable)
                values = [value] if one else list(value)
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                params += [_plain(v) for v in values]
        if since_step is not None:
            where.append("step > ?")
            params.append(_plain(since_step))
        sql = f"SELECT {', '.join(columns)} FROM {table} WHERE {' AND '.join(where)}"
        return self._read(sql + " ORDER BY run_id, step, rowid", params)

    def _series_args(self, run_ids, keys, since_step) -> tuple[list[str], list | None, int | None]:
        ids = self._known(run_ids)
        if keys is not None:
            keys = [keys] if isinstance(keys, str) else list(keys)
        return ids, keys, (None if since_step is None else _plain(since_step))

    def metrics(
        self,
        run_ids: str | Iterable[str],
        keys: str | Iterable[str] | None = None,
        since_step: int | None = None,
    ) -> pd.DataFrame:
        """Metrics in long format: run_id, step, key, value, time, ordered by run_id and
        step (a step's keys in the order they were logged).

        `since_step` keeps steps strictly after it, so a poller passes the last step it
        has. A NaN value (a diverged loss) reads back as NaN.
        """
        import pandas as pd

        from nblab.runs import series

        args = self._series_args(run_ids, keys, since_step)
        columns = db.retry(lambda: series.read_long(self._conn(), *args))
        for name in ("run_id", "key"):
            columns[name] = pd.array(columns[name], dtype="str")
        return pd.DataFrame(columns)

    def series(
        self,
        run_ids: str | Iterable[str],
        keys: str | Iterable[str] | None = None,
        since_step: int | None = None,
    ) -> dict[str, dict[str, Series]]:
        """Metrics as arrays, the fast read: {run_id: {key: Series(step, value, time)}},
        each in step order; runs and keys without values (after `since_step`) are left
        out. What `metrics()` returns, without building a long DataFrame."""
        from nblab.runs import series  # numpy: imported where metrics are read

        args = self._series_args(run_ids, keys, since_step)
        return db.retry(lambda: series.read(self._conn(), *args))

    def recipes(self, run_ids: Iterable[str]) -> dict[str, str]:
        """{run_id: recipe TOML} of `run_ids`, in one query (KeyError names unknown ones)."""
        ids = self._known(run_ids)
        marks = ", ".join("?" * len(ids))
        return dict(self._read(f"SELECT run_id, recipe FROM runs WHERE run_id IN ({marks})", ids))

    def stats(
        self,
        run_ids: str | Iterable[str],
        module: str | Iterable[str] | None = None,
        role: str | Iterable[str] | None = None,
        since_step: int | None = None,
    ) -> pd.DataFrame:
        """Quantization stats: run_id, step, module, role, sqnr, saturation, underflow, time."""
        columns = ("run_id", "step", "module", "role", "sqnr", "saturation", "underflow", "time")
        filters = {"module": module, "role": role}
        rows = self._events("stats", columns, run_ids, filters, since_step)
        dtypes = {c: "float64" for c in ("sqnr", "saturation", "underflow", "time")}
        return _dataframe(rows, columns, dtypes | {"step": "int64"})

    def histogram_modules(self, run_ids: str | Iterable[str]) -> list[str]:
        """The modules that have histograms in `run_ids`, sorted, without reading the
        histograms themselves (a 200-run sweep holds about 150k of them)."""
        ids = self._known(run_ids)
        sql = (
            f"SELECT DISTINCT module FROM histograms WHERE run_id IN ({', '.join('?' * len(ids))})"
        )
        return sorted(row[0] for row in self._read(sql, ids))

    def histograms(
        self,
        run_ids: str | Iterable[str],
        module: str | Iterable[str] | None = None,
        step: int | Iterable[int] | None = None,
    ) -> pd.DataFrame:
        """Histograms: run_id, step, module, edges (list), counts (list), time."""
        columns = ("run_id", "step", "module", "edges", "counts", "time")
        filters = {"module": module, "step": step}
        rows = [
            (run_id, s, m, json.loads(edges), json.loads(counts), t)
            for run_id, s, m, edges, counts, t in self._events(
                "histograms", columns, run_ids, filters, None
            )
        ]
        dtypes = {"step": "int64", "time": "float64"}
        return _dataframe(rows, columns, dtypes)
