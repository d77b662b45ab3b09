"""Schema versioning: old databases are migrated on open and keep their data."""

import sqlite3

import pytest

from nblab.runs import SCHEMA_VERSION, RunStore
from nblab.runs.schema import MIGRATIONS, migrate


def user_version(path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def test_a_fresh_store_is_at_the_latest_version(tmp_path):
    rs = RunStore(tmp_path)
    assert user_version(rs.db_path) == SCHEMA_VERSION == len(MIGRATIONS)


def test_opening_a_version_1_database_migrates_it_and_keeps_its_data(tmp_path):
    path = tmp_path / "nblab.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=1) == 0
    conn.execute(
        "INSERT INTO runs (run_id, name, recipe, status, created) "
        "VALUES ('20250101-000000-0001', 'old', 'x = 1', 'queued', 1.0)"
    )
    conn.execute("INSERT INTO metrics VALUES ('20250101-000000-0001', 3, 'loss', 0.5, 2.0)")
    conn.close()
    assert user_version(path) == 1

    rs = RunStore(tmp_path)
    assert user_version(path) == SCHEMA_VERSION
    run = rs.run("20250101-000000-0001")
    assert (run["name"], run["recipe"], run["step"], run["steps"]) == ("old", "x = 1", None, None)
    assert rs.metrics("20250101-000000-0001").values.tolist() == [
        ["20250101-000000-0001", 3, "loss", 0.5, 2.0]
    ]
    # The columns added by later migrations work on the old run.
    with rs.writer("20250101-000000-0001") as w:
        w.log_metrics(4, {"loss": 0.25})
    assert rs.run("20250101-000000-0001")["step"] == 4


def test_reopening_a_current_database_changes_nothing(tmp_path):
    run_id = RunStore(tmp_path).create_run("a", "x = 1")
    with sqlite3.connect(tmp_path / "nblab.db", isolation_level=None) as conn:
        assert migrate(conn) == SCHEMA_VERSION
    assert RunStore(tmp_path).run(run_id)["name"] == "a"


def test_a_database_from_a_newer_nblab_is_refused_by_version(tmp_path):
    RunStore(tmp_path)
    with sqlite3.connect(tmp_path / "nblab.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match=rf"version 99 is newer .* \(up to {SCHEMA_VERSION}\)"):
        RunStore(tmp_path)
