"""The run store's SQLite schema and its migrations.

The schema version is SQLite's `PRAGMA user_version`: version N means the first N
entries of `MIGRATIONS` (each a tuple of SQL statements) have been applied. To change
the schema, append a migration; never edit one that has shipped, since databases in
the field already ran it.
"""

import sqlite3
from collections.abc import Callable

STATUSES = ("queued", "running", "succeeded", "failed", "diverged", "cancelled")
TERMINAL_STATUSES = ("succeeded", "failed", "diverged", "cancelled")

_STATUS_CHECK = ", ".join(f"'{s}'" for s in STATUSES)

# Times are Unix seconds (REAL, UTC). A metric value may be NULL: SQLite stores a
# float NaN as NULL, and NaN is exactly what a diverging run logs.
# A migration is a tuple of SQL statements; a step that moves data SQL cannot (numbers into
# blobs) is a function of the connection, run in the same transaction.
Step = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    # 1: runs and the three event tables.
    (
        f"""CREATE TABLE runs (
            run_id    TEXT PRIMARY KEY,
            name      TEXT NOT NULL,
            sweep     TEXT,
            recipe    TEXT NOT NULL,
            status    TEXT NOT NULL CHECK (status IN ({_STATUS_CHECK})),
            pid       INTEGER,
            host      TEXT,
            created   REAL NOT NULL,
            started   REAL,
            ended     REAL,
            heartbeat REAL,
            error     TEXT
        )""",
        "CREATE INDEX runs_sweep ON runs (sweep)",
        """CREATE TABLE metrics (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            step   INTEGER NOT NULL,
            key    TEXT NOT NULL,
            value  REAL,
            time   REAL NOT NULL
        )""",
        "CREATE INDEX metrics_run_step ON metrics (run_id, step)",
        """CREATE TABLE stats (
            run_id     TEXT NOT NULL REFERENCES runs (run_id),
            step       INTEGER NOT NULL,
            module     TEXT NOT NULL,
            role       TEXT NOT NULL,
            sqnr       REAL,
            saturation REAL,
            underflow  REAL,
            time       REAL NOT NULL
        )""",
        "CREATE INDEX stats_run_step ON stats (run_id, step)",
        """CREATE TABLE histograms (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            step   INTEGER NOT NULL,
            module TEXT NOT NULL,
            edges  TEXT NOT NULL,  -- JSON list of len(counts) + 1 floats
            counts TEXT NOT NULL,  -- JSON list of numbers
            time   REAL NOT NULL
        )""",
        "CREATE INDEX histograms_run_step ON histograms (run_id, step)",
    ),
    # 2: progress, so a runs table shows "step 1200 / 5000" without scanning metrics.
    (
        "ALTER TABLE runs ADD COLUMN step INTEGER",
        "ALTER TABLE runs ADD COLUMN steps INTEGER",
    ),
    # 3: the cluster scheduler's job of a run ("slurm:1234_0") and its state (RUNNING...)
    (
        "ALTER TABLE runs ADD COLUMN scheduler_job TEXT",
        "ALTER TABLE runs ADD COLUMN scheduler_state TEXT",
    ),
)

# What a run is: a training run (the default), an evaluation of a run's checkpoint, a
# merge of several runs. `sources` is JSON: [{"run_id": ..., "step": ...}, ...], the runs
# (and their checkpoints) an eval or merge run was made from; NULL for training runs.
RUN_KINDS = ("train", "eval", "merge")
_KIND_CHECK = ", ".join(f"'{k}'" for k in RUN_KINDS)
MIGRATIONS += (
    # 4: run kinds and their sources
    (
        f"ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'train' "
        f"CHECK (kind IN ({_KIND_CHECK}))",
        "ALTER TABLE runs ADD COLUMN sources TEXT",
    ),
    # 5: the model's parameter count (the trainer sets it once the model is built), for
    # run lists that say what was trained without reading the recipe
    ("ALTER TABLE runs ADD COLUMN params INTEGER",),
    # 6: metrics as chunks of numpy arrays (nblab.runs.series): fewer bytes, read
    # back without a Python object per value; the rows of `metrics` move there
    (
        """CREATE TABLE metric_chunks (
            run_id     TEXT NOT NULL REFERENCES runs (run_id),
            key        TEXT NOT NULL,
            first_step INTEGER NOT NULL,  -- min and max step of the chunk, for since_step
            last_step  INTEGER NOT NULL,
            n          INTEGER NOT NULL,
            steps      BLOB NOT NULL,     -- n int64, little-endian
            vals       BLOB NOT NULL,     -- n float64 (NaN kept)
            times      BLOB NOT NULL      -- n float64, Unix seconds
        )""",
        "CREATE INDEX metric_chunks_run_key ON metric_chunks (run_id, key, last_step)",
        lambda conn: _series().convert_legacy_metrics(conn),
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def _series():
    # imported when needed: numpy costs `nblab runs` more than the rest of its work
    from nblab.runs import series

    return series


def check_status(status: str, allowed: tuple[str, ...] = STATUSES) -> str:
    """Return `status` if it is one of `allowed`, else raise a ValueError naming both."""
    if status not in allowed:
        raise ValueError(f"status {status!r} is not one of {', '.join(allowed)}")
    return status


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the database at `conn` up to version `target`; return the version found.

    `conn` must be in autocommit mode (isolation_level=None). Each migration runs in
    its own IMMEDIATE transaction that also bumps user_version, so a crash leaves the
    database at a whole version, and two processes opening a fresh database at once
    cannot both apply the same migration: the second re-reads the version under the
    write lock and finds nothing to do.
    """
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {found} is newer than this nblab understands "
            f"(up to {SCHEMA_VERSION}); upgrade nblab"
        )
    for version in range(found, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] == version:
                # Statement by statement: executescript() would COMMIT our transaction.
                for step in MIGRATIONS[version]:
                    if isinstance(step, str):
                        conn.execute(step)
                    else:
                        step(conn)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found
