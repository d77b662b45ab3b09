"""The Slurm launcher against a real one-node cluster (scripts/slurm-up.sh), plus the
pure parts (resources, flags, the multi-node command) without one.

Timings on 2 cores: a job spends about 10 s starting (interpreter, papermill, kernel,
torch) before gpt-tiny trains at about 3 steps/s on its one CPU.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_for

from nblab.batch.slurm import (
    Resources,
    SlurmError,
    SlurmLauncher,
    multinode_torchrun_command,
    parse_extra,
    read_slurm_info,
    resources_for,
    slurm_states,
    split_launcher_settings,
)
from nblab.recipe import Recipe
from nblab.runs import RunStore

sys.path.insert(0, str(Path(__file__).parent))
from time_limit_job import STEPS  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def tiny(steps: int, *overrides: str) -> Recipe:
    base = ["train.device=cpu", "eval.interval=0", "metrics.log_interval=1"]
    return Recipe.preset("gpt-tiny").with_overrides([f"train.steps={steps}", *base, *overrides])


def queue(store: RunStore, recipe: Recipe, name: str = "job") -> str:
    return store.create_run(name, recipe.to_toml(), "slurm-tests", steps=recipe.train.steps)


# ---------------------------------------------------------------------------
# On the cluster
# ---------------------------------------------------------------------------


def test_slurm_cli_sweep_two_points_succeed(slurm_cluster, tmp_path):
    """`nblab sweep` of a TOML with launcher = "slurm": one array, two jobs, both runs
    succeed; each run records its own Slurm job id, which sacct reports COMPLETED."""
    sweep_toml = tmp_path / "two.toml"
    sweep_toml.write_text(
        """name = "slurm-two"
base = "gpt-tiny"
launcher = "slurm"

[set]
"train.steps" = 8
"train.device" = "cpu"
"eval.interval" = 0

[grid]
"optimizer.lr" = [1e-3, 3e-3]

[slurm]
time_min = 5
"""
    )
    home = tmp_path / "home"
    env = dict(os.environ, NBLAB_HOME=str(home))
    done = subprocess.run(
        [sys.executable, "-m", "nblab", "sweep", str(sweep_toml)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    store = RunStore(home)
    runs = store.runs(sweep="slurm-two")
    assert list(runs.status) == ["succeeded", "succeeded"]
    assert list(runs.step) == [8, 8]
    infos = [read_slurm_info(store.run_dir(r)) for r in runs.run_id]
    job_ids = [info["job_id"] for info in infos]
    array = {j.split("_")[0] for j in job_ids}
    assert len(array) == 1 and sorted(j.split("_")[1] for j in job_ids) == ["0", "1"], job_ids
    assert slurm_states(job_ids) == dict.fromkeys(job_ids, "COMPLETED")
    for info in infos:
        assert [state for _, state in info["history"]][-2:] == ["RUNNING", "COMPLETED"]


def test_slurm_cancel_running_job(slurm_cluster, tmp_path):
    """cancel() of a running job: scancel, the run ends `cancelled` mid-training and
    Slurm accounts the job CANCELLED."""
    store = RunStore(tmp_path)
    run_id = queue(store, tiny(3000))
    launcher = SlurmLauncher(store=store, time_min=5)
    launcher.submit([run_id])
    wait_for(lambda: (store.run(run_id)["step"] or 0) >= 2, 90, "training to start")
    launcher.cancel(run_id)
    run = store.run(run_id)
    assert run["status"] == "cancelled", run
    assert 2 <= run["step"] < 3000
    job_id = launcher.job_id(run_id)
    assert slurm_states([job_id]) == {job_id: "CANCELLED"}
    assert read_slurm_info(store.run_dir(run_id))["state"] == "CANCELLED"
    assert launcher.wait(timeout=5)


def test_slurm_time_limit_requeues_and_resumes_from_checkpoint(time_limit_job):
    """A 1-minute limit on a run that needs longer: Slurm signals the job, it stops at a
    checkpoint, submitit requeues it, and the next attempt resumes there. The loss curve
    has every step exactly once: nothing lost, nothing repeated. The job (100 steps of
    at least 0.5 s, time_limit_job.py) ran while the suite did: conftest.py started it."""
    code, output = time_limit_job.result
    assert code == 0, f"time_limit_job.py exited {code} (None: still running):\n{output}"
    store = RunStore(time_limit_job.home)
    (run_id,) = store.runs().run_id
    run = store.run(run_id)
    assert run["status"] == "succeeded", run
    info = read_slurm_info(store.run_dir(run_id))
    assert info["requeues"] >= 1, info
    assert "REQUEUED" in [state for _, state in info["history"]]
    assert info["state"] == "COMPLETED"
    loss = store.metrics(run_id, "loss")
    assert list(loss.step) == list(range(1, STEPS + 1))
    log = (store.run_dir(run_id) / "train.log").read_text()
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", log)]
    # every attempt resumes where the last one checkpointed, never before it; a signal
    # that lands after the final checkpoint (while the notebook's last cells run)
    # resumes at STEPS, which only reruns those cells
    assert len(resumed) == info["requeues"], (resumed, info)
    assert resumed == sorted(resumed) and all(0 < s <= STEPS for s in resumed), resumed


def test_slurm_sbatch_rejection_names_the_option(slurm_cluster, tmp_path):
    """sbatch's own message comes back, with the flag that caused it; the run is failed."""
    store = RunStore(tmp_path)
    run_id = queue(store, tiny(2))
    launcher = SlurmLauncher(store=store, partition="no-such-partition", time_min=2)
    with pytest.raises(SlurmError) as err:
        launcher.submit([run_id])
    message = str(err.value)
    assert "invalid partition" in message.lower(), message
    assert "--partition=no-such-partition" in message
    assert store.run(run_id)["status"] == "failed"


# ---------------------------------------------------------------------------
# Without a cluster
# ---------------------------------------------------------------------------


def test_slurm_sbatch_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match="sbatch was not found on PATH"):
        SlurmLauncher(store=RunStore(tmp_path / "home"))


def test_slurm_cli_without_sbatch_exits_2_naming_sbatch(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path), NBLAB_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "-m", "nblab", "sweep", "gpt-debug", "--grid", "optimizer.lr=1e-3"]
        + ["--launcher", "slurm"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "sbatch was not found on PATH" in done.stderr


@pytest.mark.parametrize(
    ("overrides", "defaults", "gpus_available", "gpus"),
    [
        (["train.device=cpu", "parallel.nproc=2", "parallel.dp_shard=2"], {}, True, 0),
        (["parallel.nproc=4", "parallel.dp_shard=4"], {}, True, 4),
        (["parallel.nproc=4", "parallel.dp_shard=4"], {}, False, 0),
        (["parallel.nproc=8", "parallel.dp_shard=8"], {"nodes": 2}, True, 4),
        (["train.device=cuda"], {}, False, 1),
        (["parallel.nproc=4", "parallel.dp_shard=4"], {"gpus_per_node": 2}, True, 2),
    ],
)
def test_slurm_gpus_per_node_from_the_layout(overrides, defaults, gpus_available, gpus):
    recipe = Recipe.preset("gpt-tiny").with_overrides(overrides)
    base = Resources(**({"gpus_per_node": None} | defaults))
    assert resources_for(recipe, base, gpus_available=gpus_available).gpus_per_node == gpus


def test_slurm_nproc_must_split_over_nodes():
    recipe = Recipe.preset("gpt-tiny").with_overrides(
        ["parallel.nproc=3", "parallel.dp_shard=3", "train.batch_size=12"]
    )
    with pytest.raises(ValueError, match="parallel.nproc=3 does not split over nodes=2"):
        resources_for(recipe, Resources(nodes=2, gpus_per_node=None), gpus_available=True)


def test_slurm_sbatch_flags_and_executor_parameters():
    res = Resources(
        nodes=2,
        gpus_per_node=8,
        cpus_per_task=16,
        mem_gb=1.5,
        time_min=120,
        partition="gpu",
        account="proj",
        extra=parse_extra(["--qos=high", "--exclusive"]),
    )
    assert res.sbatch_flags() == (
        "--nodes=2 --time=120 --gpus-per-node=8 --cpus-per-task=16 --partition=gpu "
        "--account=proj --mem=1536M --exclusive --qos=high"
    )
    params = res.executor_parameters(signal_delay_s=90)
    assert params["additional_parameters"] == {"exclusive": True, "qos": "high"}
    assert (params["nodes"], params["ntasks_per_node"], params["gpus_per_node"]) == (2, 1, 8)
    assert parse_extra({"mail-type": "END"}) == (("mail_type", "END"),)
    with pytest.raises(ValueError, match="a long sbatch option"):
        parse_extra(["qos=high"])


def test_slurm_multinode_command_uses_c10d_rendezvous_on_the_head_node():
    cmd = multinode_torchrun_command(
        "r1", "/shared/nblab", nnodes=2, nproc_per_node=8, head="node01", port=29417,
        rdzv_id="417", resume=True,
    )  # fmt: skip
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert "--nnodes=2" in cmd and "--nproc-per-node=8" in cmd
    assert "--rdzv-backend=c10d" in cmd and "--rdzv-endpoint=node01:29417" in cmd
    assert "--standalone" not in cmd
    tail = ["nblab.launch", "--run-id", "r1", "--home", "/shared/nblab", "--resume"]
    assert cmd[-6:] == tail


def test_slurm_sweep_toml_launcher_settings():
    data = {"name": "s", "launcher": "slurm", "slurm": {"partition": "gpu", "time_min": 30}}
    assert split_launcher_settings(data) == ("slurm", {"partition": "gpu", "time_min": 30})
    assert data == {"name": "s"}  # what is left is the sweep's own
    with pytest.raises(ValueError, match=r"\[slurm\] partiton: unknown; accepted: partition"):
        split_launcher_settings({"slurm": {"partiton": "gpu"}})
    with pytest.raises(ValueError, match="launcher = 'k8s'"):
        split_launcher_settings({"launcher": "k8s"})
