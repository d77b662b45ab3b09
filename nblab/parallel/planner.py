"""The layout planner: which (dp_replicate, dp_shard, tp, pp) fits N GPUs, and how fast.

    estimates = plan(recipe, gpus=8, gpu_mem_bytes=80e9)
    print(format_plan(estimates))        # ranked layouts, then each rejected one and why

`plan` enumerates every layout with dp_replicate x dp_shard x tp x pp == gpus and tp
inside one node, validates each with ParallelDims (a rejected layout keeps the
validation messages), estimates per-GPU memory and communication per step with the
formulas below, rejects what does not fit, and ranks the rest by estimated step time.
Everything is arithmetic on the recipe: no torch.distributed, nothing allocated.

Symbols: N params; L n_layers, L_s = L / pp blocks per stage; d d_model; F ffn_hidden;
nh, nkv heads, hd head_dim; V vocab; s seq_len; m = grad_accum micro-batches;
b = batch_size / (dp x m) sequences per micro-batch; t = b x s tokens per micro-batch;
a = bytes per activation element of the compute dtype (train.dtype bfloat16: 2,
float32: 4); q = bytes per element of a quantized operand = (element bits + scale bits
/ group size) / 8 (mxfp8 8.25 bits, mxfp4 4.25, nvfp4 4.5; bf16 16).

Memory per GPU (bytes), for the pipeline stage that needs the most:
  params      P_rank x 4            P_rank = (TP-split params / tp + replicated params of
                                    the stage) / dp_shard; params are fp32 (the trainer
                                    autocasts, so the fp32 weight is AdamW's master copy)
  grads       P_rank x 4            fp32
  optimizer   P_rank x 8            AdamW/Adam exp_avg + exp_avg_sq fp32 (SGD momentum: 4)
              -> 16 bytes per param unsharded (1b: 16 x 1,109,626,880 = 17.75 GB)
  fsdp_buffers  only when dp_shard > 1: 2 x U x a + U x 4, U = the largest FSDP unit (a
              block, or the root: embedding / head) per TP rank: the unsharded compute
              -dtype params of the unit in use and the one prefetched, and its unsharded
              fp32 grads before the reduce-scatter
  activations  per micro-batch, saved for backward, per block and token:
              high precision  a x (2d + (nh hd + 2 nkv hd)/tp + nh hd/tp + 2F/tp)
                 (the two norm inputs, q/k/v for attention, its output, gate and up
                 outputs for SwiGLU's backward)
              Linear inputs kept for the weight gradient, in the wgrad_x format when the
              module is quantized (q) else a: d (wq/wk/wv) + d (gate/up) + F/tp (down),
              + nh hd/tp (wo, only when quantized: unquantized it is attention's output)
              head (last stage): t x (2d a + V/tp x (a + 4)): final norm and lm_head
              inputs, logits and the fp32 log-softmax of the loss
              without activation checkpointing: k x t x sum over the stage's blocks
              with (full, per block) checkpointing: k x t x L_s x d x a (block inputs)
                 + t x one block's activations (recomputed during its backward)
              k = micro-batches in flight: 1 without pp; 1F1B holds min(pp - stage, m)
  finetune.method = "lora" (nblab.finetune.finetune_memory): grads and optimizer state of
              the adapters only (r (in + out) per target linear); with base_format the
              blocks' linears are held packed (q bytes per weight) instead of fp32
  Not counted: CUDA context and allocator fragmentation (~1-3 GB; leave that margin),
  DDP gradient buckets, temporary GEMM workspaces. The quantized activations are what a
  fused low-precision kernel saves; nblab's fake-quant QuantLinear keeps its
  high-precision input as well, so it measures more than this.

Communication, bytes each GPU sends per step (ring collectives over n ranks: all-gather
and reduce-scatter send (n-1)/n x S, all-reduce 2 (n-1)/n x S, S the full tensor):
  fsdp        m x (2 x (n-1)/n x P_tp x a + (n-1)/n x P_tp x 4), n = dp_shard: params
              all-gathered for forward and again for backward, grads reduce-scattered in
              fp32, every micro-batch. P_tp = params per TP rank of the stage
  replicate   2 (n-1)/n x P_tp / dp_shard x 4, n = dp_replicate: one fp32 all-reduce of
              the (sharded) grads per step (DDP / HSDP), after the last micro-batch
  tp          m x L_s x (4 + 2 if checkpointing) x 2 (n-1)/n x t d a, n = tp: per block
              2 all-reduces forward (after wo, down) and 2 backward (inputs of wq/wk/wv
              and gate/up), plus the recomputed forward; plus 2 for embedding and head
  pp          m x 2 x t d a: each stage boundary sends activations forward and their
              gradients backward (point to point)

Step time (the ranking score, seconds), with Hardware's assumptions:
  compute     6 N_mm + 12 L d s FLOPs per token (ModelShape.flops_per_token) x tokens per step
              (x 4/3 with checkpointing) / gpus / (peak_flops x mfu)
  bubble      compute x (pp - 1) / m (GPipe / 1F1B)
  step        compute + bubble + tp/bw + pp/bw + max(0, (fsdp + replicate)/bw
              - dp_overlap x compute)
  bw is intra_node_bw when the group's ranks sit in one node (mesh order pp,
  dp_replicate, dp_shard, tp, tp innermost), inter_node_bw otherwise. Compute is
  counted at the bf16 peak for every precision: the planner compares layouts of one
  recipe, and precision changes memory, not which layout wins on communication.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nblab.finetune import finetune_memory
from nblab.models.protocol import COLWISE, ROWWISE
from nblab.parallel.dims import (
    DEFAULT_VOCAB_SIZE,
    LayoutContext,
    ParallelDims,
    context_from,
    quantized_roles,
)
from nblab_kernels.formats import SCALE_FORMATS

# ---------------------------------------------------------------------------
# Assumptions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    """What the step-time estimate assumes (defaults: an 8 x H100 SXM node)."""

    peak_flops: float = 989e12  # FLOP/s, dense bf16 tensor cores
    mfu: float = 0.4  # fraction of peak the GEMMs achieve
    intra_node_bw: float = 360e9  # bytes/s per GPU, NVLink (450 GB/s per direction, ~80%)
    inter_node_bw: float = 40e9  # bytes/s per GPU, 400 Gb/s InfiniBand (50 GB/s, ~80%)
    gpus_per_node: int = 8  # also the largest tp the planner tries
    dp_overlap: float = 1.0  # fraction of compute time that hides FSDP / DDP traffic


H100 = Hardware()

_STATE_BYTES = {"adamw": 8, "adam": 8, "sgd": 4}  # optimizer bytes per param (fp32 buffers)


def quant_bytes_per_element(spec: Any, activation_bytes: float) -> float:
    """Bytes per element of an operand stored in `spec`: element bits plus the scale's
    bits shared by its group (block: B elements, tile: B x B); tensor and row scales
    cost ~0 per element. None (high precision) -> activation_bytes."""
    if spec is None:
        return activation_bytes
    bits = spec.element_format.bits
    scale = SCALE_FORMATS[spec.scale]
    scale_bits = scale.storage_dtype.itemsize * 8 if scale.storage_dtype is not None else 0
    if spec.granularity == "block":
        bits += scale_bits / spec.block
    elif spec.granularity == "tile":
        bits += scale_bits / spec.block**2
    return bits / 8


# ---------------------------------------------------------------------------
# The estimate of one layout
# ---------------------------------------------------------------------------


@dataclass
class LayoutEstimate:
    """One layout: its degrees, whether it is valid and fits, the memory per GPU and the
    bytes sent per GPU per step by kind, the estimated step time (score, seconds; inf
    when rejected) and, for a rejected layout, why."""

    dims: ParallelDims
    valid: bool = True
    fits: bool = False
    memory: dict[str, float] = field(default_factory=dict)  # bytes per GPU
    comm: dict[str, float] = field(default_factory=dict)  # bytes sent per GPU per step
    times: dict[str, float] = field(default_factory=dict)  # seconds per step, by part
    score: float = math.inf  # estimated step time in seconds; lower is better
    reasons: list[str] = field(default_factory=list)
    rank: int | None = None  # 1 = best, None when rejected
    tokens_per_step: int = 0

    @property
    def memory_bytes(self) -> float:
        return self.memory.get("total", math.nan)

    @property
    def comm_bytes(self) -> float:
        return sum(self.comm.values()) if self.comm else math.nan

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.score if self.score < math.inf else 0.0

    @property
    def label(self) -> str:
        return str(self.dims)

    def row(self) -> dict[str, Any]:
        """Flat data for a DataFrame."""
        return {
            "rank": self.rank,
            "layout": self.label,
            **self.dims.degrees(),
            "valid": self.valid,
            "fits": self.fits,
            **{f"mem_{k}": v for k, v in self.memory.items()},
            **{f"comm_{k}": v for k, v in self.comm.items()},
            "comm_total": self.comm_bytes,
            "step_s": self.score,
            "tokens_per_s": self.tokens_per_s,
            "reasons": "; ".join(self.reasons),
        }


def _stage_blocks(n_layers: int, pp: int, stage: int) -> range:
    per = n_layers // pp
    return range(stage * per, (stage + 1) * per)


def estimate_layout(
    recipe: Any,
    dims: ParallelDims,
    gpu_mem_bytes: float,
    *,
    activation_checkpointing: bool = False,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    hardware: Hardware = H100,
    context: LayoutContext | None = None,
) -> LayoutEstimate:
    """Validate and estimate one layout for a Recipe (see the module docstring)."""
    ctx = context or context_from(recipe, vocab_size=vocab_size)
    est = LayoutEstimate(dims)
    problems = dims.problems(context=ctx)
    if problems:
        est.valid, est.reasons = False, problems
        return est
    cfg, preset = ctx.model, ctx.precision
    if not cfg.n_heads:
        raise ValueError(
            f"the planner needs the model's attention and MLP sizes, which a {cfg.kind} model "
            f"does not state; plan a gpt or hf model of the same size instead"
        )
    dtype = getattr(getattr(recipe, "train", None), "dtype", "bfloat16")
    optimizer = getattr(getattr(recipe, "optimizer", None), "name", "adamw")
    a = 2 if dtype == "bfloat16" else 4
    tp, pp, m = dims.tp, dims.pp, ctx.micro_batches
    d, F, hd, V = cfg.d_model, cfg.ffn_hidden, cfg.head_dim, cfg.vocab_size
    nh, nkv, L = cfg.n_heads, cfg.n_kv_heads, cfg.n_layers
    t = dims.local_batch(ctx) * ctx.seq_len  # tokens per micro-batch per rank
    est.tokens_per_step = ctx.batch_size * ctx.seq_len

    # a LoRA fine-tune: only adapters have grads and optimizer state; a packed base
    ft = finetune_memory(recipe, cfg, lambda spec: quant_bytes_per_element(spec, 4))

    # which modules are quantized, and the bytes/element of their saved wgrad input
    quantized = {s.name: quantized_roles(s, preset, cfg) for s in cfg.linears}
    wgrad_x_bytes = quant_bytes_per_element(preset.roles["wgrad_x"], a)

    by_block: dict[int, list] = {}
    for s in cfg.linears:
        if s.block is not None:
            by_block.setdefault(s.block, []).append(s)
    block_linear = sum(s.in_features * s.out_features for s in by_block.get(0, []))  # TP-split
    block_norms = 2 * d  # replicated
    block_params_tp = block_linear / tp + block_norms  # per TP rank

    def block_act(i: int) -> float:
        """Bytes saved for backward by block i per token (see the module docstring). The
        linears that read one input (q/k/v, gate/up: one parent, one in_features, one TP
        style) keep it once; the attention's output projection keeps its input only when
        quantized (unquantized it is the attention output, counted above)."""
        hp = a * (2 * d + (nh * hd + 2 * nkv * hd) / tp + nh * hd / tp + 2 * F / tp)
        inputs: dict[tuple, list] = {}
        for s in by_block.get(i, []):
            inputs.setdefault((s.name.rpartition(".")[0], s.in_features, s.style), []).append(s)
        lin = 0.0
        for (parent, n_in, style), members in inputs.items():
            quant = any(quantized[m.name] for m in members)
            attention_out = n_in == nh * hd and style != COLWISE and "attn" in parent
            if attention_out and not quant:
                continue
            local_in = n_in / tp if style == ROWWISE else n_in
            lin += (wgrad_x_bytes if quant else a) * local_in
        return hp + lin

    stages = []
    for stage in range(pp):
        blocks = _stage_blocks(L, pp, stage)
        first, last = stage == 0, stage == pp - 1
        root = (V * d / tp if first else 0) + (d if last else 0)  # embedding, final norm
        if last and (pp > 1 or not cfg.tie_embeddings):
            root += V * d / tp  # lm_head: its own tensor unless tied on one stage
        p_tp = len(blocks) * block_params_tp + root
        in_flight = min(pp - stage, m)
        per_block = [block_act(i) for i in blocks]
        if activation_checkpointing:
            act = in_flight * t * len(blocks) * d * a + t * max(per_block)
        else:
            act = in_flight * t * sum(per_block)
        if last:
            act += t * (2 * d * a + V / tp * (a + 4))
        p_rank = p_tp / dims.dp_shard
        mem = {
            "params": p_rank * 4,
            "grads": p_rank * 4,
            "optimizer": p_rank * _STATE_BYTES.get(optimizer, 8),
            "fsdp_buffers": 0.0,
            "activations": act,
        }
        if ft is not None:
            mem.update(ft.states(p_rank, _STATE_BYTES.get(optimizer, 8)))
        if dims.dp_shard > 1:
            unit = max(block_params_tp, root)
            mem["fsdp_buffers"] = 2 * unit * a + unit * 4
        mem["total"] = sum(mem.values())
        stages.append((mem, p_tp, len(blocks)))
    mem, p_tp, blocks_s = max(stages, key=lambda s: s[0]["total"])
    est.memory = mem
    est.fits = mem["total"] <= gpu_mem_bytes

    # communication, bytes sent per GPU per step
    def ring(n: int) -> float:
        return (n - 1) / n

    comm = {}
    if dims.dp_shard > 1:
        n = dims.dp_shard
        comm["fsdp"] = m * (2 * ring(n) * p_tp * a + ring(n) * p_tp * 4)
    if dims.dp_replicate > 1:
        comm["replicate"] = 2 * ring(dims.dp_replicate) * p_tp / dims.dp_shard * 4
    if tp > 1:
        per_block = 4 + (2 if activation_checkpointing else 0)
        n_ar = blocks_s * per_block + 2
        comm["tp"] = m * n_ar * 2 * ring(tp) * t * d * a
    if pp > 1:
        comm["pp"] = m * 2 * t * d * a
    est.comm = comm

    # step time
    hw, world = hardware, dims.world_size
    flops = cfg.flops_per_token(ctx.seq_len) * est.tokens_per_step
    if activation_checkpointing:
        flops *= 4 / 3  # forward recomputed: 2 + 4 -> 2 + 2 + 4 of every 6 FLOPs
    compute = flops / world / (hw.peak_flops * hw.mfu)

    def bw(stride: int, size: int) -> float:
        return hw.intra_node_bw if stride * size <= hw.gpus_per_node else hw.inter_node_bw

    times = {"compute": compute, "bubble": compute * (pp - 1) / m}
    times["tp"] = comm.get("tp", 0.0) / bw(1, tp)
    times["pp"] = comm.get("pp", 0.0) / bw(tp * dims.dp, pp)
    dp_time = comm.get("fsdp", 0.0) / bw(tp, dims.dp_shard)
    dp_time += comm.get("replicate", 0.0) / bw(tp * dims.dp_shard, dims.dp_replicate)
    times["dp_exposed"] = max(0.0, dp_time - hw.dp_overlap * compute)
    est.times = times
    if est.fits:
        est.score = sum(times.values())
    else:
        est.reasons = [
            f"does not fit: {_gb(mem['total'])} > {_gb(gpu_mem_bytes)} (params+grads+optimizer "
            f"{_gb(mem['params'] + mem['grads'] + mem['optimizer'])}, activations "
            f"{_gb(mem['activations'])}, fsdp buffers {_gb(mem['fsdp_buffers'])})"
        ]
    return est


# ---------------------------------------------------------------------------
# Enumerate and rank
# ---------------------------------------------------------------------------


def layouts(gpus: int, max_tp: int = 8) -> list[ParallelDims]:
    """Every (dp_replicate, dp_shard, tp, pp) with product == gpus and tp <= max_tp."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus={gpus!r} must be an integer >= 1")
    divs = [k for k in range(1, gpus + 1) if gpus % k == 0]
    out = []
    for tp in (k for k in divs if k <= max_tp):
        for pp in (k for k in divs if (gpus // tp) % k == 0):
            rest = gpus // (tp * pp)
            for rep in (k for k in divs if rest % k == 0):
                out.append(ParallelDims(rep, rest // rep, tp, pp, world_size=gpus))
    return out


def plan(
    recipe: Any,
    gpus: int,
    gpu_mem_bytes: float,
    *,
    top: int | None = None,
    activation_checkpointing: bool = False,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    hardware: Hardware = H100,
) -> list[LayoutEstimate]:
    """Every layout of `gpus` GPUs for `recipe`: first those that are valid, fit in
    `gpu_mem_bytes`, best first (rank 1..; at most `top` of them), then every rejected
    layout with its reasons (valid but too big, smallest first; then invalid ones)."""
    if not isinstance(gpu_mem_bytes, int | float) or not gpu_mem_bytes > 0:
        raise ValueError(f"gpu_mem_bytes={gpu_mem_bytes!r} must be a number of bytes > 0")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"top={top!r} must be an integer >= 1 or None")
    ctx = context_from(recipe, vocab_size=vocab_size)
    estimates = [
        estimate_layout(
            recipe,
            dims,
            gpu_mem_bytes,
            activation_checkpointing=activation_checkpointing,
            hardware=hardware,
            context=ctx,
        )
        for dims in layouts(gpus, hardware.gpus_per_node)
    ]
    ranked = sorted((e for e in estimates if e.fits), key=lambda e: (e.score, e.memory_bytes))
    for i, e in enumerate(ranked, 1):
        e.rank = i
    too_big = sorted((e for e in estimates if e.valid and not e.fits), key=lambda e: e.memory_bytes)
    invalid = [e for e in estimates if not e.valid]
    if top is not None:
        ranked = ranked[:top]
    return ranked + too_big + invalid


# ---------------------------------------------------------------------------
# Text output
# ---------------------------------------------------------------------------


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def format_plan(estimates: list[LayoutEstimate]) -> str:
    """A ranked table (GB = 1e9 bytes; comm = GB sent per GPU per step) and the rejected
    layouts with their reasons."""
    ranked = [e for e in estimates if e.rank is not None]
    rejected = [e for e in estimates if e.rank is None]
    lines = []
    if ranked:
        w = max(len("layout"), *(len(e.label) for e in ranked))
        head = (
            f"{'#':>2}  {'layout':<{w}} {'mem/GPU':>8} {'states':>8} {'activ.':>8} "
            f"{'comm/step':>9} {'step':>8} {'tokens/s':>9}"
        )
        lines += [head, "-" * len(head)]
        for e in ranked:
            states = e.memory["params"] + e.memory["grads"] + e.memory["optimizer"]
            lines.append(
                f"{e.rank:>2}  {e.label:<{w}} {e.memory_bytes / 1e9:>5.1f} GB "
                f"{states / 1e9:>5.1f} GB {e.memory['activations'] / 1e9:>5.1f} GB "
                f"{e.comm_bytes / 1e9:>6.1f} GB {_ms(e.score):>8} {e.tokens_per_s:>9,.0f}"
            )
    else:
        lines.append("no layout fits")
    if rejected:
        lines += ["", f"rejected ({len(rejected)}):"]
        for e in rejected:
            lines.append(f"  {e.label}: {e.reasons[0]}")
            lines += [f"  {' ' * len(e.label)}  {r}" for r in e.reasons[1:]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# nblab plan
# ---------------------------------------------------------------------------

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "t": 1e12,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?)\s*([a-z]*)\s*$", re.I)


def parse_bytes(text: str) -> float:
    """'80GB' -> 80e9, '80 GiB' -> 80 x 2^30, '80e9' -> 80e9 (GB, MB, ... are powers of
    1000; GiB, MiB, ... of 1024). ValueError names the value and what is accepted."""
    match = _SIZE.match(text) if isinstance(text, str) else None
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(
            f"{text!r} is not a memory size; accepted: a number with an optional unit B, KB, "
            f"MB, GB, TB, KiB, MiB, GiB, TiB (e.g. 80GB, '80 GiB', 80e9)"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if not value > 0:
        raise ValueError(f"{text!r} is not a memory size > 0")
    if not unit and value < 2**20:
        raise ValueError(f"{text!r} bytes is less than 1 MiB; did you mean {text}GB?")
    return value


def _load_recipe(source: str, overrides: list[str]):
    from nblab.recipe import RECIPE_PRESETS, Recipe

    if source in RECIPE_PRESETS and not Path(source).exists():
        recipe = Recipe.preset(source)
    else:
        recipe = Recipe.from_toml(Path(source))
    return recipe.with_overrides(overrides) if overrides else recipe


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def _mem(text: str) -> float:
    try:
        return parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nblab plan",
        description="Rank parallel layouts of a recipe for N GPUs by estimated step time; "
        "explain each rejected layout. Formulas: nblab/parallel/planner.py.",
    )
    p.add_argument("recipe", help="a recipe TOML file or a preset name")
    p.add_argument("--gpus", type=_positive_int, required=True, help="GPUs in all")
    p.add_argument("--gpu-mem", type=_mem, required=True, help="memory per GPU: 80GB, '80 GiB'")
    p.add_argument("--set", action="append", default=[], metavar="K=V", help="recipe override")
    p.add_argument("--top", type=_positive_int, default=None, help="show the best K layouts")
    p.add_argument(
        "--activation-checkpointing", "--ac", action="store_true", help="checkpoint every block"
    )
    p.add_argument(
        "--vocab", type=_positive_int, default=DEFAULT_VOCAB_SIZE, help="vocabulary size"
    )
    p.add_argument("--gpus-per-node", type=_positive_int, default=8, help="GPUs per node (max tp)")
    return p


def plan_command(argv: list[str]) -> int:
    """`nblab plan RECIPE --gpus N --gpu-mem 80GB [--set k=v ...] [--top K] [--ac]`.
    Prints the ranked table and the rejected layouts. Exit codes: 0 at least one layout
    fits, 1 none fits, 2 bad arguments or recipe."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse printed the error (or --help)
        return int(exit_.code or 0)
    from nblab.recipe import RecipeError

    try:
        recipe = _load_recipe(args.recipe, args.set)
        estimates = plan(
            recipe,
            args.gpus,
            args.gpu_mem,
            top=args.top,
            activation_checkpointing=args.activation_checkpointing,
            vocab_size=args.vocab,
            hardware=Hardware(gpus_per_node=args.gpus_per_node),
        )
    except (RecipeError, ValueError) as err:
        print(f"nblab plan: {err}", file=sys.stderr)
        return 2
    from nblab.models import describe

    flavour = describe(recipe.model)
    print(
        f"{recipe.name} ({flavour}, {recipe.precision.preset}, batch {recipe.train.batch_size} "
        f"x seq {recipe.train.seq_len}, grad_accum {recipe.train.grad_accum}"
        f"{', activation checkpointing' if args.activation_checkpointing else ''}) on "
        f"{args.gpus} GPUs with {_gb(args.gpu_mem)} each"
    )
    shape = context_from(recipe, vocab_size=args.vocab).model
    ft = finetune_memory(recipe, shape, lambda spec: quant_bytes_per_element(spec, 4))
    if ft is not None:
        print(ft.describe())
    print(format_plan(estimates))
    return 0 if any(e.fits for e in estimates) else 1


__all__ = [
    "H100",
    "Hardware",
    "LayoutEstimate",
    "estimate_layout",
    "format_plan",
    "layouts",
    "parse_bytes",
    "plan",
    "plan_command",
    "quant_bytes_per_element",
]
