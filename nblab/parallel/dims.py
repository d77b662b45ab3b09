"""ParallelDims: the mesh degrees of one run, and the ONE place that validates them.

    dims = ParallelDims(dp_shard=-1, tp=2, world_size=8)   # dp_shard resolves to 4
    dims.validate(recipe)                                  # raises LayoutError listing all
    dims.mesh_shape()                                      # {"dp_shard": 4, "tp": 2}

Degrees, outermost to innermost in the device mesh: pp (pipeline stages), dp_replicate
(DDP / the replicate dim of HSDP), dp_shard (FSDP2), tp (tensor parallel, innermost so
that a TP group sits on neighbouring ranks of one node). dp = dp_replicate x dp_shard.

The model is known through the model protocol only (a ModelShape: nblab.models.protocol),
so every rule holds for the built-in GPT, a Hugging Face model and a module of one's own.
Rules (each message names the numbers that disagree):

- every degree is an integer >= 1 (dp_shard may be -1: "the rest of world_size");
- dp_replicate x dp_shard x tp x pp == world_size;
- tp > 1 needs a model with a tensor-parallel plan, pp > 1 one that splits into stages
  (the shape says why not);
- tp divides n_heads and n_kv_heads (each TP rank holds whole heads; this also splits
  d_model = n_heads x head_dim evenly, so d_model needs no rule of its own), and tp
  divides ffn_hidden (gate/up split out_features, down splits in_features);
- with sequence parallelism (a validate option), tp divides seq_len;
- train.batch_size is a multiple of dp x grad_accum (the local micro-batch is
  batch_size / (dp x grad_accum) sequences; with pp > 1 the grad_accum micro-batches are
  the pipeline's micro-batches);
- pp <= n_layers and pp divides n_layers (stages hold equal numbers of blocks);
- pp <= train.grad_accum: the pipeline's micro-batches are the grad_accum micro-batches,
  at least one per stage;
- precision: after sharding every quantized dimension is still a multiple of its block.
  Each linear's TP style (the model's block plan) says which dim TP splits:
  ColwiseParallel splits out_features by tp, RowwiseParallel splits in_features. A role's
  groups run along the GEMM's reduction dim (_ROLE_DIMS); a tile needs both of its dims.
  The token dim (local micro-batch x seq_len) is checked for the roles whose groups run
  along or across tokens (the weight-gradient GEMM reduces over tokens). Modules in high
  precision are exempt: kept by keep_high_precision (the head by default), or already
  unquantizable unsharded (then nblab.precision.apply_precision keeps them high too).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nblab.models.protocol import COLWISE, ROWWISE, LinearShape, ModelShape
from nblab.precision.plan import keeping_token
from nblab.precision.presets import (
    PRECISION_PRESETS,
    ROLES,
    PrecisionPreset,
    resolve_precision,
)

# The vocabulary the planner assumes when none is given: GPT-2's, the one the flavour
# table's parameter counts use. A recipe's dataset decides the real one (byte: 256).
DEFAULT_VOCAB_SIZE = 50257

# The dims of y = x W^T each role's quantization groups run along (the GEMM's reduction
# dim) and across (a tile's second dim): "in" / "out" features or "tokens". The same
# table as nblab.precision.plan._shape_problem, plus the token dim.
_ROLE_DIMS: dict[str, tuple[str, str]] = {
    "fwd_x": ("in", "tokens"),
    "fwd_w": ("in", "out"),
    "dgrad_dy": ("out", "tokens"),
    "dgrad_w": ("out", "in"),
    "wgrad_x": ("tokens", "in"),
    "wgrad_dy": ("tokens", "out"),
}

MESH_ORDER = ("pp", "dp_replicate", "dp_shard", "tp")


class LayoutError(ValueError):
    """Every problem of a layout at once; `.problems` is the list of messages."""

    def __init__(self, dims: ParallelDims, problems: list[str]):
        self.dims = dims
        self.problems = list(problems)
        n = len(self.problems)
        head = f"invalid parallel layout {dims} ({n} problem{'s' if n != 1 else ''}):"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in self.problems))


def group_dims(role: str, spec: Any) -> list[tuple[str, int, str]]:
    """(dim, size that must divide it, what) for the groups of `spec` in `role`: the dim
    its blocks run along, a tile's second dim, a Hadamard transform's dim. [] for a
    high-precision role, a padded spec, or tensor/row scales (no block)."""
    if spec is None or spec.is_cast or spec.padding == "pad" or spec.block is None:
        return []
    along, across = _ROLE_DIMS[role]
    b = spec.block
    if spec.granularity == "tile":
        out = [(along, b, f"tile {b}x{b}"), (across, b, f"tile {b}x{b}")]
    else:
        out = [(along, b, f"block {b}")]
    if spec.hadamard:
        out.append((along, spec.hadamard, f"hadamard {spec.hadamard}"))
    return out


def quantized_roles(linear: LinearShape, preset: PrecisionPreset, model: ModelShape) -> bool:
    """Whether apply_precision would quantize this module: the preset quantizes something,
    no keep_high_precision entry keeps it, and its unsharded in/out dims fit every block
    (the token dim is not part of that decision, as in nblab.precision.plan)."""
    if preset.is_high_precision or keeping_token(
        linear.name, preset, model.n_layers, model.block_prefix, model.head
    ):
        return False
    sizes = {"in": linear.in_features, "out": linear.out_features}
    for role in ROLES:
        for dim, b, _ in group_dims(role, preset.roles[role]):
            if dim in sizes and sizes[dim] % b:
                return False
    return True


# ---------------------------------------------------------------------------
# The context a layout is validated against
# ---------------------------------------------------------------------------


@dataclass
class LayoutContext:
    """What validation needs from a recipe; every part is optional (None: its rules are
    skipped). `model` is the model's ModelShape (nblab.models.protocol)."""

    model: ModelShape | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    grad_accum: int | None = None  # None: unknown (the pipeline rule is skipped)
    precision: PrecisionPreset | None = None
    sequence_parallel: bool = False

    @property
    def micro_batches(self) -> int:
        """train.grad_accum, 1 when unknown."""
        return self.grad_accum or 1


def _shape(model: Any, vocab_size: int, seq_len: int) -> ModelShape:
    """A ModelShape from a ModelShape, or from what describes one through nblab.models: a
    [model] section (or a mapping of its fields), a gpt flavour name, or a dict of GPTConfig
    fields (d_model, n_layers, ...; the convenient form for layout studies)."""
    if isinstance(model, ModelShape):
        return model
    from nblab.models import model_shape  # the registry: it imports a kind when used

    if isinstance(model, str):
        model = {"name": "gpt", "flavour": model}
    elif isinstance(model, Mapping) and "name" not in model:
        model = {"name": "gpt", "config": dict(model)}
    return model_shape(model, vocab_size, seq_len)


def context_from(recipe: Any = None, **parts: Any) -> LayoutContext:
    """A LayoutContext from a Recipe (its model, train batch/seq/grad_accum, precision
    section) and/or keyword parts: model (a ModelShape, a [model] section, a gpt flavour
    name or a dict of GPTConfig fields; `config` is the same part), batch_size, seq_len,
    grad_accum, precision (preset name, PrecisionPreset or [precision] section),
    vocab_size, sequence_parallel. Parts override what the recipe says."""
    values: dict[str, Any] = {}
    vocab_size = parts.pop("vocab_size", DEFAULT_VOCAB_SIZE)
    if "config" in parts:
        parts["model"] = parts.pop("config")
    if isinstance(recipe, Mapping):
        parts = {**recipe, **parts}
        recipe = None
    if recipe is not None:
        if "model" not in parts:
            values["model"] = _shape(recipe.model, vocab_size, recipe.train.seq_len)
        values["batch_size"] = recipe.train.batch_size
        values["seq_len"] = recipe.train.seq_len
        values["grad_accum"] = recipe.train.grad_accum
        values["precision"] = resolve_precision(recipe.precision)
    unknown = set(parts) - {f.name for f in dataclasses.fields(LayoutContext)}
    if unknown:
        raise ValueError(
            f"unknown layout part {sorted(unknown)[0]!r}; accepted: model (or config), "
            f"batch_size, seq_len, grad_accum, precision, vocab_size, sequence_parallel"
        )
    values.update(parts)
    if values.get("model") is not None:
        values["model"] = _shape(values["model"], vocab_size, values.get("seq_len") or 2048)
    precision = values.get("precision")
    if isinstance(precision, str):
        if precision not in PRECISION_PRESETS:
            raise ValueError(
                f"precision={precision!r} is unknown; accepted: {', '.join(PRECISION_PRESETS)}"
            )
        values["precision"] = PRECISION_PRESETS[precision]
    elif precision is not None and not isinstance(precision, PrecisionPreset):
        values["precision"] = resolve_precision(precision)
    return LayoutContext(**values)


# ---------------------------------------------------------------------------
# ParallelDims
# ---------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of one layout. dp_shard=-1 takes the rest of world_size (resolved here
    when world_size is a multiple of the other degrees; validate() reports it otherwise).
    world_size=None means the product of the degrees."""

    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    world_size: int | None = None

    def __post_init__(self) -> None:
        others = (self.dp_replicate, self.tp, self.pp)
        if not all(_is_int(v) and v >= 1 for v in others):
            return  # validate() names the bad degree
        if self.dp_shard == -1 and _is_int(self.world_size) and self.world_size >= 1:
            rest = math.prod(others)
            if self.world_size % rest == 0:
                object.__setattr__(self, "dp_shard", self.world_size // rest)
        elif self.world_size is None and _is_int(self.dp_shard) and self.dp_shard >= 1:
            object.__setattr__(self, "world_size", math.prod(others) * self.dp_shard)

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_recipe(cls, recipe: Any, world_size: int | None = None) -> ParallelDims:
        """The [parallel] section's degrees; world_size defaults to parallel.nproc."""
        p = recipe.parallel
        return cls(p.dp_replicate, p.dp_shard, p.tp, p.pp, world_size or p.nproc)

    # -- derived ------------------------------------------------------------------
    @property
    def dp(self) -> int:
        """Data-parallel degree: dp_replicate x dp_shard (the batch splits this many ways)."""
        return self.dp_replicate * self.dp_shard

    @property
    def fsdp(self) -> bool:
        return self.dp_shard > 1

    def degrees(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in MESH_ORDER}

    def mesh_shape(self) -> OrderedDict[str, int]:
        """Named mesh dims with size > 1, outermost first (pp, dp_replicate, dp_shard, tp),
        for init_device_mesh(device, tuple(shape.values()), mesh_dim_names=tuple(shape))."""
        return OrderedDict((k, v) for k, v in self.degrees().items() if v > 1)

    def __str__(self) -> str:
        shape = [f"{k} {v}" for k, v in self.mesh_shape().items()]
        return " x ".join(shape) if shape else "single process"

    # -- validation -----------------------------------------------------------------
    def problems(self, recipe: Any = None, /, **parts: Any) -> list[str]:
        """Every problem of this layout for a recipe and/or parts (see context_from);
        [] when it is valid. With neither, only the degrees and their product are checked."""
        ctx = parts.pop("context", None) or context_from(recipe, **parts)
        out = self._degree_problems()
        if self.dp_shard == -1 or not all(
            _is_int(v) and v >= 1 for v in (*self.degrees().values(), self.world_size)
        ):
            return out  # the other rules need whole degrees
        out += self._model_problems(ctx)
        out += self._batch_problems(ctx)
        out += self._pipeline_problems(ctx)
        out += self._precision_problems(ctx)
        return out

    def validate(self, recipe: Any = None, /, **parts: Any) -> ParallelDims:
        """Raise one LayoutError listing every problem; return self when valid."""
        problems = self.problems(recipe, **parts)
        if problems:
            raise LayoutError(self, problems)
        return self

    def _degree_problems(self) -> list[str]:
        out = []
        for name in ("dp_replicate", "tp", "pp"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                out.append(f"{name} {v!r} must be an integer >= 1")
        ws = self.world_size
        if not _is_int(ws) or ws < 1:
            out.append(f"world_size {ws!r} must be an integer >= 1")
        if not _is_int(self.dp_shard) or (self.dp_shard < 1 and self.dp_shard != -1):
            out.append(f"dp_shard {self.dp_shard!r} must be an integer >= 1, or -1 for the rest")
        if out:
            return out
        others = self.dp_replicate * self.tp * self.pp
        if self.dp_shard == -1:
            return [
                f"dp_shard -1 (the rest) cannot be resolved: world_size {ws} is not a multiple "
                f"of dp_replicate {self.dp_replicate} x tp {self.tp} x pp {self.pp} = {others}"
            ]
        product = others * self.dp_shard
        if product != ws:
            out.append(
                f"dp_replicate {self.dp_replicate} x dp_shard {self.dp_shard} x tp {self.tp} "
                f"x pp {self.pp} = {product}, but world_size is {ws}"
            )
        return out

    def _model_problems(self, ctx: LayoutContext) -> list[str]:
        m, tp, pp, out = ctx.model, self.tp, self.pp, []
        if m is not None:
            if tp > 1 and m.tp_problem:
                out.append(f"tp {tp}: {m.tp_problem}")
            if pp > 1 and m.pp_problem:
                out.append(f"pp {pp}: {m.pp_problem}")
            # (0: a size the model's shape does not know; its rule is skipped)
            if m.n_heads and m.n_heads % tp:
                out.append(
                    f"tp {tp} does not divide n_heads {m.n_heads} (each TP rank holds whole "
                    f"query heads; tp in {_divisors(m.n_heads)})"
                )
            if m.n_kv_heads and m.n_kv_heads % tp:
                out.append(
                    f"tp {tp} does not divide n_kv_heads {m.n_kv_heads} (the key/value "
                    f"projections are split by heads; tp in {_divisors(m.n_kv_heads)})"
                )
            if m.ffn_hidden and m.ffn_hidden % tp:
                out.append(
                    f"tp {tp} does not divide ffn_hidden {m.ffn_hidden} (the MLP's first "
                    f"projections split out_features, its last in_features; tp in "
                    f"{_divisors(m.ffn_hidden)})"
                )
            if pp > m.n_layers:
                out.append(
                    f"pp {pp} stages > n_layers {m.n_layers}: each stage needs at least one block"
                )
            elif m.n_layers % pp:
                split = _split(m.n_layers, pp)
                out.append(
                    f"pp {pp} does not divide n_layers {m.n_layers} (stages would hold "
                    f"{'+'.join(map(str, split))} blocks); pp in {_divisors(m.n_layers)}"
                )
        if ctx.sequence_parallel and ctx.seq_len is not None and ctx.seq_len % tp:
            out.append(
                f"seq_len {ctx.seq_len} is not a multiple of tp {tp} (sequence parallelism "
                f"splits the sequence across the TP ranks)"
            )
        return out

    def _batch_problems(self, ctx: LayoutContext) -> list[str]:
        if ctx.batch_size is None:
            return []
        micro = self.dp * ctx.micro_batches
        if ctx.batch_size % micro == 0:
            return []
        return [
            f"train.batch_size {ctx.batch_size} is not a multiple of dp {self.dp} (dp_replicate "
            f"{self.dp_replicate} x dp_shard {self.dp_shard}) x grad_accum {ctx.micro_batches} "
            f"= {micro}: each rank's micro-batch must be a whole number of sequences"
        ]

    def _pipeline_problems(self, ctx: LayoutContext) -> list[str]:
        if self.pp == 1 or ctx.grad_accum is None or ctx.grad_accum >= self.pp:
            return []
        return [
            f"train.grad_accum {ctx.grad_accum} < pp {self.pp}: the pipeline's micro-batches "
            f"are the grad_accum micro-batches, at least one per stage (set "
            f"train.grad_accum >= {self.pp})"
        ]

    def local_batch(self, ctx: LayoutContext) -> int | None:
        """Sequences per micro-batch on one rank, or None when it is not whole."""
        micro = self.dp * ctx.micro_batches
        if ctx.batch_size is None or ctx.batch_size % micro:
            return None
        return ctx.batch_size // micro

    def _precision_problems(self, ctx: LayoutContext) -> list[str]:
        preset, model = ctx.precision, ctx.model
        if preset is None or model is None or preset.is_high_precision:
            return []
        micro = self.local_batch(ctx)
        tokens = micro * ctx.seq_len if micro is not None and ctx.seq_len is not None else None
        # (suffix, dim, full, local, what, style) -> [(module, role)], to list a repeated
        # problem once with the blocks it occurs in
        found: dict[tuple, list[tuple[str, str]]] = {}
        token_found: dict[str, list[str]] = {}
        for shape in model.linears:
            if not quantized_roles(shape, preset, model):
                continue
            local_in, local_out = shape.local(self.tp)
            full = {"in": shape.in_features, "out": shape.out_features}
            local = {"in": local_in, "out": local_out}
            for role in ROLES:
                for dim, b, what in group_dims(role, preset.roles[role]):
                    if dim == "tokens":
                        if tokens is not None and tokens % b:
                            token_found.setdefault(f"{what}|{b}", []).append(role)
                        continue
                    if local[dim] == full[dim] or full[dim] % self.tp or local[dim] % b == 0:
                        continue  # unsharded, or not evenly split (a model rule says so)
                    suffix = ""
                    if shape.block is not None:  # the name within its block
                        suffix = shape.name[len(f"{model.block_prefix}{shape.block}.") :]
                    key = (suffix or shape.name, dim, full[dim], local[dim], what, shape.style)
                    found.setdefault(key, []).append((shape.name, role))
        out = []
        for (_, dim, full_n, local_n, what, style), hits in found.items():
            modules = list(dict.fromkeys(m for m, _ in hits))
            roles = list(dict.fromkeys(r for _, r in hits))
            msg = (
                f"{modules[0]}: {dim}_features {full_n} / tp {self.tp} = {local_n} is not a "
                f"multiple of {preset.name} {what} ({', '.join(roles)}, {style})"
            )
            if len(modules) > 1:
                blocks = [model.block_of(m) for m in modules[1:]]
                msg += f"; also in layers {_ranges(blocks)}"
            out.append(msg)
        for key, roles in token_found.items():
            what = key.split("|")[0]
            roles = list(dict.fromkeys(roles))
            out.append(
                f"tokens per micro-batch: local batch {micro} x seq_len {ctx.seq_len} = "
                f"{tokens} is not a multiple of {preset.name} {what} ({', '.join(roles)}: "
                f"the weight-gradient GEMM reduces over tokens)"
            )
        return out


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _split(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _ranges(values: list[int | None]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    nums = sorted(v for v in values if v is not None)
    out: list[str] = []
    start = prev = None
    for v in [*nums, None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = v
    return ", ".join(out)


__all__ = [
    "COLWISE",
    "DEFAULT_VOCAB_SIZE",
    "MESH_ORDER",
    "ROWWISE",
    "LayoutContext",
    "LayoutError",
    "ParallelDims",
    "context_from",
    "group_dims",
    "quantized_roles",
]
