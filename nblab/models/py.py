"""A person's own nn.Module behind nblab's model protocol.

    [model]
    name = "py"
    factory = "my_models:build"          # package.module:function, or path/to/file.py:function
    [model.config]                       # anything the factory reads
    d_model = 256

The factory is called as factory(model_table, vocab_size), where model_table is the
recipe's [model] table as a dict (its "config" entry holds [model.config]), and returns an
nn.Module whose forward(idx) takes token ids (B, T) and returns logits (B, T, V) (a tuple
whose first item, or an object whose .logits, is the logits also works). A batch job
imports the factory again, so it must be importable there: a module on the job's
PYTHONPATH, or a file given by a path (relative paths are taken from the current folder
when the recipe is validated and made absolute).

nblab finds the model's parts itself: its blocks are its longest nn.ModuleList, its head
the last Linear with vocab_size outputs, its embedding the nn.Embedding of vocab_size rows.
A module may name them instead, as class attributes: nblab_blocks, nblab_head,
nblab_embedding, nblab_final_norm (dotted paths), and may give a tensor-parallel plan,
nblab_tp_plan = {"attn.q": "colwise", "attn.o": "rowwise", ...} (block-relative paths;
its attention must then take its head count from the shapes, as view(B, T, -1, hd) does).
DDP and FSDP2 (one unit per block) need nothing more; pipeline stages are refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from nblab.models.protocol import (
    COLWISE,
    ROWWISE,
    Architecture,
    ModelShape,
    architecture,
    attach,
    count_params,
    linear_shapes,
)
from nblab.precision.linear import linear_shape

PP_PROBLEM = "a model of your own (model.name='py') cannot be split into pipeline stages"
_TP_STYLES = {"colwise": COLWISE, "rowwise": ROWWISE}


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable named by "package.module:function" or "path/to/file.py:function".
    ValueError says what could not be imported or found."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} is not 'package.module:function' or 'file.py:function'")
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{module_name!r}: no such file")
        name = f"nblab_factory_{path.stem}"
        module = sys.modules.get(name)
        if module is None or getattr(module, "__file__", None) != str(path):
            loader_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader_spec)
            try:
                loader_spec.loader.exec_module(module)
            except Exception as err:
                raise ValueError(f"{path} does not import: {type(err).__name__}: {err}") from None
            sys.modules[name] = module
    else:
        try:
            module = importlib.import_module(module_name)
        except Exception as err:
            raise ValueError(
                f"module {module_name!r} does not import: {type(err).__name__}: {err}"
            ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{module_name!r} has no function {attr!r}")
    return fn


def _longest_module_list(model: nn.Module) -> str:
    lists = [(len(m), name) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(
            f"{type(model).__name__} has no nn.ModuleList of blocks; keep its repeated blocks in "
            f"one (or name them with a class attribute nblab_blocks)"
        )
    return max(lists, key=lambda t: t[0])[1]


def _head(model: nn.Module, vocab_size: int) -> str:
    found = [
        name
        for name, m in model.named_modules()
        if (dims := linear_shape(m)) is not None and dims[1] == vocab_size
    ]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no Linear with vocab_size={vocab_size} outputs (its "
            f"head); return logits over the whole vocabulary, or name it with nblab_head"
        )
    return found[-1]


def _embedding(model: nn.Module, vocab_size: int) -> str:
    found = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Embedding) and m.num_embeddings == vocab_size
    ]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no nn.Embedding of vocab_size={vocab_size} rows; name "
            f"its token embedding with nblab_embedding"
        )
    return found[0]


def _tp_plan(model: nn.Module) -> tuple[dict[str, str], str]:
    declared = getattr(model, "nblab_tp_plan", None)
    if not declared:
        return {}, (
            f"{type(model).__name__} declares no tensor-parallel plan (a class attribute "
            f"nblab_tp_plan = {{'attn.q': 'colwise', 'attn.o': 'rowwise', ...}})"
        )
    bad = {k: v for k, v in declared.items() if v not in _TP_STYLES}
    if bad:
        raise ValueError(f"nblab_tp_plan {bad}: each style must be 'colwise' or 'rowwise'")
    return {k: _TP_STYLES[v] for k, v in declared.items()}, ""


def module_architecture(model: nn.Module, vocab_size: int) -> Architecture:
    """The Architecture of a module of one's own: declared parts, else found (module doc)."""
    plan, tp_problem = _tp_plan(model)
    return Architecture(
        blocks=getattr(model, "nblab_blocks", None) or _longest_module_list(model),
        embedding=getattr(model, "nblab_embedding", None) or _embedding(model, vocab_size),
        final_norm=getattr(model, "nblab_final_norm", None) or "",
        head=getattr(model, "nblab_head", None) or _head(model, vocab_size),
        tp_plan=plan,
        tp_problem=tp_problem,
        pp_problem=PP_PROBLEM,
    )


def from_module(model: nn.Module, vocab_size: int) -> nn.Module:
    """Give a module of one's own its Architecture (see the module doc); returns it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"the factory returned {type(model).__name__}, not an nn.Module")
    if getattr(model, "nblab_architecture", None) is not None:
        architecture(model)  # already carries one (a GPT, an HF model built by nblab)
        return model
    return attach(model, module_architecture(model, vocab_size))


def build(factory: str, table: dict[str, Any], vocab_size: int) -> nn.Module:
    return from_module(load_factory(factory)(table, vocab_size), vocab_size)


def shape(factory: str, table: dict[str, Any], vocab_size: int) -> ModelShape:
    """The ModelShape of a factory's model, built on the meta device. Its attention and MLP
    sizes are not known (0): the layout rules that need them are skipped, and the planner
    refuses such a model."""
    import torch

    with torch.device("meta"):
        model = build(factory, table, vocab_size)
    arch = architecture(model)
    n_params, n_lookup = count_params(model, arch)
    linears = linear_shapes(model, arch)
    n_blocks = len(model.get_submodule(arch.blocks))
    head = next((s for s in linears if s.name == arch.head), None)
    d = head.in_features if head is not None else 1
    return ModelShape(
        kind="py",
        d_model=d,
        n_layers=n_blocks,
        n_heads=0,
        n_kv_heads=0,
        head_dim=0,
        ffn_hidden=0,
        vocab_size=vocab_size,
        tie_embeddings=False,
        linears=linears,
        n_params=n_params,
        n_lookup_params=n_lookup,
        block_prefix=arch.block_prefix,
        head=arch.head,
        tp_problem=arch.tp_problem,
        pp_problem=arch.pp_problem,
    )


__all__ = ["build", "from_module", "load_factory", "module_architecture", "shape"]
