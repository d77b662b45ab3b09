"""`nblab cancel SWEEP|RUN` knows Slurm jobs: a sweep started with `--no-wait` (no
launcher process left to ask) and a job still pending are cancelled through scancel,
on the real one-node cluster of scripts/slurm-up.sh."""

import os
import subprocess
import sys
import time

from nblab.batch.slurm import read_slurm_info, slurm_states
from nblab.runs import RunStore


def nblab(env, *args, timeout=120):
    done = subprocess.run(
        [sys.executable, "-m", "nblab", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def sweep_file(path, name: str, steps: int, extra: str = "") -> str:
    path.write_text(
        f"""name = "{name}"
base = "gpt-tiny"
launcher = "slurm"

[set]
"train.steps" = {steps}
"train.device" = "cpu"
"eval.interval" = 0
"metrics.log_interval" = 1

[grid]
"precision.preset" = ["bf16"]

[slurm]
time_min = 5
{extra}
"""
    )
    return str(path)


def test_nblab_cancel_scancels_a_no_wait_sweep_and_a_pending_run(slurm_cluster, tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, NBLAB_HOME=str(home))
    store = RunStore(home)
    nblab(env, "sweep", sweep_file(tmp_path / "a.toml", "cancel-me", 3000), "--no-wait")
    held = 'extra = { begin = "now+3600" }  # pending for an hour'
    nblab(env, "sweep", sweep_file(tmp_path / "b.toml", "held", 5, held), "--no-wait")
    (running,) = store.runs(sweep="cancel-me").run_id
    (pending,) = store.runs(sweep="held").run_id

    deadline = time.monotonic() + 120
    while (store.run(running)["step"] or 0) < 2:  # the job started and trains
        assert time.monotonic() < deadline, store.run(running)
        time.sleep(0.5)
    assert store.run(pending)["status"] == "queued"

    out = nblab(env, "cancel", "cancel-me")  # a sweep, by name, from a new process
    assert f"{running} cancelled" in out
    run = store.run(running)
    assert run["status"] == "cancelled" and 2 <= run["step"] < 3000, run
    assert run["error"].startswith("cancelled")  # the job's own record of Slurm's SIGTERM
    out = nblab(env, "cancel", pending)  # one run, by id, while Slurm holds it
    assert f"{pending} cancelled" in out
    assert store.run(pending)["status"] == "cancelled"

    jobs = {r: read_slurm_info(store.run_dir(r)) for r in (running, pending)}
    ids = [info["job_id"] for info in jobs.values()]
    assert slurm_states(ids) == dict.fromkeys(ids, "CANCELLED")
    assert [info["state"] for info in jobs.values()] == ["CANCELLED", "CANCELLED"]
    assert nblab(env, "cancel", "cancel-me").strip().endswith("every run has ended)")
