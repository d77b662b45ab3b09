"""Run by test_runtime.py under `torchrun --standalone --nproc-per-node 2` (gloo, CPU).

    python -m torch.distributed.run --standalone --nproc-per-node 2 dist_worker.py OUT
    python -m torch.distributed.run --standalone --nproc-per-node 4 dist_worker.py OUT pp_fsdp

OUT/run_single and OUT/run_single_pp hold single-process checkpoints (the test writes
them) that the jobs resume under FSDP 2, PP 2 and PP 2 x dp_shard 2.

One process group, several layouts one after another (each builds its own mesh). Rank 0
saves what it measured to OUT/*.pt; the test compares it with single-process runs.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

import nblab_kernels as nk
from nblab.parallel import runtime
from nblab.precision.linear import QuantLinear, on_stored_layout
from nblab.recipe import Recipe
from nblab.train.trainer import Trainer, build_data

LAYOUTS = {
    "fsdp": (["parallel.dp_shard=2", "parallel.nproc=2"], "bf16"),
    "ddp": (["parallel.dp_replicate=2", "parallel.nproc=2"], "bf16"),
    "tp": (["parallel.tp=2", "parallel.nproc=2"], "mxfp8"),
}


def recipe_for(layout: str | None, preset: str = "bf16") -> Recipe:
    """gpt-debug, 3 steps, no eval; `layout` None is the single-process recipe."""
    base = Recipe.preset("gpt-debug").with_overrides(
        [
            "train.steps=3",
            "eval.interval=0",
            "metrics.histogram_interval=0",
            "metrics.stats_interval=0",
            f"precision.preset={preset}",
        ]
    )
    return base.with_overrides(LAYOUTS[layout][0]) if layout else base


# pipeline layouts (pp 2 alone): name -> (parallel.pp_schedule, precision preset). The
# pipeline's micro-batches are train.grad_accum's, so these recipes (and their
# single-process references) use grad_accum 2; eval.batches 3 pads the last eval call.
PP_LAYOUTS = {
    "pp_gpipe": ("gpipe", "bf16"),
    "pp_1f1b": ("1f1b", "bf16"),
    "pp_gpipe_mxfp4": ("gpipe", "mxfp4"),
    "pp_1f1b_mxfp4": ("1f1b", "mxfp4"),
    "pp_gpipe_untied": ("gpipe", "bf16_untied"),  # model.tie_embeddings = false
}
# pp 2 x dp_shard 2 and pp 2 x dp_replicate 2 on 4 processes (the second torchrun job)
PP_DP_LAYOUTS = {
    "pp_fsdp_1f1b": ("1f1b", "bf16"),
    "pp_fsdp_gpipe_mxfp4": ("gpipe", "mxfp4"),
    "pp_ddp_1f1b": ("1f1b", "bf16"),  # pp 2 x dp_replicate 2
}


def pp_recipe(layout: str | None, preset: str = "bf16") -> Recipe:
    """recipe_for's gpt-debug with grad_accum 2; `layout` None: the single process.
    preset "<name>_untied": precision preset <name> with model.tie_embeddings = false."""
    untied = preset.endswith("_untied")
    base = recipe_for(None, preset.removesuffix("_untied")).with_overrides(
        ["train.grad_accum=2", "eval.batches=3"]
        + (["model.tie_embeddings=false"] if untied else [])
    )
    if layout is None:
        return base
    if layout in PP_DP_LAYOUTS:
        schedule = PP_DP_LAYOUTS[layout][0]
        dp = "dp_replicate" if layout.startswith("pp_ddp") else "dp_shard"
        pp = ["parallel.pp=2", f"parallel.{dp}=2", "parallel.nproc=4"]
        return base.with_overrides([*pp, f"parallel.pp_schedule={schedule}"])
    schedule = PP_LAYOUTS[layout][0]
    pp = ["parallel.pp=2", "parallel.nproc=2", f"parallel.pp_schedule={schedule}"]
    if layout == "pp_gpipe_mxfp4":  # the stats / histogram code paths under pp, too
        pp += ["metrics.stats_interval=1", "metrics.histogram_interval=1"]
    return base.with_overrides(pp)


def gathered(d: dict) -> dict:
    """Every rank's dict merged (each pipeline stage holds its own parameters)."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, d)
    return {k: v for part in parts for k, v in part.items()}


def full_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: runtime.full_tensor(p.grad).clone() for n, p in model.named_parameters()}


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: runtime.full_tensor(p.detach()).clone() for n, p in model.named_parameters()}


def fixed_batch(vocab: int):
    g = torch.Generator().manual_seed(123)
    return torch.randint(0, vocab, (4, 32), generator=g)


def quant_tp(out: Path, name: str, spec) -> None:
    """Colwise QuantLinear then Rowwise QuantLinear (64 -> 64 -> 64) on tp 2, against the
    same math done shard by shard and against quantizing the whole tensors."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    specs = {"fwd_x": spec, "fwd_w": spec}
    torch.manual_seed(0)
    seq = nn.Sequential(
        QuantLinear(64, 64, bias=False, specs=specs), QuantLinear(64, 64, bias=False, specs=specs)
    )
    w0, w1 = seq[0].weight.detach().clone(), seq[1].weight.detach().clone()
    x = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(1))
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
    parallelize_module(seq, mesh, {"0": ColwiseParallel(), "1": RowwiseParallel()})
    for m in seq:
        runtime.quantize_local_shards(m)
    y = seq(x)  # (2, 8, 64), replicated
    y.sum().backward()

    def fq(t, role="fwd_x"):
        return nk.fake_quantize(t, on_stored_layout(spec, role))

    x2 = x.reshape(-1, 64)
    # shard by shard: rank r holds rows r*32.. of w0 and columns r*32.. of w1
    per_shard = sum(
        fq(fq(x2) @ fq(w0[r * 32 : (r + 1) * 32], "fwd_w").t())
        @ fq(w1[:, r * 32 : (r + 1) * 32], "fwd_w").t()
        for r in range(2)
    )
    whole = fq(fq(x2) @ fq(w0, "fwd_w").t()) @ fq(w1, "fwd_w").t()
    grad_w0 = runtime.full_tensor(seq[0].weight.grad)
    if dist.get_rank() == 0:
        torch.save(
            {
                "y": y.detach().reshape(-1, 64),
                "per_shard": per_shard,
                "whole": whole,
                "grad_w0_shape": tuple(grad_w0.shape),
            },
            out / f"quant_{name}.pt",
        )


def pipeline_runs(out: Path, dataset, layouts: dict, checkpointed: tuple[str, ...]) -> None:
    """3 steps of each pipeline layout (a checkpoint at step 2 of those in `checkpointed`),
    then the first one's checkpoint resumed in the same layout; rank 0 saves
    OUT/{layout}.pt and OUT/{checkpointed[0]}_resume.pt."""
    rank0 = dist.get_rank() == 0
    for layout, (_, preset) in layouts.items():
        trainer = Trainer(pp_recipe(layout, preset), dataset=dataset, run_dir=out / f"run_{layout}")
        losses = [trainer.train_step(), trainer.train_step()]
        grads = gathered(full_grads(trainer.model))
        params = gathered(full_params(trainer.model))
        if layout in checkpointed:
            trainer.save_checkpoint()  # step 2, one stage per rank
        losses.append(trainer.train_step())
        val_loss = trainer.evaluate()["val_loss"]
        every_rank = gathered({dist.get_rank(): (losses, val_loss)})
        result = {"losses": losses, "grads": grads, "params": params, "val_loss": val_loss}
        result["every_rank"] = every_rank
        if rank0:
            torch.save(result, out / f"{layout}.pt")
    # resume the checkpoint of step 2 in the same layout
    layout = checkpointed[0]
    resume_in(out, dataset, layout, f"run_{layout}", f"{layout}_resume")
    # 1 -> pp: the single-process checkpoint (step 2, bf16) the test wrote in OUT/run_single_pp
    resume_in(out, dataset, layout, "run_single_pp", f"single_to_{layout}")


def resume_in(out: Path, dataset, layout: str, run: str, name: str) -> None:
    """Resume OUT/{run}'s checkpoint in pipeline `layout`, train one step, evaluate (the
    weights after step 3 depend on the optimizer state too); rank 0 saves OUT/{name}.pt."""
    recipe = pp_recipe(layout, {**PP_LAYOUTS, **PP_DP_LAYOUTS}[layout][1])
    trainer = Trainer(recipe, dataset=dataset, run_dir=out / run)
    resumed = trainer.resume()
    loss = trainer.train_step()
    val_loss = trainer.evaluate()["val_loss"]
    if dist.get_rank() == 0:
        result = {"resumed": resumed, "step": trainer.step, "loss": loss, "val_loss": val_loss}
        torch.save(result, out / f"{name}.pt")


def main_pp_fsdp(out: Path) -> None:
    dist.init_process_group("gloo")
    pipeline_runs(out, build_data(recipe_for(None)), PP_DP_LAYOUTS, ("pp_fsdp_1f1b", "pp_ddp_1f1b"))


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank0 = dist.get_rank() == 0
    quant_tp(out, "mxfp8", nk.QuantSpec.from_name("mxfp8"))
    quant_tp(out, "tensorwise", nk.QuantSpec.from_name("fp8_e4m3_tensor"))

    dataset = build_data(recipe_for(None))
    for layout, (_, preset) in LAYOUTS.items():
        recipe = recipe_for(layout, preset)
        trainer = Trainer(recipe, dataset=dataset, run_dir=out / f"run_{layout}")
        x = fixed_batch(dataset.vocab_size)
        with torch.no_grad():
            logits, _ = trainer.model(x)  # the whole batch on every rank: TP needs it so
        losses = [trainer.train_step(), trainer.train_step()]
        grads = full_grads(trainer.model)
        params = full_params(trainer.model)
        if layout == "fsdp":
            trainer.save_checkpoint()  # step 2, sharded over 2 ranks
        losses.append(trainer.train_step())
        result = {"losses": losses, "grads": grads, "params": params}
        # after step 3's update, which a resume only reproduces with the optimizer state
        result["val_loss"] = trainer.evaluate()["val_loss"]
        result["logits"] = runtime.full_tensor(logits)
        result["world_params"] = sum(p.numel() for p in trainer.model.parameters())
        if rank0:
            torch.save(result, out / f"{layout}.pt")

    # pipeline parallelism: pp 2, GPipe and 1F1B, bf16 and mxfp4
    # (and checkpoints of pp_1f1b and pp_gpipe_untied at step 2, resumed by the tests)
    pipeline_runs(out, dataset, PP_LAYOUTS, ("pp_1f1b", "pp_gpipe_untied"))

    # 1 -> 2: resume the single-process checkpoint the test wrote under FSDP 2
    trainer = Trainer(recipe_for("fsdp"), dataset=dataset, run_dir=out / "run_single")
    resumed = trainer.resume()
    loss = trainer.train_step()
    result = {"resumed": resumed, "step": trainer.step, "loss": loss}
    result["val_loss"] = trainer.evaluate()["val_loss"]
    if rank0:
        torch.save(result, out / "from_1.pt")
    # FSDP 2 -> TP 2: the step-2 checkpoint of the fsdp layout, resharded onto tp 2
    trainer = Trainer(recipe_for("tp", "bf16"), dataset=dataset, run_dir=out / "run_fsdp")
    resumed = trainer.resume()
    loss = trainer.train_step()
    result = {"resumed": resumed, "step": trainer.step, "loss": loss}
    result["val_loss"] = trainer.evaluate()["val_loss"]
    if rank0:
        torch.save(result, out / "fsdp_to_tp.pt")


if __name__ == "__main__":
    if sys.argv[2:] == ["pp_fsdp"]:
        main_pp_fsdp(Path(sys.argv[1]))
    else:
        main(Path(sys.argv[1]))
    runtime.exit_rank(0)
