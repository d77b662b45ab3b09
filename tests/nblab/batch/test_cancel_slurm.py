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


def _fake_slurm(monkeypatch, sacct: str = "JobID|State\n"):
    """Slurm commands recorded, not run: scancel answers nothing, sacct `sacct`."""
    calls = []

    def run(cmd, timeout=60):
        calls.append(cmd)
        return sacct if cmd[0] == "sacct" else ""

    monkeypatch.setattr(slurm, "_run", run)
    monkeypatch.setattr(slurm, "_in_queue", lambda job_id: False)
    return calls


def test_cancel_of_a_slurm_run_calls_scancel_and_ends_cancelled(store, monkeypatch):
    calls = _fake_slurm(monkeypatch, sacct="JobID|State\n4242_1|CANCELLED by 0\n")
    run_id = store.create_run("p", 'name = "p"\n', sweep="s")
    store.set_status(run_id, "running", pid=os.getpid())  # its job, alive
    slurm.write_slurm_info(store.run_dir(run_id), job_id="4242_1", state="RUNNING")
    assert cancel(run_id, store=store, wait=0) == {run_id: "cancelled"}
    assert calls[0] == ["scancel", "4242_1"] and calls[1][0] == "sacct"
    assert "scancel 4242_1" in store.run(run_id)["error"]
    assert slurm.read_slurm_info(store.run_dir(run_id))["state"] == "CANCELLED"
    assert store.run(run_id)["scheduler_state"] == "CANCELLED"


def test_cancel_of_a_sweep_scancels_its_slurm_jobs_at_once_and_signals_the_rest(store, monkeypatch):
    calls = _fake_slurm(monkeypatch)  # no accounting: sacct knows nothing
    ids = [store.create_run(f"p{i}", f'name = "p{i}"\n', sweep="s") for i in range(4)]
    for i, run_id in enumerate(ids[:3]):  # queued (PENDING), running, succeeded
        slurm.write_slurm_info(store.run_dir(run_id), job_id=f"77_{i}", state="PENDING")
    store.set_status(ids[1], "running", pid=os.getpid())
    store.set_status(ids[2], "succeeded")
    # ids[3]: a local run, queued: cancelled without Slurm
    result = cancel("s", store=store, wait=0)
    assert result == {ids[0]: "cancelled", ids[1]: "cancelled", ids[3]: "cancelled"}
    assert calls[0] == ["scancel", "77_0", "77_1"]  # one call; the ended run left alone
    assert store.run(ids[2])["status"] == "succeeded"
    assert store.run(ids[3])["error"] == "cancelled before it started"
    # the jobs left the queue after the scancel: slurm.json says so
    assert slurm.read_slurm_info(store.run_dir(ids[0]))["state"] == "CANCELLED"


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
