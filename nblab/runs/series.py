"""Metric series as chunks: how the run store keeps (run_id, step, key, value, time) rows.

One SQLite row per metric value (schema versions 1-5) cost 89 MiB per 1M rows on disk
(the run id in every row and in the index) and one Python tuple per value to read back:
640k values took 1.4 s to fetch. Since migration 6 a flush writes one chunk per key
instead, that key's values as three little-endian arrays in one row of
`metric_chunks` (run_id, key, first_step, last_step, n, steps int64, vals float64 with
NaN kept, times float64), and a read is a few `np.frombuffer` per chunk.

A run's small chunks (one per key per flush) are merged into one per key once MERGE_AT
of them pile up, and when its writer closes; a merged chunk stops growing at BIG
values, so no blob gets large and a live reader (since_step) decodes little.

Order: a chunk keeps its values in the order they were logged; chunks by rowid are
the order of flushes. Reading a run sorts its values by step, stably, so values of one
step come in the order their chunks were written: keys in the order they first appear
in a flush.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

BIG = 4096  # a chunk with this many values is not merged again
MERGE_AT = 64  # a run's chunks under BIG values that trigger a merge

_STEP, _FLOAT = np.dtype("<i8"), np.dtype("<f8")


class Series(NamedTuple):
    """One run's one key: numpy arrays of equal length, in step order."""

    step: np.ndarray  # int64
    value: np.ndarray  # float64
    time: np.ndarray  # float64


def _chunk_row(run_id: str, key: str, steps, values, times) -> tuple:
    steps = np.ascontiguousarray(steps, dtype=_STEP)
    values = np.ascontiguousarray(values, dtype=_FLOAT)
    times = np.ascontiguousarray(times, dtype=_FLOAT)
    return (
        run_id,
        key,
        int(steps.min()),
        int(steps.max()),
        len(steps),
        steps.tobytes(),
        values.tobytes(),
        times.tobytes(),
    )


def _decode(steps: bytes, values: bytes, times: bytes) -> Series:
    return Series(
        np.frombuffer(steps, _STEP), np.frombuffer(values, _FLOAT), np.frombuffer(times, _FLOAT)
    )


def _insert(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    conn.executemany(
        "INSERT INTO metric_chunks (run_id, key, first_step, last_step, n, steps, vals, times)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def chunks_of(run_id: str, rows: Iterable[tuple[int, str, float, float]]) -> list[tuple]:
    """Chunk rows for `metric_chunks`: one per key (in order of first appearance) of
    `rows`, each (step, key, value, time)."""
    by_key: dict[str, list[tuple]] = {}
    for row in rows:
        by_key.setdefault(row[1], []).append(row)
    out = []
    for key, group in by_key.items():
        steps, _, values, times = zip(*group, strict=True)
        out.append(_chunk_row(run_id, key, steps, values, times))
    return out


def write(
    conn: sqlite3.Connection, run_id: str, rows: Sequence[tuple[int, str, float, float]]
) -> None:
    """Append `rows` (step, key, value, time) to `run_id`'s series, inside the caller's
    transaction; merge the run's small chunks when MERGE_AT have piled up."""
    if not rows:
        return
    _insert(conn, chunks_of(run_id, rows))
    small = conn.execute(
        "SELECT COUNT(*) FROM metric_chunks WHERE run_id = ? AND n < ?", (run_id, BIG)
    ).fetchone()[0]
    if small >= MERGE_AT:
        merge(conn, run_id)


def write_arrays(conn: sqlite3.Connection, run_id: str, key: str, steps, values, times) -> None:
    """Append one key's values as arrays (one chunk; a bulk loader's path, no merge)."""
    if len(steps):
        _insert(conn, [_chunk_row(run_id, key, steps, values, times)])


def merge(conn: sqlite3.Connection, run_id: str) -> int:
    """Merge the chunks of `run_id` under BIG values into one chunk per key (keys in the
    order of their first chunk), inside the caller's transaction; return how many
    chunks were merged."""
    found = conn.execute(
        "SELECT rowid, key, steps, vals, times FROM metric_chunks"
        " WHERE run_id = ? AND n < ? ORDER BY rowid",
        (run_id, BIG),
    ).fetchall()
    if len(found) < 2:
        return 0
    by_key: dict[str, list[Series]] = {}
    for _, key, steps, values, times in found:
        by_key.setdefault(key, []).append(_decode(steps, values, times))
    conn.executemany("DELETE FROM metric_chunks WHERE rowid = ?", [(r[0],) for r in found])
    rows = []
    for key, parts in by_key.items():
        steps, values, times = (np.concatenate(column) for column in zip(*parts, strict=True))
        rows.append(_chunk_row(run_id, key, steps, values, times))
    _insert(conn, rows)
    return len(found)


def rewind(conn: sqlite3.Connection, run_id: str, step: int) -> None:
    """Forget `run_id`'s values after `step`, inside the caller's transaction. A chunk
    that straddles `step` keeps its rowid, so the order of chunks stays the same."""
    conn.execute("DELETE FROM metric_chunks WHERE run_id = ? AND first_step > ?", (run_id, step))
    straddling = conn.execute(
        "SELECT rowid, key, steps, vals, times FROM metric_chunks"
        " WHERE run_id = ? AND last_step > ?",
        (run_id, step),
    ).fetchall()
    for rowid, key, *blobs in straddling:
        s = _decode(*blobs)
        keep = s.step <= step
        row = _chunk_row(run_id, key, s.step[keep], s.value[keep], s.time[keep])
        conn.execute(
            "UPDATE metric_chunks SET first_step = ?, last_step = ?, n = ?, steps = ?,"
            " vals = ?, times = ? WHERE rowid = ?",
            (*row[2:], rowid),
        )


def _select(
    conn: sqlite3.Connection,
    run_ids: Sequence[str],
    keys: Sequence[str] | None,
    since_step: int | None,
) -> list[tuple]:
    where = [f"run_id IN ({', '.join('?' * len(run_ids))})"]
    params: list[Any] = list(run_ids)
    if keys is not None:
        where.append(f"key IN ({', '.join('?' * len(keys))})")
        params += list(keys)
    if since_step is not None:
        where.append("last_step > ?")
        params.append(int(since_step))
    sql = f"SELECT run_id, key, steps, vals, times FROM metric_chunks WHERE {' AND '.join(where)}"
    return conn.execute(sql + " ORDER BY run_id, rowid", params).fetchall()


def _after(series: Series, since_step: int | None) -> Series:
    if since_step is None:
        return series
    keep = series.step > since_step
    return series if keep.all() else Series(*(a[keep] for a in series))


def _in_step_order(series: Series) -> Series:
    if len(series.step) < 2 or (np.diff(series.step) >= 0).all():
        return series
    order = np.argsort(series.step, kind="stable")
    return Series(*(a[order] for a in series))


def read(
    conn: sqlite3.Connection,
    run_ids: Sequence[str],
    keys: Sequence[str] | None = None,
    since_step: int | None = None,
) -> dict[str, dict[str, Series]]:
    """{run_id: {key: Series}} of the runs that have values (after `since_step`,
    exclusive), each series in step order (ties in the order they were written)."""
    parts: dict[tuple[str, str], list[Series]] = {}
    for run_id, key, *blobs in _select(conn, run_ids, keys, since_step):
        part = _after(_decode(*blobs), since_step)
        if len(part.step):
            parts.setdefault((run_id, key), []).append(part)
    out: dict[str, dict[str, Series]] = {}
    for (run_id, key), chunks in parts.items():
        whole = chunks[0]
        if len(chunks) > 1:
            whole = Series(*(np.concatenate(column) for column in zip(*chunks, strict=True)))
        out.setdefault(run_id, {})[key] = _in_step_order(whole)
    return out


def read_long(
    conn: sqlite3.Connection,
    run_ids: Sequence[str],
    keys: Sequence[str] | None = None,
    since_step: int | None = None,
) -> dict[str, Any]:
    """Columns run_id, step, key, value, time of every value (run_id and key as Arrow
    strings: pandas takes them without a Python object per row): runs in run_id order,
    each run's values by step, a step's values in the order they were written."""
    import pyarrow as pa

    runs: dict[str, int] = {}  # the strings rows point into; a run's code is its rank
    names: dict[str, int] = {}
    chunk_run, chunk_key, columns = [], [], []
    for run_id, key, *blobs in _select(conn, sorted(set(run_ids)), keys, since_step):
        part = _after(_decode(*blobs), since_step)
        if len(part.step):
            chunk_run.append(runs.setdefault(run_id, len(runs)))
            chunk_key.append(names.setdefault(key, len(names)))
            columns.append(part)
    lengths = np.array([len(part.step) for part in columns], dtype=np.int64)
    if columns:
        step, value, time = (np.concatenate(column) for column in zip(*columns, strict=True))
    else:
        step, value, time = np.empty(0, _STEP), np.empty(0, _FLOAT), np.empty(0, _FLOAT)
    run_code = np.repeat(np.array(chunk_run, dtype=np.int64), lengths)
    key_code = np.repeat(np.array(chunk_key, dtype=np.int64), lengths)
    # chunks came ordered by run_id, rowid: a stable sort by (run, step) keeps a step's
    # values in the order they were written
    order = np.lexsort((step, run_code))
    return {
        "run_id": pa.array(list(runs), pa.large_string()).take(pa.array(run_code[order])),
        "step": step[order],
        "key": pa.array(list(names), pa.large_string()).take(pa.array(key_code[order])),
        "value": value[order],
        "time": time[order],
    }


def convert_legacy_metrics(conn: sqlite3.Connection) -> None:
    """Migration 6's data step: the one-row-per-value `metrics` table of versions 1-5
    becomes chunks (one per run and key, in the order the rows were written), then is
    dropped."""
    runs = [r[0] for r in conn.execute("SELECT DISTINCT run_id FROM metrics").fetchall()]
    for run_id in runs:
        rows = conn.execute(
            "SELECT step, key, value, time FROM metrics WHERE run_id = ? ORDER BY step, rowid",
            (run_id,),
        ).fetchall()
        # NULL was how a NaN was stored
        rows = [(s, k, np.nan if v is None else v, t) for s, k, v, t in rows]
        _insert(conn, chunks_of(run_id, rows))
    conn.execute("DROP INDEX metrics_run_step")
    conn.execute("DROP TABLE metrics")
