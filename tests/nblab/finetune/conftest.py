"""Runs shared by the fine-tuning and merging tests: a tiny GPT pretrained on 2-digit
addition, then the sweep "ft" of three fine-tunes of it (LoRA, LoRA on an nvfp4 base, full).
Built once per session in its own store; each test sees that store as $NBLAB_HOME."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from nblab import Recipe
from nblab.runs import RunStore
from nblab.train.trainer import train

BASE = Recipe.preset("gpt-debug").with_overrides(
    {
        "data.name": "addition",
        "data.digits": 2,
        "train.seq_len": 20,
        "train.batch_size": 8,
        "train.steps": 8,
        "schedule.warmup_steps": 2,
        "optimizer.lr": 3e-3,
        "eval.interval": 8,
        "eval.batches": 2,
        "metrics.stats_interval": 0,
        "metrics.histogram_interval": 0,
    }
)
MEMBERS = {
    "lora": {"finetune.method": "lora", "optimizer.lr": 1e-2},
    "lora-nvfp4": {
        "finetune.method": "lora",
        "finetune.base_format": "nvfp4",
        "optimizer.lr": 1e-2,
    },
    "full": {"finetune.method": "full", "optimizer.lr": 1e-3},
}


@dataclass
class Runs:
    store: RunStore
    base: str  # the pretrained run
    members: dict[str, str]  # point name -> run id, sweep "ft"


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Runs:
    home = tmp_path_factory.mktemp("finetune-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NBLAB_HOME", str(home))
        store = RunStore(home)
        base = train(BASE.with_overrides({"name": "pretrain"}), store=store)
        assert base.status == "succeeded"
        members = {}
        for point, overrides in MEMBERS.items():
            recipe = BASE.with_overrides(
                {**overrides, "model.init_from": base.run_id, "train.steps": 6, "name": point}
            )
            result = train(recipe, store=store, sweep="ft")
            assert result.status == "succeeded", result.error
            members[point] = result.run_id
    return Runs(store, base.run_id, members)


@pytest.fixture
def store(runs, monkeypatch) -> RunStore:
    monkeypatch.setenv("NBLAB_HOME", str(runs.store.home))
    return runs.store


@pytest.fixture
def base_recipe() -> Recipe:
    """The pretraining recipe (gpt-debug on 2-digit addition, a few steps)."""
    return BASE
