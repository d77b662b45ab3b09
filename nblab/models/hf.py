"""Hugging Face causal LMs (transformers, pinned in pyproject) behind nblab's model protocol.

    [model]
    name = "hf"
    path = "/models/qwen2-0.5b"     # a local checkpoint folder: config.json, *.safetensors
    # or, for a study from scratch (random init):
    architecture = "llama"          # a transformers model_type
    [model.config]                  # fields of its config class (LlamaConfig, ...)
    hidden_size = 256
    num_hidden_layers = 4

Nothing is ever fetched from a hub: configs and weights load with local_files_only=True,
and a path that does not exist is an error that names it. The model keeps its Hugging
Face module names (model.layers.0.self_attn.q_proj, ...), so keep_high_precision globs,
checkpoints and `nblab export --hf` all speak them, and save_pretrained writes a
checkpoint transformers loads as it was.

Families: the decoder-only models laid out as Llama (model.embed_tokens, model.layers,
model.norm, lm_head: llama, mistral, qwen2, qwen3, ...) and GPT-2 (transformer.wte,
transformer.h, transformer.ln_f, lm_head; its projections are transformers' Conv1D,
which QuantLinear quantizes like a Linear).

Parallel layouts: DDP and FSDP2 (one unit per decoder layer) for every family. TP takes
the config's own base_model_tp_plan (colwise q/k/v/gate/up, rowwise o/down for Llama and
Qwen2), refused when that plan needs more than column and row splits (Qwen3's q_norm and
k_norm need their gradients summed over the TP ranks) or the model has none (GPT-2's
fused qkv). Pipeline stages are refused: the decoder's forward computes the rotary
embeddings and the causal mask itself and cannot yet be cut into stages.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nblab.models.protocol import (
    COLWISE,
    ROWWISE,
    Architecture,
    ModelShape,
    attach,
    count_params,
    freeze,
    linear_shapes,
    looks_like_hub_id,
    thaw,
)

# The families nblab has laid out: model_type -> (blocks, embedding, final norm, head).
LLAMA_LAYOUT = ("model.layers", "model.embed_tokens", "model.norm", "lm_head")
LAYOUTS: dict[str, tuple[str, str, str, str]] = {
    "llama": LLAMA_LAYOUT,
    "mistral": LLAMA_LAYOUT,
    "qwen2": LLAMA_LAYOUT,
    "qwen3": LLAMA_LAYOUT,
    "gpt2": ("transformer.h", "transformer.wte", "transformer.ln_f", "lm_head"),
}
ARCHITECTURES = tuple(LAYOUTS)
_TP_STYLES = {"colwise": COLWISE, "rowwise": ROWWISE}
PP_PROBLEM = (
    "a Hugging Face model cannot be split into pipeline stages yet (its decoder's forward "
    "computes the rotary embeddings and the causal mask itself); use dp_shard, "
    "dp_replicate or tp"
)


def hf_logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids -> (B, T, V) logits of a transformers causal LM (no KV cache)."""
    return model(input_ids=idx, use_cache=False).logits


def tp_plan(config: Any) -> tuple[dict[str, str], str]:
    """(block-relative module -> COLWISE / ROWWISE, '') from the config's base_model_tp_plan,
    or ({}, why TP is refused)."""
    plan = getattr(config, "base_model_tp_plan", None) or {}
    if not plan:
        return {}, (
            f"{config.model_type} has no tensor-parallel plan (GPT-2 fuses q, k and v into "
            f"one Conv1D, attn.c_attn, which a column split would cut across q, k and v)"
        )
    out, other = {}, []
    for pattern, style in plan.items():
        if style not in _TP_STYLES:
            other.append(f"{pattern}: {style}")
            continue
        out[pattern.split(".*.", 1)[-1]] = _TP_STYLES[style]
    if other:
        return {}, (
            f"{config.model_type}'s tensor-parallel plan needs more than column and row "
            f"splits ({'; '.join(other)}), which nblab's TP does not do yet"
        )
    return out, ""


def hf_architecture(config: Any) -> Architecture:
    model_type = config.model_type
    if model_type not in LAYOUTS:
        raise ValueError(
            f"model_type {model_type!r} is not laid out for nblab; accepted: "
            f"{', '.join(ARCHITECTURES)}"
        )
    blocks, embedding, norm, head = LAYOUTS[model_type]
    plan, tp_problem = tp_plan(config)
    return Architecture(
        blocks=blocks,
        embedding=embedding,
        final_norm=norm,
        head=head,
        logits=hf_logits,
        tp_plan=plan,
        tp_problem=tp_problem,
        pp_problem=PP_PROBLEM,
    )


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


def config_fields(config_class: type) -> set[str]:
    """The fields a transformers config class accepts (dataclass fields or __init__
    parameters, plus its attribute_map aliases such as GPT-2's hidden_size -> n_embd)."""
    if dataclasses.is_dataclass(config_class):
        names = {f.name for f in dataclasses.fields(config_class)}
    else:
        params = inspect.signature(config_class.__init__).parameters
        names = {n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD}
        names.discard("self")
    return names | set(getattr(config_class, "attribute_map", {}))


class ConfigError(ValueError):
    """A config field transformers rejects: `.field` names it ('' for the whole config)."""

    def __init__(self, field: str, value: Any, accepted: str):
        self.field, self.value, self.accepted = field, value, accepted
        super().__init__(f"{field or 'config'}={value!r}: {accepted}")


def _unknown_field(model_type: str, config_class: type, key: str, value: Any) -> ConfigError:
    known = sorted(config_fields(config_class))
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"accepted: {', '.join(known)}"
    return ConfigError(key, value, f"not a field of {config_class.__name__} ({model_type}); {hint}")


def _config_error(err: Exception, fields: dict[str, Any]) -> ConfigError:
    """A transformers validation error as a ConfigError naming the field when it can."""
    text = str(err).strip()
    for key in fields:
        if f"'{key}'" in text or f" {key} " in text or f"({key})" in text:
            return ConfigError(key, fields[key], text.splitlines()[-1].strip())
    return ConfigError("", fields, " ".join(line.strip() for line in text.splitlines()))


def build_config(
    *, path: str = "", architecture: str = "", fields: dict[str, Any] | None = None
) -> Any:
    """The transformers config of a local checkpoint folder or of an architecture, with
    `fields` set over it. Raises ConfigError (a field transformers rejects), ValueError
    (a path or architecture that is not there)."""
    return _build_config(path, architecture, freeze(dict(fields or {})))


@functools.lru_cache(maxsize=64)
def _build_config(path: str, architecture: str, frozen_fields: Any) -> Any:
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fields = thaw(frozen_fields)
    if path:
        folder = checkpoint_folder(path)
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        config_class, model_type = type(config), config.model_type
    else:
        if architecture not in CONFIG_MAPPING:
            raise ValueError(
                f"architecture {architecture!r} is not a transformers model_type; nblab lays "
                f"out {', '.join(ARCHITECTURES)}"
            )
        config_class, model_type, config = CONFIG_MAPPING[architecture], architecture, None
    known = config_fields(config_class)
    for key, value in fields.items():
        if key not in known:
            raise _unknown_field(model_type, config_class, key, value)
    try:
        if config is None:
            return config_class(**fields)
        merged = {**config.to_dict(), **fields}
        merged.pop("model_type", None)
        merged.pop("transformers_version", None)
        return config_class(**merged)
    except Exception as err:  # strict dataclass validation: a bad type, value or rule
        raise _config_error(err, fields) from None


def checkpoint_folder(path: str) -> Path:
    """A local checkpoint folder with a config.json; ValueError names what is missing
    (and says a hub id is not a path: nblab never downloads)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        if looks_like_hub_id(path):
            raise ValueError(
                f"{path!r} is not a local folder; it looks like a Hugging Face hub id, and "
                f"nblab never downloads: fetch it yourself (huggingface-cli download {path} "
                f"--local-dir DIR) and give DIR"
            )
        raise ValueError(f"{path!r}: no such folder (a local checkpoint folder with config.json)")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder / 'config.json'}: no such file (the checkpoint's config)")
    return folder


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def with_vocab(config: Any, vocab_size: int, seq_len: int, from_checkpoint: bool) -> Any:
    """The config a run builds: from scratch, the vocabulary follows the tokenizer (and
    positions cover seq_len where the config has its own default); a checkpoint keeps its
    embedding, which must hold every token id."""
    config = copy.deepcopy(config)
    if from_checkpoint:
        if config.vocab_size < vocab_size:
            raise ValueError(
                f"the checkpoint's embedding has {config.vocab_size} rows, but the tokenizer "
                f"has {vocab_size} ids"
            )
    else:
        config.vocab_size = vocab_size
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            token = getattr(config, name, None)
            if isinstance(token, int) and token >= vocab_size:  # GPT-2's 50256, say
                setattr(config, name, None)  # (the tokenizer's own ids apply)
    config.use_cache = False
    return config


def max_positions(config: Any) -> int | None:
    """The longest sequence a model with learned positions takes (GPT-2's n_positions)."""
    return getattr(config, "n_positions", None) if config.model_type == "gpt2" else None


# ---------------------------------------------------------------------------
# Build, shape
# ---------------------------------------------------------------------------


def build(config: Any, folder: Path | None = None) -> nn.Module:
    """The causal LM of `config`, fp32: with the folder's safetensors weights when it has
    them, else randomly initialised (torch's RNG: seed it first)."""
    from transformers import AutoModelForCausalLM

    arch = hf_architecture(config)
    if folder is not None and weight_files(folder):
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), config=config, local_files_only=True, dtype=torch.float32
        )
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return attach(model, arch)


def shape(config: Any) -> ModelShape:
    """The ModelShape of a config, from a model built on the meta device."""
    from transformers import AutoModelForCausalLM

    arch = hf_architecture(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n_params, n_lookup = count_params(model, arch)
    d = config.hidden_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    ffn = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d
    return ModelShape(
        kind=f"hf {config.model_type}",
        d_model=d,
        n_layers=config.num_hidden_layers,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=getattr(config, "head_dim", None) or d // heads,
        ffn_hidden=ffn,
        vocab_size=config.vocab_size,
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        linears=linear_shapes(model, arch),
        n_params=n_params,
        n_lookup_params=n_lookup,
        block_prefix=arch.block_prefix,
        head=arch.head,
        max_seq_len=max_positions(config),
        tp_problem=arch.tp_problem,
        pp_problem=arch.pp_problem,
    )


__all__ = [
    "ARCHITECTURES",
    "LAYOUTS",
    "ConfigError",
    "build",
    "build_config",
    "checkpoint_folder",
    "config_fields",
    "hf_architecture",
    "hf_logits",
    "shape",
    "tp_plan",
    "weight_files",
    "with_vocab",
]
