"""The parallel runtime on CPU with gloo, 2 processes: each layout against one process.

One torchrun job (dist_worker.py) runs FSDP 2, DDP 2, TP 2 and PP 2 (GPipe and 1F1B, bf16
and mxfp4) through the real Trainer and the QuantLinear TP check; the tests here compare
what it saved with single-process runs of the same recipe, seed and global batch. A
4-rank job runs PP 2 x dp_shard 2 and PP 2 x dp_replicate 2. Two more jobs run
`nblab run --nproc 2` end to end and a run whose rank 1 raises.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nblab.launch import check_layout, launch
from nblab.parallel import LayoutError
from nblab.recipe import Recipe
from nblab.runs import RunStore
from nblab.runs.liveness import pid_alive
from nblab.train.trainer import Trainer, build_data, train

sys.path.insert(0, str(Path(__file__).parent))
from dist_worker import (  # noqa: E402
    LAYOUTS,
    PP_DP_LAYOUTS,
    PP_LAYOUTS,
    fixed_batch,
    full_grads,
    full_params,
    pp_recipe,
    recipe_for,
)

WORKER = Path(__file__).parent / "dist_worker.py"
# fp32 on CPU: only the order of the sums differs between 1 and 2 ranks
ATOL = 1e-5


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def dataset():
    return build_data(recipe_for(None))


@pytest.fixture(scope="module")
def single(dataset, tmp_path_factory):
    """1-process runs of each layout's recipe (2 steps, then a checkpoint, then step 3)."""
    out = tmp_path_factory.mktemp("single")
    results = {}
    for layout, (_, preset) in LAYOUTS.items():
        trainer = Trainer(recipe_for(None, preset), dataset=dataset, run_dir=out / layout)
        with torch.no_grad():
            logits, _ = trainer.model(fixed_batch(dataset.vocab_size))
        losses = [trainer.train_step(), trainer.train_step()]
        grads, params = full_grads(trainer.model), full_params(trainer.model)
        trainer.save_checkpoint()
        losses.append(trainer.train_step())
        results[layout] = {"losses": losses, "grads": grads, "params": params, "logits": logits}
        results[layout]["val_loss"] = trainer.evaluate()["val_loss"]
    return out, results


@pytest.fixture(scope="module")
def single_pp(dataset, tmp_path_factory):
    """1-process references of the pipeline layouts: grad_accum 2, one run per preset (the
    schedule changes nothing in one process); bf16's checkpoint at step 2 is in
    results["bf16"]["run_dir"] (the torchrun jobs resume it under pp)."""
    out = tmp_path_factory.mktemp("single_pp")
    results = {}
    for preset in sorted({preset for _, preset in PP_LAYOUTS.values()}):
        run_dir = out / preset if preset == "bf16" else None
        trainer = Trainer(pp_recipe(None, preset), dataset=dataset, run_dir=run_dir)
        losses = [trainer.train_step(), trainer.train_step()]
        grads, params = full_grads(trainer.model), full_params(trainer.model)
        trainer.save_checkpoint()  # step 2 (nothing without a run_dir)
        losses.append(trainer.train_step())
        val_loss = trainer.evaluate()["val_loss"]
        results[preset] = {"losses": losses, "grads": grads, "params": params, "val": val_loss}
        results[preset]["run_dir"] = run_dir
    return results


@pytest.fixture(scope="module")
def parallel(single, single_pp, tmp_path_factory):
    """What the 2-rank torchrun job measured (it also resumes `single`'s fsdp checkpoint
    under FSDP 2 and `single_pp`'s bf16 checkpoint under PP 2)."""
    out = tmp_path_factory.mktemp("parallel")
    single_dir, _ = single
    (out / "run_single").symlink_to(single_dir / "fsdp")
    (out / "run_single_pp").symlink_to(single_pp["bf16"]["run_dir"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    start = time.perf_counter()
    proc = subprocess.run(
        [*cmd, str(WORKER), str(out)], capture_output=True, text=True, timeout=300, env=_env()
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    print(f"torchrun job: {time.perf_counter() - start:.1f} s")
    return out


@pytest.fixture(scope="module")
def parallel_4(single_pp, tmp_path_factory):
    """The 4-rank torchrun job: pp 2 x dp_shard 2 and pp 2 x dp_replicate 2
    (dist_worker.py OUT pp_fsdp); it also
    resumes `single_pp`'s bf16 checkpoint."""
    out = tmp_path_factory.mktemp("parallel_4")
    (out / "run_single_pp").symlink_to(single_pp["bf16"]["run_dir"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4"]
    start = time.perf_counter()
    proc = subprocess.run(
        [*cmd, str(WORKER), str(out), "pp_fsdp"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    print(f"torchrun job (4 ranks): {time.perf_counter() - start:.1f} s")
    return out


def _load(out: Path, name: str) -> dict:
    return torch.load(out / f"{name}.pt", weights_only=False)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("layout", ["fsdp", "ddp", "tp"])
def test_two_rank_grads_and_steps_equal_one_rank(parallel, single, layout):
    """Same seed, same global batch: the gradients of step 2 (clipped by the full norm),
    the weights after it and the losses of steps 1-3 equal the single process's within
    fp32 summation-order error. FSDP reduces with SUM and divides the loss by dp itself."""
    got, ref = _load(parallel, layout), single[1][layout]
    assert _max_diff(got["grads"], ref["grads"]) < ATOL
    assert _max_diff(got["params"], ref["params"]) < ATOL
    assert got["losses"] == pytest.approx(ref["losses"], abs=1e-5)
    # the gradient is not trivially zero, so equality means something
    assert max(float(g.abs().max()) for g in ref["grads"].values()) > 1e-3


def test_tp_forward_equals_one_rank_forward(parallel, single):
    got, ref = _load(parallel, "tp"), single[1]["tp"]
    assert got["logits"].shape == ref["logits"].shape
    assert torch.allclose(got["logits"], ref["logits"], atol=ATOL, rtol=0)
    assert got["world_params"] == sum(p.numel() for p in ref["params"].values())


def test_quant_linear_under_tp_quantizes_local_shards(parallel):
    """mxfp8 blocks of 32 never straddle the 2 x 32 shards: the TP result is the shard by
    shard math, which equals quantizing the whole tensors. A per-tensor fp8 scale shows
    that the shards really are quantized on their own: TP equals the shard by shard math
    and differs from quantizing the whole tensors with one scale."""
    mx = _load(parallel, "quant_mxfp8")
    assert torch.allclose(mx["y"], mx["per_shard"], atol=1e-6, rtol=0)
    assert torch.allclose(mx["y"], mx["whole"], atol=1e-6, rtol=0)
    assert mx["grad_w0_shape"] == (64, 64)
    tw = _load(parallel, "quant_tensorwise")
    assert torch.allclose(tw["y"], tw["per_shard"], atol=1e-6, rtol=0)
    assert float((tw["y"] - tw["whole"]).abs().max()) > 1e-4


def test_checkpoint_reshards_between_two_ranks_and_one(parallel, single, dataset):
    """Saved under FSDP 2 at step 2, resumed by one process and by TP 2; and the single
    process's checkpoint resumed under FSDP 2. Step 3's loss is the uninterrupted run's
    (the weights came back), and so is the val loss after step 3's update (so did the
    optimizer state: with a fresh Adam that update differs)."""
    fsdp = _load(parallel, "fsdp")
    trainer = Trainer(recipe_for(None), dataset=dataset, run_dir=parallel / "run_fsdp")
    assert trainer.resume() and trainer.step == 2
    assert trainer.train_step() == pytest.approx(fsdp["losses"][2], abs=1e-5)
    assert trainer.evaluate()["val_loss"] == pytest.approx(fsdp["val_loss"], abs=1e-5)
    from_1 = _load(parallel, "from_1")
    assert from_1["resumed"] and from_1["step"] == 3
    assert from_1["loss"] == pytest.approx(single[1]["fsdp"]["losses"][2], abs=1e-5)
    assert from_1["val_loss"] == pytest.approx(single[1]["fsdp"]["val_loss"], abs=1e-5)
    # and the FSDP 2 checkpoint resumed under TP 2 (its weights split by heads instead)
    to_tp = _load(parallel, "fsdp_to_tp")
    assert to_tp["resumed"] and to_tp["step"] == 3
    assert to_tp["loss"] == pytest.approx(fsdp["losses"][2], abs=1e-5)
    assert to_tp["val_loss"] == pytest.approx(fsdp["val_loss"], abs=1e-5)


def _tied(got: dict) -> dict:
    """A pipeline's parameters by single-process name: the last stage's copy of the tied
    embedding (lm_head.weight) must equal stage 0's tok_emb.weight, then it is dropped."""
    got = dict(got)
    head = got.pop("lm_head.weight")
    assert torch.equal(head, got["tok_emb.weight"])
    return got


def _check_pipeline(got: dict, ref: dict) -> None:
    tied = "lm_head.weight" not in ref["grads"]  # one process lists a tied tensor once
    grads, params = (
        (_tied(got["grads"]), _tied(got["params"])) if tied else (got["grads"], got["params"])
    )
    assert _max_diff(grads, ref["grads"]) < ATOL
    assert _max_diff(params, ref["params"]) < ATOL
    assert got["losses"] == pytest.approx(ref["losses"], abs=1e-5)
    assert got["val_loss"] == pytest.approx(ref["val"], abs=1e-5)
    assert all(v == (got["losses"], got["val_loss"]) for v in got["every_rank"].values())
    assert max(float(g.abs().max()) for g in ref["grads"].values()) > 1e-3


@pytest.mark.parametrize("layout", list(PP_LAYOUTS))
def test_pipeline_2_stages_equal_one_process(parallel, single_pp, layout):
    """PP 2 (GPipe / 1F1B; bf16 and mxfp4; tied and untied embeddings) against one
    process, same seed and global batch of grad_accum 2 micro-batches. The micro-batches,
    and so every quantization group, are the same; only fp32 summation order differs (the
    schedule divides the summed micro-batch gradients by 2, one process sums the halves),
    so ATOL 1e-5 for gradients, weights and losses. The tied embedding's two copies stay
    equal; every rank reports the last stage's loss."""
    _check_pipeline(_load(parallel, layout), single_pp[PP_LAYOUTS[layout][1]])


@pytest.mark.parametrize("layout", list(PP_DP_LAYOUTS))
def test_pipeline_2_stages_x_dp_2_equal_one_process(parallel_4, single_pp, layout):
    """PP 2 x dp_shard 2 (FSDP) and PP 2 x dp_replicate 2 (DDP) on 4 ranks: each dp rank
    feeds one of each micro-batch's two sequences, FSDP / DDP SUM-reduce, the loss_fn
    divides by dp. mxfp4 groups run along the
    features (32) and the 32-token sequence, so one sequence per rank quantizes the same
    groups as one process. Same tolerance as above (summation order only)."""
    _check_pipeline(_load(parallel_4, layout), single_pp[PP_DP_LAYOUTS[layout][1]])
    resumed = _load(parallel_4, "pp_fsdp_1f1b_resume")
    assert resumed["resumed"] and resumed["step"] == 3
    losses = _load(parallel_4, "pp_fsdp_1f1b")["losses"]
    assert resumed["loss"] == pytest.approx(losses[2], abs=1e-6)


def _resume_in_one_process(run_dir: Path, dataset, preset: str = "bf16") -> tuple[float, float]:
    """Step 3's loss of the step-2 checkpoint in run_dir resumed by one process, and the
    val loss after step 3 (its update depends on the optimizer state, too)."""
    trainer = Trainer(pp_recipe(None, preset), dataset=dataset, run_dir=run_dir)
    assert trainer.resume() and trainer.step == 2
    return trainer.train_step(), trainer.evaluate()["val_loss"]


def _same_run(got: tuple[float, float], ref: dict, tol: float = 1e-5) -> None:
    """(step 3's loss, val loss after it) equal the uninterrupted run's."""
    assert got[0] == pytest.approx(ref["losses"][2], abs=tol)
    assert got[1] == pytest.approx(ref["val_loss"] if "val_loss" in ref else ref["val"], abs=tol)


def _resumed(out: Path, name: str) -> tuple[float, float]:
    got = _load(out, name)
    assert got["resumed"] and got["step"] == 3
    return got["loss"], got["val_loss"]


def test_pipeline_checkpoint_reshards_to_one_process_and_back(parallel, single_pp, dataset):
    """Saved under PP 2 at step 2 and resumed under PP 2, and by one process (tied and
    untied embeddings): step 3's loss and the val loss after it are the uninterrupted
    run's. And the single process's checkpoint resumed under PP 2 (each stage reads its
    part, the last stage its copy of the tied embedding's optimizer state from
    tok_emb.weight's)."""
    ref = _load(parallel, "pp_1f1b")
    _same_run(_resumed(parallel, "pp_1f1b_resume"), ref, tol=1e-6)
    _same_run(_resume_in_one_process(parallel / "run_pp_1f1b", dataset), ref)
    untied = _resume_in_one_process(parallel / "run_pp_gpipe_untied", dataset, "bf16_untied")
    _same_run(untied, _load(parallel, "pp_gpipe_untied"))
    _same_run(_resumed(parallel, "single_to_pp_1f1b"), single_pp["bf16"])


def test_pipeline_x_dp_checkpoint_reshards_to_one_process_and_back(parallel_4, single_pp, dataset):
    """PP 2 x dp_shard 2's and PP 2 x dp_replicate 2's step-2 checkpoints resumed by one
    process, and the single process's resumed under PP 2 x dp_shard 2: step 3's loss and
    the val loss after it are the uninterrupted run's."""
    ref = _load(parallel_4, "pp_fsdp_1f1b")
    _same_run(_resume_in_one_process(parallel_4 / "run_pp_fsdp_1f1b", dataset), ref)
    ref = _load(parallel_4, "pp_ddp_1f1b")  # and pp 2 x dp_replicate 2's
    _same_run(_resume_in_one_process(parallel_4 / "run_pp_ddp_1f1b", dataset), ref)
    _same_run(_resumed(parallel_4, "single_to_pp_fsdp_1f1b"), single_pp["bf16"])


def test_pp_layouts_compose_and_need_a_micro_batch_per_stage():
    pp2 = recipe_for(None).with_overrides(["parallel.pp=2", "parallel.nproc=2"])
    with pytest.raises(LayoutError, match="train.grad_accum 1 < pp 2"):
        check_layout(pp2)
    assert check_layout(pp2.with_overrides(["train.grad_accum=2"])).pp == 2
    ddp = ["parallel.dp_replicate=2", "parallel.nproc=4", "train.grad_accum=2"]
    assert check_layout(pp2.with_overrides(ddp)).dp_replicate == 2
    fsdp = ["parallel.dp_shard=2", "parallel.nproc=4", "train.grad_accum=2"]
    assert check_layout(pp2.with_overrides(fsdp)).dp_shard == 2
    tp = ["parallel.tp=2", "parallel.nproc=4", "train.grad_accum=2"]
    assert check_layout(pp2.with_overrides(tp)).tp == 2  # pp x tp runs (test_parity)


def test_pp_that_does_not_divide_the_layers_is_refused_before_launch(tmp_path):
    recipe = recipe_for(None).with_overrides(
        [
            "model.flavour=tiny",
            "parallel.pp=3",
            "parallel.nproc=3",
            "train.grad_accum=3",
            "train.batch_size=6",
        ]
    )
    with pytest.raises(ValueError, match="pp 3 does not divide n_layers 4"):
        launch(recipe, store=RunStore(tmp_path))
    assert RunStore(tmp_path).runs().empty


def test_invalid_layout_is_refused_before_launch(tmp_path):
    recipe = recipe_for(None).with_overrides(["parallel.tp=4", "parallel.nproc=4"])
    with pytest.raises(ValueError, match="tp 4 does not divide n_heads 2"):
        launch(recipe, store=RunStore(tmp_path))
    assert RunStore(tmp_path).runs().empty  # nothing was created or started


@pytest.mark.parametrize(
    ("layout", "sets"),
    [
        ("dp_shard 2", []),  # plain --nproc 2: FSDP
        ("pp 2", ["parallel.pp=2", "train.grad_accum=2"]),  # stats from both stages
        ("tp 2", ["parallel.tp=2"]),  # stats merged from both ranks' shards
    ],
)
def test_nblab_run_nproc_2_writes_metrics_from_rank_0_only(tmp_path, layout, sets):
    env = _env(NBLAB_HOME=str(tmp_path))
    sets = [
        "train.steps=3",
        *sets,
        "eval.interval=3",
        "metrics.histogram_interval=2",
        "metrics.stats_interval=2",
        "precision.preset=mxfp8",
    ]
    args = ["run", "gpt-debug", "--nproc", "2", *(a for s in sets for a in ("--set", s))]
    proc = subprocess.run(
        [sys.executable, "-m", "nblab.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    store = RunStore(tmp_path)
    run = store.runs().iloc[0]
    assert run.status == "succeeded" and run.step == 3
    metrics = store.metrics(run.run_id)
    loss = metrics[metrics.key == "loss"]
    assert sorted(loss.step) == [1, 2, 3]  # one row per step: rank 1 wrote nothing
    assert not metrics.duplicated(["key", "step"]).any()
    assert (metrics.key == "val_loss").sum() == 1
    hist = store.histograms(run.run_id)
    # histograms of whole (gathered) weights: every Linear, both steps 1 and 2
    assert set(hist.step) == {1, 2}
    assert not hist.duplicated(["module", "step"]).any()
    assert set(hist.module) >= {"layers.0.attn.wq", "layers.1.mlp.down"}
    wq = hist[(hist.module == "layers.0.attn.wq") & (hist.step == 1)].iloc[0]
    assert sum(wq.counts) == 64 * 64  # the whole weight, not one rank's shard
    stats = store.stats(run.run_id)
    assert len(stats) > 0 and not stats.duplicated(["step", "module", "role"]).any()
    # every layer's modules, wherever they live (under pp: gathered from both stages)
    assert {m.split(".")[1] for m in stats.module if m.startswith("layers.")} == {"0", "1"}
    log = (store.run_dir(run.run_id) / "train.log").read_text()
    assert f"parallel layout: {layout} on 2 processes" in log
    pids = sorted(f.name for f in (store.run_dir(run.run_id) / "pids").iterdir())
    assert pids == ["rank0", "rank1"]
    if layout == "tp 2":
        _assert_stats_of_whole_tensors(stats, sets, tmp_path / "single")


def _assert_stats_of_whole_tensors(stats, sets: list[str], home: Path) -> None:
    """Each TP rank quantizes its own shard; the stats rank 0 logs are of the whole
    tensor: they equal one process's (same weights up to fp32 summation order). The stats
    of one rank's shard alone differ from the whole tensor's by far more than 1e-3 dB."""
    single_sets = [s for s in sets if not s.startswith("parallel.")]
    store = RunStore(home)
    result = train(Recipe.preset("gpt-debug").with_overrides(single_sets), store=store)
    ref = store.stats(result.run_id)
    keys = ["step", "module", "role"]
    both = stats.merge(ref, on=keys, suffixes=("", "_single"))
    assert len(both) == len(ref) == len(stats) > 0
    assert (both.sqnr - both.sqnr_single).abs().max() < 1e-3, both
    for field in ("saturation", "underflow"):
        assert (both[field] - both[f"{field}_single"]).abs().max() < 1e-4, both


def test_failed_rank_fails_the_run_with_its_traceback_and_leaves_no_process(tmp_path):
    store = RunStore(tmp_path)
    recipe = recipe_for("fsdp")
    result = launch(recipe, store=store, env=_env(NBLAB_FAULT="1:2"))
    assert result.status == "failed"
    run = store.run(result.run_id)
    assert run["status"] == "failed"
    assert run["error"].startswith("rank 1: RuntimeError: injected fault on rank 1 at step 2")
    run_dir = store.run_dir(result.run_id)
    log = (run_dir / "train.log").read_text()
    assert "[rank 1]" in log and "Traceback" in log and "injected fault on rank 1" in log
    pids = [int(f.read_text()) for f in (run_dir / "pids").iterdir()]
    assert len(pids) == 2
    assert not any(pid_alive(p) for p in pids)
    # step 1 was trained and recorded before the fault
    assert sorted(store.metrics(result.run_id).query("key == 'loss'").step) == [1]
