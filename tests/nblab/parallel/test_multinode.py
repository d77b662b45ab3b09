"""Multi-node on one machine: two torchrun agents as two "nodes" on 127.0.0.1.

Each agent runs the command every node of a multi-node Slurm point runs
(nblab.batch.slurm.multinode_torchrun_command: --nnodes 2 --nproc-per-node 1, a c10d
rendezvous on 127.0.0.1 with a fixed id), so the two ranks meet only through the
rendezvous, as on two machines. FSDP 2 across them trains gpt-debug like one process,
and rank 0 alone records the run. About 25 s on 2 cores (two agents, gloo).
"""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nblab.batch.slurm import multinode_torchrun_command
from nblab.recipe import Recipe
from nblab.runs import RunStore
from nblab.train.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from test_runtime import _env  # noqa: E402

STEPS = 3
SETS = {"train.steps": STEPS, "eval.interval": STEPS, "eval.batches": 1}
ATOL = 1e-5  # fp32 on CPU: only the order of the sums differs between 1 and 2 ranks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(store: RunStore, run_id: str) -> dict[int, float]:
    frame = store.metrics(run_id, keys=["loss"])
    return dict(zip(frame.step.tolist(), frame.value.tolist(), strict=True))


def test_two_agents_as_two_nodes_train_fsdp_2_like_one_process(tmp_path):
    fsdp_2 = {"parallel.nproc": 2, "parallel.dp_shard": 2}
    recipe = Recipe.preset("gpt-debug").with_overrides(SETS | fsdp_2)
    store = RunStore(tmp_path / "home")
    run_id = store.create_run(recipe.name, recipe.to_toml(), steps=STEPS)
    port = free_port()
    cmd = multinode_torchrun_command(
        run_id,
        store.home,
        nnodes=2,
        nproc_per_node=1,
        head="127.0.0.1",
        port=port,
        rdzv_id="nblab-two-nodes",
    )
    agents = [
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(NBLAB_HOME=str(store.home)),
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    for agent, output in zip(agents, outputs, strict=True):
        assert agent.returncode == 0, output[-6000:]

    run = store.run(run_id)
    assert run["status"] == "succeeded" and run["step"] == STEPS
    run_dir = store.run_dir(run_id)
    log = (run_dir / "train.log").read_text()
    # one process per agent, a world of 2: the agents met through the rendezvous
    assert "parallel layout: dp_shard 2 on 2 processes" in log
    assert sorted(f.name for f in (run_dir / "pids").iterdir()) == ["rank0", "rank1"]
    # rank 0 alone recorded: one row per step and key, one run in the store
    metrics = store.metrics(run_id)
    assert not metrics.duplicated(["key", "step"]).any()
    assert (metrics.key == "val_loss").sum() == 1
    assert len(store.runs()) == 1

    single = RunStore(tmp_path / "single")
    result = train(Recipe.preset("gpt-debug").with_overrides(SETS), store=single)
    ref, got = losses(single, result.run_id), losses(store, run_id)
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    assert [got[s] for s in ref] == pytest.approx([ref[s] for s in ref], abs=ATOL, rel=0)
    assert ref[1] != ref[STEPS]  # it trained: equal curves mean something
