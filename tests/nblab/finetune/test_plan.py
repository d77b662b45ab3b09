"""The planner and the run's plan report what LoRA and a packed base save."""

from __future__ import annotations

import pytest

from nblab import Recipe
from nblab.cli import main as cli
from nblab.parallel.dims import ParallelDims
from nblab.parallel.planner import estimate_layout

ONE_B = Recipe.preset("gpt-tiny").with_overrides({"model.flavour": "1b"})


def _states(recipe):
    est = estimate_layout(recipe, ParallelDims(), 80e9)
    return {k: est.memory[k] for k in ("params", "grads", "optimizer")}


def test_the_planner_counts_grads_and_optimizer_state_of_the_adapters_only():
    full = _states(ONE_B)
    lora = _states(ONE_B.with_overrides({"finetune.method": "lora"}))
    packed = _states(
        ONE_B.with_overrides({"finetune.method": "lora", "finetune.base_format": "nvfp4"})
    )
    n = full["params"] / 4  # fp32 parameters (the estimates scale to the planner's count: 1%)
    # 16 blocks, r = 8: wq, wo (2048 -> 2048), wk, wv (2048 -> 1024), gate, up, down (2048 <-> 8192)
    adapters = 16 * 8 * (2 * 4096 + 2 * 3072 + 3 * 10240)
    assert lora["grads"] == pytest.approx(4 * adapters, rel=1e-2)
    assert lora["optimizer"] == pytest.approx(8 * adapters, rel=1e-2)
    assert lora["params"] == pytest.approx(4 * (n + adapters), rel=1e-2)
    # nvfp4: 4.5 bits a weight (e2m1 + a ue4m3 scale per 16) instead of fp32's 32
    blocks = 16 * (2 * 2048 * 2048 + 2 * 2048 * 1024 + 3 * 2048 * 8192)
    assert lora["params"] - packed["params"] == pytest.approx(blocks * (4 - 4.5 / 8), rel=1e-2)


def test_nblab_plan_prints_the_bytes_the_packed_base_saves(capsys):
    args = ["plan", "gpt-tiny", "--gpus", "1", "--gpu-mem", "80GB", "--set", "model.flavour=1b"]
    args += ["--set", "finetune.method=lora", "--set", "finetune.base_format=nvfp4"]
    cli(args)
    out = capsys.readouterr().out
    assert "adapter parameters train" in out and "GB saved" in out


def test_a_dry_run_names_the_adapters_and_the_packed_base(capsys):
    args = ["run", "gpt-debug", "--dry-run", "--set", "finetune.method=lora"]
    assert cli([*args, "--set", "finetune.base_format=mxfp4"]) == 0
    out = capsys.readouterr().out
    # gpt-debug, r 8: 2 blocks x (4 x (64 + 64) + 3 x (64 + 128))
    assert "lora: 17,408 adapter parameters train" in out
    # mxfp4: 4.25 bits a weight over 2 x (4 x 64 x 64 + 3 x 64 x 128) weights
    assert f"packed base: 81,920 weights in {81920 * 4.25 / 8:,.0f} bytes" in out
