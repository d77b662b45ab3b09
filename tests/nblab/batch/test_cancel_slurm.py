"""`nblab cancel` of a run submitted to Slurm goes through scancel, not local signals."""

import os

import pytest

from nblab.batch import slurm
from nblab.batch.sweeps import cancel
from nblab.runs import RunStore


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("NBLAB_HOME", str(tmp_path))
    return RunStore()


def test_cancel_of_a_slurm_run_calls_scancel_and_ends_cancelled(store, monkeypatch):
    calls = []
    monkeypatch.setattr(slurm, "_run", lambda cmd, timeout=60: calls.append(cmd) or "")
    monkeypatch.setattr(slurm, "_in_queue", lambda job_id: False)
    run_id = store.create_run("p", 'name = "p"\n', sweep="s")
    store.set_status(run_id, "running", pid=os.getpid())  # its job, alive
    slurm.write_slurm_info(store.run_dir(run_id), job_id="4242_1", state="RUNNING")
    assert cancel(run_id, store=store, wait=0) == {run_id: "cancelled"}
    assert calls == [["scancel", "4242_1"]]
    assert "scancel 4242_1" in store.run(run_id)["error"]


def test_a_local_run_has_no_slurm_job(store):
    run_id = store.create_run("p", 'name = "p"\n')
    assert slurm.scancel_run(store, run_id) is False


def test_slurm_job_and_state_reach_the_runs_table(store):
    run_id = store.create_run("p", 'name = "p"\n')
    slurm.record_slurm_job(store, run_id, job_id="77_0", state="PENDING")
    slurm.record_slurm_job(store, run_id, state="RUNNING")
    row = store.runs().set_index("run_id").loc[run_id]
    assert (row.scheduler_job, row.scheduler_state) == ("slurm:77_0", "RUNNING")
    info = slurm.read_slurm_info(store.run_dir(run_id))
    assert [state for _, state in info["history"]] == ["PENDING", "RUNNING"]
