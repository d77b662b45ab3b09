"""Models behind one protocol (nblab.models.protocol): the built-in GPT, Hugging Face
causal LMs, and a module of one's own, chosen by the recipe's [model] section.

    model = build_model(recipe.model, vocab_size=ds.vocab_size, max_seq_len=256)
    shape = model_shape(recipe.model, vocab_size=50257, max_seq_len=4096)  # config only

MODEL_KINDS registers each kind by name; its module is imported when the kind is used,
so a recipe of the built-in GPT never imports transformers.

    name = "gpt"   flavour (a key of gpt.FLAVOURS), tie_embeddings, [model.config]: any
                   GPTConfig field over the flavour's (n_layers = 3, ...)
    name = "hf"    path (a local checkpoint folder) or architecture (a transformers
                   model_type, random init), [model.config]: fields of its config class
    name = "py"    factory ("package.module:function" or "file.py:function"),
                   [model.config]: whatever the factory reads
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

from torch import nn

from nblab.models.protocol import ModelShape, freeze, thaw

Problem = tuple[str, Any, str]  # as nblab.recipe.Problem

# name -> the module that builds it (imported on first use)
MODEL_KINDS: dict[str, str] = {
    "gpt": "nblab.models.gpt",
    "hf": "nblab.models.hf",
    "py": "nblab.models.py",
}
# the [model] fields each kind reads (the others are left at their defaults)
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "gpt": ("flavour", "tie_embeddings", "config"),
    "hf": ("path", "architecture", "config"),
    "py": ("factory", "config"),
}


@dataclass(frozen=True)
class _Section:
    """The [model] fields as plain data (a ModelSection, or a mapping of its fields)."""

    name: str = "gpt"
    flavour: str = "tiny"
    tie_embeddings: bool = True
    config: Any = ("__dict__", ())  # [model.config], frozen (hashable)
    path: str = ""
    architecture: str = ""
    factory: str = ""

    @classmethod
    def of(cls, section: Any) -> _Section:
        data = asdict(section) if is_dataclass(section) else dict(section)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["config"] = freeze(dict(known.get("config") or {}))
        return cls(**known)

    @property
    def fields(self) -> dict[str, Any]:
        return thaw(self.config)

    def table(self) -> dict[str, Any]:
        """The [model] table a py factory receives."""
        out = asdict(self)
        out["config"] = self.fields
        return out


def describe(section: Any) -> str:
    """A few words for a [model] section: gpt-tiny, hf llama, hf /models/qwen, py m:build."""
    s = _Section.of(section)
    if s.name == "gpt":
        return f"gpt-{s.flavour}"
    if s.name == "hf":
        return f"hf {s.path or s.architecture}"
    return f"py {s.factory}"


def _kind(name: str):
    if name not in MODEL_KINDS:
        raise ValueError(f"model.name={name!r} is not a model kind; accepted: {list(MODEL_KINDS)}")
    return importlib.import_module(MODEL_KINDS[name])


def build_model(
    section: Any, vocab_size: int, max_seq_len: int, *, weights: bool = True
) -> nn.Module:
    """The model a [model] section describes, with its Architecture attached. Seed torch's
    RNG first: a randomly initialised model draws from it. weights=False skips loading a
    checkpoint's weights (to plan a model under torch.device("meta"))."""
    s = _Section.of(section)
    kind = _kind(s.name)
    if s.name == "gpt":
        cfg = kind.gpt_config(
            s.flavour, vocab_size, max_seq_len, tie_embeddings=s.tie_embeddings, **s.fields
        )
        return kind.GPT(cfg)
    if s.name == "hf":
        config, folder = _hf_config(s, vocab_size, max_seq_len)
        return kind.build(config, folder if weights else None)
    return kind.build(s.factory, s.table(), vocab_size)


_SHAPES: dict[tuple, ModelShape] = {}


def model_shape(section: Any, vocab_size: int, max_seq_len: int) -> ModelShape:
    """The ModelShape of a [model] section, from its config alone (a model built on the
    meta device; nothing is allocated). Cached."""
    s = _Section.of(section)
    key = (s, vocab_size, max_seq_len)
    if key not in _SHAPES:
        kind = _kind(s.name)
        if s.name == "gpt":
            cfg = kind.gpt_config(
                s.flavour, vocab_size, max_seq_len, tie_embeddings=s.tie_embeddings, **s.fields
            )
            shape = kind.gpt_shape(cfg)
        elif s.name == "hf":
            shape = kind.shape(_hf_config(s, vocab_size, max_seq_len)[0])
        else:
            shape = kind.shape(s.factory, s.table(), vocab_size)
        _SHAPES[key] = shape
    return _SHAPES[key]


def shape_of(model: nn.Module, vocab_size: int) -> ModelShape | None:
    """The ModelShape of a model built elsewhere (a module handed to the trainer), when it
    is one of nblab's kinds; None otherwise."""
    from nblab.models.gpt import GPT, gpt_shape

    if isinstance(model, GPT):
        return gpt_shape(model.config)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "model_type", None):
        from nblab.models import hf

        return hf.shape(config)
    return None


def _hf_config(s: _Section, vocab_size: int, max_seq_len: int):
    from nblab.models import hf

    config = hf.build_config(path=s.path, architecture=s.architecture, fields=s.fields)
    folder = hf.checkpoint_folder(s.path) if s.path else None
    from_checkpoint = folder is not None and bool(hf.weight_files(folder))
    positions = hf.max_positions(config)
    if positions is not None and max_seq_len > positions:
        raise ValueError(
            f"train.seq_len {max_seq_len} is longer than the model's {positions} learned "
            f"positions (n_positions)"
        )
    return hf.with_vocab(config, vocab_size, max_seq_len, from_checkpoint), folder


def embedding_rows(section: Any) -> int | None:
    """The vocabulary a model keeps whatever the tokenizer says (an HF checkpoint with
    weights: its embedding's rows); None when the vocabulary follows the tokenizer."""
    s = _Section.of(section)
    if s.name != "hf" or not s.path:
        return None
    from nblab.models import hf

    folder = hf.checkpoint_folder(s.path)
    if not hf.weight_files(folder):
        return None
    return int(hf.build_config(path=s.path, fields=s.fields).vocab_size)


# ---------------------------------------------------------------------------
# Validation (nblab.recipe.SOURCE_CHECKS): each problem names its [model] field
# ---------------------------------------------------------------------------


def model_problems(recipe: Any) -> list[Problem]:
    """Every problem of the recipe's [model] section that only its sources show: a
    missing folder, a hub id, a config field transformers rejects, a factory that does
    not import. Fields of another kind left at their defaults are fine; set ones are not."""
    m = recipe.model
    s = _Section.of(m)
    out: list[Problem] = []
    defaults = _Section()
    for field in ("path", "architecture", "factory"):
        if field not in KIND_FIELDS[s.name] and getattr(s, field) != getattr(defaults, field):
            kinds = [k for k, f in KIND_FIELDS.items() if field in f]
            out.append((f"model.{field}", getattr(s, field), f"only for model.name={kinds[0]!r}"))
    if out:
        return out
    seq = recipe.train.seq_len
    if s.name == "gpt":
        return _gpt_problems(s, seq)
    if s.name == "hf":
        return _hf_problems(s, seq)
    return _py_problems(s)


def _gpt_problems(s: _Section, seq_len: int) -> list[Problem]:
    from nblab.models.gpt import FLAVOURS, gpt_config

    if s.flavour not in FLAVOURS:
        return []  # the registry check names it
    try:
        gpt_config(s.flavour, 256, seq_len, tie_embeddings=s.tie_embeddings, **s.fields)
    except ValueError as err:
        text = str(err)
        field = next((k for k in s.fields if f"{k!r}" in text or f".{k}=" in text), None)
        if field is None:
            return [("model.config", s.fields, text)]
        return [(f"model.config.{field}", s.fields[field], text)]
    return []


def _hf_problems(s: _Section, seq_len: int) -> list[Problem]:
    from nblab.models import hf

    if bool(s.path) == bool(s.architecture):
        return [
            (
                "model.path",
                s.path,
                "a local checkpoint folder, or leave it empty and set model.architecture "
                f"(one of {', '.join(hf.ARCHITECTURES)}) for a random init: exactly one of the two",
            )
        ]
    if s.path:
        try:
            hf.checkpoint_folder(s.path)
        except ValueError as err:
            return [("model.path", s.path, str(err))]
    elif s.architecture not in hf.ARCHITECTURES:
        return [("model.architecture", s.architecture, f"one of {', '.join(hf.ARCHITECTURES)}")]
    try:
        config = hf.build_config(path=s.path, architecture=s.architecture, fields=s.fields)
    except hf.ConfigError as err:
        path = f"model.config.{err.field}" if err.field else "model.config"
        return [(path, err.value, err.accepted)]
    except (ValueError, OSError) as err:
        return [
            ("model.path" if s.path else "model.architecture", s.path or s.architecture, str(err))
        ]
    if config.model_type not in hf.LAYOUTS:
        return [
            (
                "model.path",
                s.path,
                f"model_type {config.model_type!r}: one of {', '.join(hf.ARCHITECTURES)}",
            )
        ]
    positions = hf.max_positions(config)
    if positions is not None and seq_len > positions:
        return [
            ("train.seq_len", seq_len, f"at most the model's {positions} positions (n_positions)")
        ]
    return []


def _py_problems(s: _Section) -> list[Problem]:
    from nblab.models import py

    if not s.factory:
        return [("model.factory", s.factory, "'package.module:function' or 'file.py:function'")]
    try:
        py.load_factory(s.factory)
    except ValueError as err:
        return [("model.factory", s.factory, str(err))]
    return []


__all__ = [
    "KIND_FIELDS",
    "MODEL_KINDS",
    "build_model",
    "describe",
    "embedding_rows",
    "model_problems",
    "model_shape",
    "shape_of",
]
