"""Pipeline parallelism (pp > 1) with torch.distributed.pipelining, for any model whose
Architecture (nblab.models.protocol) has a stage_forward: the built-in GPT today.

    pipe = Pipeline(model, ctx, recipe)       # model: the FULL model, built with the run's seed
    loss = pipe.train_step(x, y)              # x, y: the step's grad_accum micro-batches
    pipe.sync_tied_grads()
    counted, duplicates = pipe.norm_parameters()
    norm = clip_grad_norm_(counted, clip, pp=pp, duplicates=duplicates)

Stages (manual split, no tracing): every rank builds the whole model with the same seed,
then deletes what its stage does not own, so the weights equal the single-process
model's and the module names stay (checkpoints and precision plans by name still apply):

- stage s owns blocks {s L/pp} .. {(s+1) L/pp - 1} of the model's blocks
  (ParallelDims.validate requires pp | n_layers); the other entries become
  parameter-free _Absent modules, so the names of the owned blocks do not change; the
  stage's forward is the Architecture's stage_forward over model.pp_blocks;
- stage 0 owns the embedding, the last stage the final norm and the head;
- tied embeddings (the head's weight is the embedding's, e.g. the GPT's lm_head.weight
  and tok_emb.weight): stage 0's embedding weight and the last stage's head weight are
  two copies of one tensor with the same initial value. After
  backward, their gradients are summed over the pp group (sync_tied_grads), so both
  copies take the same optimizer update and stay equal; the gradient norm counts the
  tensor once (norm_parameters sets the last stage's copy apart: clipped, not counted).

The schedule (parallel.pp_schedule: gpipe | 1f1b) runs the step's train.grad_accum
micro-batches (n_microbatches = grad_accum >= pp). The loss_fn on the last stage is the
model's mean cross entropy of one micro-batch; the schedule scales gradients by
1 / n_microbatches (scale_grads), exactly the single-process (loss / grad_accum).backward().
The step's loss (the mean over micro-batches) is sent from the last stage to every rank.

Eval runs schedule.eval (forward only) on grad_accum eval batches at a time, each one a
micro-batch of the training shape (the stages' p2p buffers have that shape); a short last
group is padded with copies whose losses are dropped.

pp x dp: each stage is data-parallel over its dp group (apply_data_parallel, SUM
reduction): FSDP2-sharded over dp_shard, replicated (DDP, replicate_with_fsdp) over
dp_replicate, or both (HSDP); every dp rank feeds its rows of each micro-batch, the
loss_fn divides by dp (the gradient is then the global mean) and the reported loss is
the mean over dp. The pipeline schedule drives the gradient sync (after the last
micro-batch's backward). Tested: pp 2 x dp_shard 2 and pp 2 x dp_replicate 2 (HSDP
within stages, 8 ranks, is not).

Checkpoints: each stage saves the modules it owns and their optimizer state under their
one-process names (nblab.train.checkpoint keys the optimizer by parameter name), so a pp
checkpoint resumes in another layout (tested: pp 2, pp 2 x dp_shard 2 and pp 2 x
dp_replicate 2 -> one process; one process -> pp 2 and pp 2 x dp_shard 2). The last
stage's copy of a tied embedding reads its
optimizer state from tok_emb.weight's (checkpoint_aliases).

pp x tp: within each stage, apply_tp splits the blocks' Linears over the stage's tp group
(the plan of runtime.apply_tp, QuantLinear on local shards); the hidden states between
stages are whole (RowwiseParallel all-reduces its output), so each tp rank sends to and
receives from the same tp rank of the next stage. tok_emb, norm and lm_head stay
replicated over tp. Tested: pp 2 x tp 2, 20 steps, equal to one process (test_parity).

Under pp, the ranks of every stage's first dp rank record their modules' quantization
stats (under tp each its shards), its first tp rank the weight histograms; rank 0 gathers
them and merges the shards' stats (Trainer._log_step).
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nblab.models.protocol import (
    architecture,
    blocks,
    get_part,
    lm_loss,
    set_part,
    tied_weights,
)
from nblab.recipe import PP_SCHEDULES


def stage_blocks(n_layers: int, pp: int, stage: int) -> range:
    """The block indices stage `stage` of `pp` owns (pp divides n_layers)."""
    per = n_layers // pp
    return range(stage * per, (stage + 1) * per)


class _Absent(nn.Module):
    """A block that another pipeline stage owns: no parameters, never called."""

    def forward(self, x, cos, sin):  # pragma: no cover - the stage forward skips it
        raise RuntimeError("this block belongs to another pipeline stage")


def split_model(model: nn.Module, stage: int, pp: int) -> nn.Module:
    """Keep only what stage `stage` of `pp` owns (in place; see the module docstring)."""
    arch = architecture(model)
    if arch.stage_forward is None:
        raise ValueError(f"pipeline parallelism: {arch.pp_problem}")
    layers = blocks(model)
    n = len(layers)
    if n % pp:
        raise ValueError(f"pp {pp} does not divide n_layers {n}")
    owned = stage_blocks(n, pp, stage)
    for i in range(n):
        if i not in owned:
            layers[i] = _Absent()
    if stage != 0:
        set_part(model, arch.embedding, None)
    if stage != pp - 1:
        set_part(model, arch.final_norm, None)
        set_part(model, arch.head, None)
    model.pp_blocks = list(owned)
    model.forward = types.MethodType(arch.stage_forward, model)
    return model


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class Pipeline:
    """One rank's stage of the pipeline and its schedule."""

    def __init__(self, model: nn.Module, ctx: Any, recipe: Any):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        self.pp = ctx.dims.pp
        self.group = ctx.mesh.get_group("pp")
        self.stage_index = ctx.mesh.get_local_rank("pp")
        self.is_first = self.stage_index == 0
        self.is_last = self.stage_index == self.pp - 1
        self.n_microbatches = recipe.train.grad_accum
        arch = architecture(model)
        # {head weight: embedding weight} of the whole model, before the split drops one
        self.tied = tied_weights(model)
        self.tied_shape = tuple(get_part(model, arch.embedding).weight.shape)
        self._embedding, self._head = arch.embedding, arch.head
        self.model = split_model(model, self.stage_index, self.pp)
        if ctx.dims.tp > 1:  # within the stage: its blocks' Linears split over the tp group
            from nblab.parallel.runtime import apply_tp

            apply_tp(self.model, ctx.mesh["tp"])
        self.dp = ctx.dims.dp
        self.dp_shard = ctx.dims.dp_shard
        self.dp_shard_rank = ctx.mesh.get_local_rank("dp_shard") if self.dp_shard > 1 else 0
        if self.dp > 1:
            from nblab.parallel.runtime import apply_data_parallel, mp_policy

            policy = mp_policy(ctx.device, recipe.train.dtype)
            apply_data_parallel(self.model, ctx.dims, ctx.mesh, policy)
        self.stage = PipelineStage(
            self.model, self.stage_index, self.pp, ctx.device, group=self.group
        )
        name = recipe.parallel.pp_schedule
        cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[name]
        dp = self.dp

        def loss_fn(logits, targets):  # gradients are SUM-reduced over dp: / dp is the mean
            return lm_loss(logits, targets) / dp

        self.schedule = cls(self.stage, self.n_microbatches, loss_fn=loss_fn)
        self._last_rank = dist.get_global_rank(self.group, self.pp - 1)

    def _share(self, value: float) -> float:
        """The last stage's number on every rank of the pp group (a broadcast)."""
        t = torch.tensor([value if self.is_last else 0.0], dtype=torch.float64)
        t = t.to(next(self.model.buffers()).device)
        dist.broadcast(t, src=self._last_rank, group=self.group)
        return float(t)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward and backward of the step's micro-batches (x, y: all of them, stacked);
        returns this dp rank's mean loss over the micro-batches, on every stage."""
        losses: list[torch.Tensor] = []
        args = (x,) if self.is_first else ()
        target = y if self.is_last else None
        self.schedule.step(*args, target=target, losses=losses, return_outputs=False)
        mean = sum(float(v.detach()) for v in losses) / len(losses) if self.is_last else 0.0
        return self._share(mean * self.dp)

    @torch.no_grad()
    def eval_losses(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
        """The loss of each (x, y) batch (each of the training micro-batch's shape), forward
        only, grad_accum batches per schedule call; on every stage (this dp rank's rows)."""
        out: list[float] = []
        m = self.n_microbatches
        for i in range(0, len(batches), m):
            group = batches[i : i + m]
            real = len(group)
            group = group + [group[-1]] * (m - real)  # pad: losses dropped below
            x = torch.cat([b[0] for b in group])
            y = torch.cat([b[1] for b in group])
            losses: list[torch.Tensor] = []
            args = (x,) if self.is_first else ()
            target = y if self.is_last else None
            self.schedule.eval(*args, target=target, losses=losses)
            for j in range(real):
                out.append(self._share(float(losses[j]) * self.dp if self.is_last else 0.0))
        return out

    @torch.no_grad()
    def sync_tied_grads(self) -> None:
        """Sum the tied embedding's two gradients (stage 0's tok_emb, the last stage's
        lm_head) over the pp group; the stages in between add zeros."""
        if not self.tied:
            return
        weight = None
        if self.is_first:
            weight = get_part(self.model, self._embedding).weight
        elif self.is_last:
            weight = get_part(self.model, self._head).weight
        device = next(self.model.buffers()).device
        if weight is not None and weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        if weight is not None:
            grad = _local(weight.grad)  # under FSDP: this dp_shard rank's rows, on both ends
        else:
            rows = torch.empty(self.tied_shape[0], device="meta").chunk(self.dp_shard)
            n = rows[self.dp_shard_rank].numel() if self.dp_shard_rank < len(rows) else 0
            grad = torch.zeros((n, *self.tied_shape[1:]), device=device)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=self.group)

    def checkpoint_aliases(self) -> dict[str, str]:
        """{this stage's parameter: the one-process parameter it copies} for checkpoints:
        the last stage's copy of a tied embedding is tok_emb.weight (nblab.train.checkpoint
        saves its optimizer state once, from stage 0, and loads it from there)."""
        if self.tied and self.is_last and not self.is_first:
            return dict(self.tied)
        return {}

    def norm_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(counted, duplicates): this stage's parameters for the global gradient norm,
        each tensor counted once over the pipeline; duplicates (the last stage's copy of a
        tied embedding) are clipped with the same coefficient but not counted."""
        params = list(self.model.parameters())
        if self.tied and self.is_last and not self.is_first:
            head = get_part(self.model, self._head).weight
            return [p for p in params if p is not head], [head]
        return params, []


__all__ = ["PP_SCHEDULES", "Pipeline", "split_model", "stage_blocks"]
