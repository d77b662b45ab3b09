"""The model protocol: what the trainer, the precision plan, the parallel runtime, the
planner and checkpoints ask of a model. Every model nblab trains answers through it, so
the built-in GPT, a Hugging Face causal LM and a person's own module get the same
presets and layouts, and nothing else in nblab knows which one it is training.

A built model is a plain nn.Module (its parameter names are its own: a Hugging Face
checkpoint keeps Hugging Face's names) that carries an `Architecture`:

    arch = architecture(model)        # where its parts are, what parallel plans it takes
    logits = arch.logits(model, idx)  # (B, T) token ids -> (B, T, V)
    loss = lm_loss(logits, targets)   # mean cross entropy over targets != IGNORE_INDEX
    blocks(model)                     # the repeated blocks, in order (FSDP units, PP stages)

and whose config alone (built on the meta device, nothing allocated) gives a `ModelShape`:
its dimensions, every quantizable linear with the tensor-parallel style its block plan
gives it, and its parameter and FLOP counts. nblab.models builds both for each kind of
model (gpt, hf, py); this module imports none of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nblab.precision.linear import linear_shape

IGNORE_INDEX = -100  # targets equal to this are left out of the loss
COLWISE, ROWWISE = "ColwiseParallel", "RowwiseParallel"
TP_STYLES = (COLWISE, ROWWISE)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of logits (B, T, V) against targets (B, T), in fp32, over the
    targets != IGNORE_INDEX (NaN when every target is masked)."""
    B, T = targets.shape
    return F.cross_entropy(
        logits.float().reshape(B * T, -1), targets.reshape(B * T), ignore_index=IGNORE_INDEX
    )


# ---------------------------------------------------------------------------
# A built model
# ---------------------------------------------------------------------------


def _call_logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The logits of a module whose forward(idx) returns them (or an output that holds
    them: a tuple's first item, an object's .logits)."""
    out = model(idx)
    if isinstance(out, tuple):
        out = out[0]
    return getattr(out, "logits", out)


@dataclass(frozen=True)
class Architecture:
    """Where a model keeps its parts (dotted attribute paths from the root module) and
    which parallel plans it takes.

    tp_plan: block-relative module path -> COLWISE / ROWWISE, applied to every block;
    empty when the model has no TP plan, and tp_problem says why. tp_divided: block-relative
    integer attributes that count attention heads and so become the local counts under
    TP (divided by tp); empty when the attention infers its heads from the shapes.
    stage_forward(model, x): the forward of one pipeline stage (token ids or hidden states
    in, hidden states or logits out) over the blocks listed in model.pp_blocks; None when
    the model cannot be split into stages, and pp_problem says why."""

    blocks: str
    embedding: str
    final_norm: str
    head: str
    logits: Callable[[nn.Module, torch.Tensor], torch.Tensor] = _call_logits
    tp_plan: Mapping[str, str] = field(default_factory=dict)
    tp_problem: str = ""
    tp_divided: tuple[str, ...] = ()
    stage_forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    pp_problem: str = ""

    @property
    def block_prefix(self) -> str:
        """The name prefix of block i's modules is f"{block_prefix}{i}."."""
        return f"{self.blocks}."


ARCHITECTURE_ATTR = "nblab_architecture"


def architecture(model: nn.Module) -> Architecture:
    """The Architecture a model was built with (nblab.models sets it)."""
    arch = getattr(model, ARCHITECTURE_ATTR, None)
    if not isinstance(arch, Architecture):
        raise TypeError(
            f"{type(model).__name__} carries no nblab Architecture: build it with "
            f"nblab.models.build_model, or wrap a module of your own with "
            f"nblab.models.from_module(module)"
        )
    return arch


def attach(model: nn.Module, arch: Architecture) -> nn.Module:
    """Give `model` its Architecture, after checking that each part is where it says."""
    for what in ("blocks", "embedding", "final_norm", "head"):
        path = getattr(arch, what)
        if not path and what == "final_norm":
            continue  # a module of one's own may not say (only pipeline stages need it)
        try:
            model.get_submodule(path)
        except AttributeError:
            raise ValueError(
                f"{type(model).__name__} has no module {path!r} (its {what}); "
                f"top-level modules: {[n for n, _ in model.named_children()]}"
            ) from None
    if not isinstance(model.get_submodule(arch.blocks), nn.ModuleList):
        raise ValueError(f"{type(model).__name__}.{arch.blocks} (its blocks) is not a ModuleList")
    object.__setattr__(model, ARCHITECTURE_ATTR, arch)  # a plain attribute, not a submodule
    return model


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(architecture(model).blocks)


def get_part(model: nn.Module, path: str) -> nn.Module | None:
    """The module at a dotted path, or None (a pipeline stage drops what it does not own)."""
    parent_path, _, name = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_path) if parent_path else model
    except AttributeError:
        return None
    return getattr(parent, name, None)


def set_part(model: nn.Module, path: str, module: nn.Module | None) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def tied_weights(model: nn.Module) -> dict[str, str]:
    """{head weight name: embedding weight name} when the head and the embedding share
    one tensor (tied embeddings), else {}."""
    arch = architecture(model)
    head, embedding = get_part(model, arch.head), get_part(model, arch.embedding)
    if head is None or embedding is None:
        return {}
    if getattr(head, "weight", None) is getattr(embedding, "weight", False):
        return {f"{arch.head}.weight": f"{arch.embedding}.weight"}
    return {}


@torch.no_grad()
def greedy_generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Append max_new_tokens argmax tokens to idx (B, T0) -> (B, T0 + max_new_tokens). No
    KV cache: the whole context is re-read each step (the prompts here are short). A
    module without an Architecture is called for its logits."""
    arch = getattr(model, ARCHITECTURE_ATTR, None)
    logits_of = arch.logits if isinstance(arch, Architecture) else _call_logits
    for _ in range(max_new_tokens):
        logits = logits_of(model, idx)  # (B, T, V)
        nxt = logits[:, -1, :].float().argmax(dim=-1, keepdim=True)  # (B, 1)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


# ---------------------------------------------------------------------------
# A model's shape, from its config alone
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearShape:
    """One quantizable linear (nn.Linear or Conv1D) as TP sees it: its name in the model,
    its dims, the TP style its block plan gives it (None: replicated), its block index
    (None outside the blocks)."""

    name: str
    in_features: int
    out_features: int
    style: str | None
    block: int | None

    def local(self, tp: int) -> tuple[int, int]:
        """(in_features, out_features) on one TP rank (before any divisibility check)."""
        if self.style == ROWWISE:
            return self.in_features // tp, self.out_features
        if self.style == COLWISE:
            return self.in_features, self.out_features // tp
        return self.in_features, self.out_features


@dataclass(frozen=True)
class ModelShape:
    """What validation and the planner need from a model, from its config alone.

    n_params counts each tensor once; n_lookup_params are the parameters used only as
    lookup tables (an untied token embedding, position embeddings), left out of the
    6 N FLOPs per token. A tied embedding is also the head's matmul and stays counted.
    A dimension nblab cannot know (the heads of a module of one's own) is 0: the rules
    and estimates that need it are skipped or refused."""

    kind: str  # e.g. "gpt", "hf llama", "py"
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_hidden: int
    vocab_size: int
    tie_embeddings: bool
    linears: tuple[LinearShape, ...]
    n_params: int
    n_lookup_params: int
    block_prefix: str
    head: str = "lm_head"
    max_seq_len: int | None = None
    tp_problem: str = ""
    pp_problem: str = ""

    @property
    def n_matmul_params(self) -> int:
        return self.n_params - self.n_lookup_params

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward), as in PaLM appendix B / nanoGPT:
        6 N + 12 n_layers (n_heads head_dim) seq_len, N the matmul parameters. The
        attention term counts q k^T and att v over the full T x T square."""
        attn = self.n_layers * self.n_heads * self.head_dim * seq_len
        return 6 * self.n_matmul_params + 12 * attn

    def block_of(self, name: str) -> int | None:
        return block_index(name, self.block_prefix)


def block_index(name: str, prefix: str) -> int | None:
    """The block index i of a module named f"{prefix}{i}...", else None."""
    if not name.startswith(prefix):
        return None
    head = name[len(prefix) :].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def linear_shapes(model: nn.Module, arch: Architecture) -> tuple[LinearShape, ...]:
    """Every quantizable linear of `model` (meta or real: nn.Linear or Conv1D, as
    nblab.precision.linear.linear_shape says), in module order, with the TP style of
    arch.tp_plan."""
    prefix = arch.block_prefix
    out = []
    for name, module in model.named_modules():
        dims = linear_shape(module)
        if dims is None:
            continue
        block = block_index(name, prefix)
        style = None
        if block is not None:
            suffix = name[len(f"{prefix}{block}.") :]
            style = arch.tp_plan.get(suffix)
        elif name == arch.head:
            style = COLWISE  # a vocab-parallel head, as the planner assumes
        out.append(LinearShape(name, dims[0], dims[1], style, block))
    return tuple(out)


def count_params(model: nn.Module, arch: Architecture) -> tuple[int, int]:
    """(parameters, lookup-only parameters) of a model, each tensor counted once: the
    embedding unless tied to the head, and any other nn.Embedding (positions)."""
    n = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    head = get_part(model, arch.head)
    head_weight = getattr(head, "weight", None)
    lookup = sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, nn.Embedding) and m.weight is not head_weight
    )
    return n, lookup


def freeze(value: Any) -> Any:
    """A hashable copy of TOML-like data (dicts -> sorted tuples of pairs, lists -> tuples),
    for caching by a section's contents; thaw() gives the data back."""
    if isinstance(value, Mapping):
        return ("__dict__", tuple(sorted((str(k), freeze(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("__list__", tuple(freeze(v) for v in value))
    return value


def thaw(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__dict__":
        return {k: thaw(v) for k, v in value[1]}
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__list__":
        return [thaw(v) for v in value[1]]
    return value


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(text: str) -> bool:
    """'meta-llama/Llama-3.1-8B' (owner/name, no such local path): a hub id."""
    return bool(_HUB_ID.match(text))


__all__ = [
    "ARCHITECTURE_ATTR",
    "COLWISE",
    "IGNORE_INDEX",
    "ROWWISE",
    "TP_STYLES",
    "Architecture",
    "LinearShape",
    "ModelShape",
    "architecture",
    "attach",
    "block_index",
    "blocks",
    "count_params",
    "freeze",
    "get_part",
    "greedy_generate",
    "linear_shapes",
    "lm_loss",
    "looks_like_hub_id",
    "set_part",
    "thaw",
    "tied_weights",
]
