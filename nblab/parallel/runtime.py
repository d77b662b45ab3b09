"""The parallel runtime: process group, DeviceMesh and the parallel plan of one run.

    ctx = init_distributed(recipe)            # None in a single process
    model = apply_parallelism(model, ctx.dims, ctx.mesh, recipe)
    x, y = ctx.dp_slice(x), ctx.dp_slice(y)   # this rank's share of the global micro-batch
    (loss / (grad_accum * ctx.dp)).backward() # gradients are SUM-reduced: the mean is ours
    norm = clip_grad_norm_(model.parameters(), 1.0)

Order of the plan (as torchtitan): TP first, then FSDP2 / HSDP / DDP on top.

The model is known through the model protocol only (nblab.models.protocol): its blocks,
its tensor-parallel plan per block, its parts. Nothing here imports a model.

- TP (`parallelize_module`): every block gets its Architecture's tp_plan (the GPT's:
  ColwiseParallel wq, wk, wv, gate, up; RowwiseParallel wo, down; a Llama's: q/k/v/gate/up
  and o/down). Attention head counts the plan names (tp_divided) become the local ones
  (n_heads / tp). The embedding, the norms and the head stay replicated on every TP rank
  (their gradients are equal on all TP ranks: the inputs of the Colwise layers are
  all-reduced in backward). A QuantLinear under TP computes on the LOCAL
  shards: its autograd Function sees plain local tensors (Colwise: the full input and the
  out_features shard; Rowwise: the in_features shard of both), so a quantization block
  never straddles two ranks (ParallelDims.validate guarantees the local dims are whole
  blocks). The result is handed back as a DTensor (Shard(-1) / Partial) and the style's
  own output layout (Colwise: local shard; Rowwise: all-reduce) takes over.
- Data parallel: `fully_shard` per block and on the root. dp_shard > 1: FSDP2 (with
  dp_replicate > 1: HSDP on the 2-D mesh); dp_shard 1 and dp_replicate > 1: DDP through
  the FSDP2-based `replicate`. MixedPrecisionPolicy: bf16 params with fp32 reduction on
  CUDA when train.dtype is bfloat16, fp32 otherwise (always on CPU).
- Gradient reduction is a plain SUM (divide factor 1, sum-only collectives: gloo's AVG
  is not relied upon, see pytorch issue 162338). The trainer divides the loss by the dp
  degree itself, so the reduced gradient is the mean over the global batch.

Pipeline parallelism (pp > 1, parallel.pp_schedule gpipe | 1f1b): nblab.parallel.pipeline
splits the model into stages (the trainer builds a Pipeline instead of calling
apply_parallelism), then applies the same plan to each stage: apply_tp within the stage
when tp > 1, apply_data_parallel when dp > 1 (pp x dp_shard: FSDP2, pp x dp_replicate:
DDP, both: HSDP). clip_grad_norm_(..., pp=pp) all-reduces the squared norms of every
stage.
"""

from __future__ import annotations

import math
import os
import types
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

from nblab.models.protocol import COLWISE, ModelShape, architecture, blocks
from nblab.parallel.dims import ParallelDims
from nblab.precision.linear import linear_shape

# ---------------------------------------------------------------------------
# The process group
# ---------------------------------------------------------------------------


def world_size() -> int:
    """Processes of this job: the process group's size, else torchrun's WORLD_SIZE, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_rank0() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def exit_rank(code: int) -> NoReturn:
    """End this rank's process with `code`: destroy the process group, flush the logs and
    streams, then os._exit, skipping the interpreter's teardown. With gloo, about one exit
    in ten aborted there ("terminate called without an active exception", SIGABRT) after
    a clean destroy_process_group; torchrun then SIGTERMs the other ranks, which may still
    be finishing the run's last writes."""
    import logging
    import sys

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def dims_for(recipe: Any, world: int) -> ParallelDims:
    """The ParallelDims of `recipe` on `world` processes. A recipe whose degrees are all 1
    (the default) runs FSDP over every process: dp_shard = world."""
    p = recipe.parallel
    if p.dp_replicate * p.dp_shard * p.tp * p.pp == 1 and world > 1:
        return ParallelDims(dp_shard=world, world_size=world)
    return ParallelDims.from_recipe(recipe, world_size=world)


def resolve_device(name: str) -> torch.device:
    """train.device as a torch.device: auto is cuda when one is visible, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(name)


def device_for(recipe: Any) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK on CUDA, else cpu (train.device as resolved)."""
    device = resolve_device(recipe.train.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def build_mesh(dims: ParallelDims, device_type: str) -> DeviceMesh:
    """The DeviceMesh of `dims`: ParallelDims.mesh_shape()'s named dims (size-1 dims left
    out), outermost first. A 1-D mesh of the world when every degree is 1."""
    shape = dims.mesh_shape()
    if not shape:
        return init_device_mesh(device_type, (dims.world_size,), mesh_dim_names=("dp_shard",))
    return init_device_mesh(device_type, tuple(shape.values()), mesh_dim_names=tuple(shape))


@dataclass
class ParallelContext:
    """Where this process sits in the layout of a run."""

    dims: ParallelDims
    mesh: DeviceMesh
    device: torch.device

    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def world_size(self) -> int:
        return dist.get_world_size()

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def dp(self) -> int:
        """The data-parallel degree: how many ways the batch splits."""
        return self.dims.dp

    @property
    def dp_rank(self) -> int:
        """This rank's index among the dp ranks (its share of the batch)."""
        names = self.mesh.mesh_dim_names or ()
        rep = self.mesh.get_local_rank("dp_replicate") if "dp_replicate" in names else 0
        shard = self.mesh.get_local_rank("dp_shard") if "dp_shard" in names else 0
        return rep * self.dims.dp_shard + shard

    @property
    def tp_rank(self) -> int:
        """This rank's index in its tp group (0 without TP)."""
        names = self.mesh.mesh_dim_names or ()
        return self.mesh.get_local_rank("tp") if "tp" in names else 0

    def dp_slice(self, batch: torch.Tensor) -> torch.Tensor:
        """Rows [dp_rank * n/dp, (dp_rank + 1) * n/dp) of a global (micro-)batch."""
        n = batch.size(0)
        if n % self.dp:
            raise ValueError(f"batch of {n} sequences does not split over dp {self.dp}")
        per = n // self.dp
        return batch[self.dp_rank * per : (self.dp_rank + 1) * per]

    def mean_over_dp(self, value: float) -> float:
        """The mean over the dp ranks of a per-rank number (every TP rank of one dp rank
        holds the same value, so the mean over the world equals the mean over dp)."""
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t) / self.world_size


def init_distributed(recipe: Any, shape: ModelShape | None = None) -> ParallelContext | None:
    """Join (or start) the process group torchrun set up and build the mesh; None when this
    is a single process. gloo on CPU, nccl on CUDA. Validates the layout first against the
    model's shape (LayoutError lists every problem)."""
    world = world_size()
    if world <= 1:
        return None
    if recipe.parallel.nproc not in (1, world):
        raise ValueError(
            f"parallel.nproc={recipe.parallel.nproc} but this job has {world} processes "
            f"(torchrun --nproc-per-node)"
        )
    dims = dims_for(recipe, world)
    if shape is not None:
        dims.validate(recipe, model=shape)
    else:
        dims.validate(recipe)
    device = device_for(recipe)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, **kwargs)
    return ParallelContext(dims, build_mesh(dims, device.type), device)


# ---------------------------------------------------------------------------
# The parallel plan
# ---------------------------------------------------------------------------


def _quant_local_forward(self, x: torch.Tensor) -> torch.Tensor:
    """QuantLinear.forward on the local shards of a TP-sharded QuantLinear.

    Colwise: x is a Replicate DTensor, the weight Shard(0) -> y = the out_features shard,
    Shard(-1); x's gradient is a partial sum (all-reduced by the style's input layout).
    Rowwise: x is Shard(-1), the weight Shard(1) -> y is a partial sum, Partial()."""
    from nblab.precision.linear import QuantLinear, _QuantLinearFn

    weight = self.weight
    if not isinstance(weight, DTensor):  # not (or no longer) TP-sharded
        return QuantLinear.forward(self, x)
    rowwise = weight.placements[-1] == Shard(1)
    mesh = weight.device_mesh
    if isinstance(x, DTensor):
        x = x.to_local(grad_placements=x.placements if rowwise else [Partial()])
    w = weight.to_local()  # its gradient keeps the weight's placement
    bias = self.bias
    if bias is not None:
        if rowwise:
            raise NotImplementedError("a RowwiseParallel QuantLinear with a bias")
        bias = bias.to_local() if isinstance(bias, DTensor) else bias
    device = x.device.type
    if torch.is_autocast_enabled(device):  # the Function is not autocast-aware
        dtype = torch.get_autocast_dtype(device)
        x, w = x.to(dtype), w.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    x2 = x.reshape(-1, x.shape[-1])  # (T, local in)
    y = _QuantLinearFn.apply(x2, w, bias, self)  # (T, local out)
    y = y.reshape(*x.shape[:-1], w.shape[0])
    return DTensor.from_local(y, mesh, [Partial()] if rowwise else [Shard(-1)], run_check=False)


def quantize_local_shards(module: nn.Module) -> nn.Module:
    """Make a TP-sharded QuantLinear compute on its local shards (see the module doc)."""
    module.forward = types.MethodType(_quant_local_forward, module)
    return module


def _owned_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks this rank holds: all of them, except under pp, where the other stages'
    blocks are parameter-free stand-ins (nblab.parallel.pipeline)."""
    return [block for block in blocks(model) if any(True for _ in block.parameters())]


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh) -> nn.Module:
    """TP on every block with the model's tp_plan (see the module doc)."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    from nblab.precision.linear import QuantLinear

    arch = architecture(model)
    if not arch.tp_plan:
        raise ValueError(f"tensor parallelism: {arch.tp_problem}")
    tp = tp_mesh.size()
    # a pipeline stage's blocks hold parameter-free stand-ins for other stages' blocks
    for block in _owned_blocks(model):
        plan = {
            suffix: ColwiseParallel() if style == COLWISE else RowwiseParallel()
            for suffix, style in arch.tp_plan.items()
        }
        parallelize_module(block, tp_mesh, plan)
        for path in arch.tp_divided:  # head counts the attention views by: the local ones
            owner_path, _, attr = path.rpartition(".")
            owner = block.get_submodule(owner_path) if owner_path else block
            setattr(owner, attr, getattr(owner, attr) // tp)
        for suffix in arch.tp_plan:
            module = block.get_submodule(suffix)
            if isinstance(module, QuantLinear):
                quantize_local_shards(module)
    return model


def mp_policy(device: torch.device, dtype: str = "float32"):
    """bf16 params with fp32 gradient reduction on CUDA for a bfloat16 recipe, else fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cuda" and dtype == "bfloat16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_data_parallel(
    model: nn.Module, dims: ParallelDims, mesh: DeviceMesh, policy=None
) -> nn.Module:
    """fully_shard (FSDP2 / HSDP) or replicate (DDP) per block, then the root, with
    SUM-only gradient reduction (divide factor 1): the caller scales the loss by 1/dp."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = policy or MixedPrecisionPolicy()
    if dims.dp_shard > 1:
        names = ("dp_replicate", "dp_shard") if dims.dp_replicate > 1 else ("dp_shard",)
        dp_mesh = mesh[names] if len(names) > 1 else mesh[names[0]]

        def wrap(m):
            return fully_shard(m, mesh=dp_mesh, mp_policy=policy)
    else:
        from torch.distributed._composable.replicate_with_fsdp import replicate

        dp_mesh = mesh["dp_replicate"]

        def wrap(m):
            return replicate(m, mesh=dp_mesh, mp_policy=policy)

    wrapped = [wrap(block) for block in _owned_blocks(model)]
    wrapped.append(wrap(model))
    for m in wrapped:
        m.set_gradient_divide_factor(1.0)
        m.set_force_sum_reduction_for_comms(True)
    return model


def apply_parallelism(
    model: nn.Module, dims: ParallelDims, mesh: DeviceMesh, recipe: Any = None
) -> nn.Module:
    """TP, then FSDP2 / HSDP / DDP, on a model already on its device (see the module
    docstring). Returns the same model, changed in place. Pipeline stages are not made
    here: with pp > 1 the trainer builds a nblab.parallel.pipeline.Pipeline."""
    if dims.pp > 1:
        raise ValueError("apply_parallelism does not split pipeline stages; use Pipeline")
    device = next(model.parameters()).device
    if dims.tp > 1:
        apply_tp(model, mesh["tp"])
    if dims.dp > 1:
        dtype = recipe.train.dtype if recipe is not None else "float32"
        apply_data_parallel(model, dims, mesh, mp_policy(device, dtype))
    return model


# ---------------------------------------------------------------------------
# Gradient norm, gathered weights
# ---------------------------------------------------------------------------


def _copies(t: torch.Tensor, world: int) -> int:
    """How many ranks hold each element of t: the size of its Replicate mesh dims times
    the ranks outside its mesh; `world` for a plain (replicated) tensor."""
    if not isinstance(t, DTensor):
        return world
    mesh = t.device_mesh
    if any(isinstance(p, Partial) for p in t.placements):
        raise ValueError("a Partial gradient cannot be clipped; reduce it first")
    replicated = math.prod(
        mesh.size(i) for i, p in enumerate(t.placements) if isinstance(p, Replicate)
    )
    return replicated * world // mesh.size()


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float, pp: int = 1, duplicates=()) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ for a mix of DTensor and plain gradients: the 2-norm
    of the FULL gradient (one all-reduce over the world), then scaled in place. With
    pp > 1 each rank passes its stage's parameters; a tensor is then held by world / pp
    ranks, not world. `duplicates`: parameters scaled like the others but left out of the
    norm, because another stage counts them (a tied embedding's second copy)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    extra = [p.grad for p in duplicates if p.grad is not None]
    if not grads:
        return torch.zeros(())
    world = world_size()
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    device = local[0].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for g, lg in zip(grads, local, strict=True):
        total += lg.detach().double().pow(2).sum() / (_copies(g, world) // pp)
    if world > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    norm = total.sqrt().float()
    if math.isfinite(max_norm):
        coef = max_norm / (float(norm) + 1e-6)
        if coef < 1.0:
            for lg in local + [g.to_local() if isinstance(g, DTensor) else g for g in extra]:
                lg.mul_(coef)
    return norm


def unmix_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Turn off the foreach/fused paths of an optimizer whose parameters mix DTensors and
    plain tensors (TP without FSDP: tok_emb, norms and lm_head stay plain); the foreach
    kernels refuse such a mix."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    kinds = {isinstance(p, DTensor) for p in params}
    if len(kinds) > 1:
        for group in optimizer.param_groups:
            group["foreach"] = False
            if "fused" in group:
                group["fused"] = False
    return optimizer


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank must call it), else t."""
    return t.full_tensor() if isinstance(t, DTensor) else t


class _Gathered(nn.Module):
    """Stand-in with the model's Linear names and their FULL weights (for histograms)."""

    def __init__(self, items: list[tuple[str, nn.Module]]):
        super().__init__()
        self._items = items

    def named_modules(self, *args, **kwargs):
        yield from self._items


@torch.no_grad()
def gather_to_rank0(items: list, *, contribute: bool = True) -> list:
    """On rank 0: the `items` of every rank that contributes, concatenated in rank order;
    [] on the other ranks. A collective: every rank calls it (small picklable items)."""
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(items if contribute else [], parts, dst=0)
    return [item for part in parts for item in part] if parts is not None else []


def gathered_linears(model: nn.Module) -> nn.Module:
    """Every linear module of `model` (nn.Linear, Conv1D) by name, each with its whole
    weight (DTensor shards are gathered: every rank must call this, in the same order).
    Shares storage where the weight is not sharded."""
    items = []
    for name, module in model.named_modules():
        if linear_shape(module) is not None:
            weight = full_tensor(module.weight.detach())
            lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
            lin.weight = nn.Parameter(weight, requires_grad=False)
            items.append((name, lin))
    return _Gathered(items)


__all__ = [
    "ParallelContext",
    "apply_data_parallel",
    "apply_parallelism",
    "apply_tp",
    "barrier",
    "build_mesh",
    "clip_grad_norm_",
    "device_for",
    "dims_for",
    "exit_rank",
    "full_tensor",
    "gather_to_rank0",
    "gathered_linears",
    "init_distributed",
    "is_rank0",
    "mp_policy",
    "quantize_local_shards",
    "resolve_device",
    "unmix_optimizer",
    "rank",
    "world_size",
]
