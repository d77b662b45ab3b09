"""The training recipe: one dataclass tree, the single source of truth.

A Recipe is what a notebook cell, a TOML file, a sweep and a run folder all hold:

    recipe = Recipe.preset("gpt-tiny").with_overrides(["precision.preset=nvfp4"])
    text = recipe.to_toml()                 # what runs/<run_id>/recipe.toml holds
    assert Recipe.from_toml(text) == recipe

Construction from TOML, a dict or overrides always validates; `validate()` collects
every problem and raises one RecipeError listing each as
`field.path: bad value -> what is accepted`. Model, flavour and dataset names are
checked against the registries in nblab.train.model / nblab.train.data (imported
lazily, so this module stays light); precision against nblab.precision.presets.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nblab.precision.presets import (
    GEMM_MODES,
    PRECISION_PRESETS,
    format_problems,
    precision_problems,
    resolve_precision,
)
from nblab_kernels.formats import QUANT_PRESETS

Problem = tuple[str, Any, str]  # (field path, bad value, what would be accepted)


class RecipeError(ValueError):
    """Every problem of a recipe at once. `.problems` is a list of
    (field path, bad value, what would be accepted)."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"invalid recipe ({n} problem{'s' if n != 1 else ''}):"
        super().__init__(head + "\n" + format_problems(self.problems))


# ---------------------------------------------------------------------------
# The sections
# ---------------------------------------------------------------------------


@dataclass
class ModelSection:
    """The model (nblab.models): "gpt" (built in), "hf" (a Hugging Face causal LM) or "py"
    (a module of one's own). Each kind reads its own fields (nblab.models.KIND_FIELDS)."""

    name: str = "gpt"  # a key of nblab.models.MODEL_KINDS
    flavour: str = "tiny"  # gpt: a key of nblab.models.gpt.FLAVOURS
    tie_embeddings: bool = True  # gpt (hf: [model.config] tie_word_embeddings)
    # gpt: GPTConfig fields over the flavour's; hf: fields of its config class; py: the
    # factory's own settings
    config: dict[str, Any] = field(default_factory=dict)
    path: str = ""  # hf: a local checkpoint folder (config.json, optional *.safetensors)
    architecture: str = ""  # hf: a transformers model_type (llama, qwen2, ...), random init
    factory: str = ""  # py: "package.module:function" or "path/to/file.py:function"
    # start from these weights: an exported folder (safetensors) or RUN_ID[:STEP]
    init_from: str = ""


@dataclass
class DataSection:
    name: str = "pydoc"  # a key of nblab.train.data.DATASETS
    # "text": a text file; "files": a file, folder or glob of .txt/.jsonl/.json/.parquet
    # files; "hf": a folder saved by datasets' save_to_disk. Local only: nothing is fetched.
    path: str = ""
    # char | byte | bpe:N (a byte-level BPE of vocab N trained on the train split) | the
    # path of a local tokenizer.json or tokenizer folder (bpe:N and paths: "files" only)
    tokenizer: str = "char"
    val_fraction: float = 0.1
    digits: int = 3  # operand digits of the "addition" task
    text_column: str = "text"  # the text of a JSON / parquet record ("files", "hf")
    text_documents: str = "paragraph"  # a document of a .txt file: line | paragraph | file
    split_seed: int = 0  # which documents are val ("files"); train.seed leaves it alone


@dataclass
class OptimizerSection:
    name: str = "adamw"
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    eps: float = 1e-8


@dataclass
class ScheduleSection:
    warmup_steps: int = 30  # may exceed train.steps (then lr never reaches its peak)
    decay: str = "cosine"
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio


@dataclass
class TrainSection:
    steps: int = 300
    batch_size: int = 16  # sequences per optimizer step, over all ranks and micro-batches
    seq_len: int = 128
    grad_accum: int = 1
    grad_clip: float = 1.0  # 0: no clipping
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    compile: bool = False


@dataclass
class PrecisionSection:
    preset: str = "bf16"  # a key of nblab.precision.PRECISION_PRESETS
    # role -> QuantSpec preset name | "high" | table of QuantSpec fields (see presets.py)
    roles: dict[str, str | dict] = field(default_factory=dict)
    # added to the preset's list; "!entry" removes one of the preset's entries
    keep_high_precision: list[str] = field(default_factory=list)
    backend: str = "auto"
    # emulated | native | auto: the GEMMs of quantized operands (nblab.precision.gemm)
    gemm: str = "auto"

    def resolve(self):
        """The PrecisionPreset this section means (preset + overrides + keep list)."""
        return resolve_precision(self)


@dataclass
class ParallelSection:
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    nproc: int = 1  # processes in all; must equal dp_replicate * dp_shard * tp * pp
    pp_schedule: str = "1f1b"  # pipeline schedule when pp > 1: gpipe | 1f1b


@dataclass
class EvalSection:
    interval: int = 100  # steps between evaluations; 0: never
    batches: int = 10
    # An evaluation run (nblab.eval) sets source: it evaluates that training run's
    # checkpoint after training instead of training; the other sections say how to build
    # and read the model (nblab eval writes them from the source run's recipe).
    source: str = ""  # a run id; "": this recipe trains
    step: int = 0  # the source's checkpoint step; 0: its latest
    # the format to evaluate in: a precision preset or a QuantSpec name (nblab.eval
    # .precision); "": the [precision] section. Only the forward roles act.
    precision: str = ""
    weights_only: bool = False  # quantize the weights only, not the activations
    scan: str = ""  # "": one evaluation; "module" | "role": a sensitivity scan


@dataclass
class CheckpointSection:
    interval: int = 0  # steps between checkpoints; 0: only at the end
    keep: int = 2


@dataclass
class MetricsSection:
    log_interval: int = 10  # loss / lr / throughput
    stats_interval: int = 50  # quantization statistics; 0: never
    histogram_interval: int = 100  # weight and scale histograms; 0: never
    tensorboard: bool = False  # also write TensorBoard events live, to runs/<run_id>/tensorboard


@dataclass
class FinetuneSection:
    """Fine-tuning (nblab.finetune): which weights train, how the frozen base is stored.

    method "full": every parameter trains (pretraining is a full fine-tune of a random
    init); "lora": only peft's LoRA adapters (rank r, scale alpha / r) on the linears that
    target_modules names train, and the optimizer sees only them. base_format (lora only):
    the frozen base linears stored once as packed codes and scales of that QuantSpec
    preset (nvfp4, mxfp4, int4_b32, ...), dequantized in the forward (as QLoRA does).
    prompt_field / response_field: the fields of data.name = "instruct" jsonl lines."""

    method: str = "full"  # full | lora
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # globs over qualified linear module names (layers.*.attn.*); [] = every linear of the
    # model's blocks (the head and embeddings stay frozen)
    target_modules: list[str] = field(default_factory=list)
    base_format: str = ""  # "": the base as it is; else a QuantSpec preset name
    prompt_field: str = "prompt"
    response_field: str = "response"


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "optimizer": OptimizerSection,
    "schedule": ScheduleSection,
    "train": TrainSection,
    "precision": PrecisionSection,
    "parallel": ParallelSection,
    "eval": EvalSection,
    "checkpoint": CheckpointSection,
    "metrics": MetricsSection,
    "finetune": FinetuneSection,
}

OPTIMIZERS = ("adamw", "adam", "sgd")
DECAYS = ("cosine", "linear", "constant")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")
BACKENDS = ("auto", "reference", "triton", "compiled")  # as nblab_kernels.BACKENDS
FINETUNE_METHODS = ("full", "lora")
PP_SCHEDULES = ("gpipe", "1f1b")  # as nblab.parallel.pipeline.PP_SCHEDULES
TEXT_DOCUMENTS = ("line", "paragraph", "file")  # as nblab.train.corpus.TEXT_DOCUMENTS
# the parallel section's degrees; their product is parallel.nproc
PARALLEL_DEGREES = ("dp_replicate", "dp_shard", "tp", "pp")
EVAL_SCANS = ("", "module", "role")  # eval.scan: one evaluation, or a sensitivity scan
# the eval fields that only an evaluation run (eval.source set) reads
EVAL_RUN_FIELDS = ("step", "precision", "weights_only", "scan")
_RUN_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]*")  # as nblab.runs.store's run ids

# Registries owned by other modules, imported only when a recipe is validated.
_REGISTRIES = {
    "model": ("nblab.models", "MODEL_KINDS"),
    "flavour": ("nblab.models.gpt", "FLAVOURS"),
    "dataset": ("nblab.train.data", "DATASETS"),
    "tokenizer": ("nblab.train.data", "TOKENIZERS"),
}


def known_names(kind: str) -> list[str] | None:
    """Keys of the registry for `kind` (model, flavour, dataset, tokenizer), or None
    when the module that owns it is not there (then the name is not checked)."""
    module_name, attr = _REGISTRIES[kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            return None
        raise
    registry = getattr(module, attr, None)
    return None if registry is None else list(registry)


@dataclass
class Recipe:
    name: str = "recipe"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    precision: PrecisionSection = field(default_factory=PrecisionSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Build and validate; missing keys take their defaults."""
        return _build(data, [])

    @classmethod
    def from_toml(cls, source: str | Path) -> Recipe:
        """From TOML text, or from a file (a Path, or a str ending in .toml)."""
        if isinstance(source, Path) or (
            isinstance(source, str) and source.endswith(".toml") and "\n" not in source
        ):
            try:
                source = Path(source).read_text()
            except OSError as err:
                raise RecipeError(
                    [("(file)", str(source), f"a readable TOML file: {err}")]
                ) from None
        try:
            data = tomllib.loads(source)
        except tomllib.TOMLDecodeError as err:
            raise RecipeError([("(toml)", source[:60], f"valid TOML: {err}")]) from None
        return _build(data, [])

    @classmethod
    def preset(cls, name: str) -> Recipe:
        """A named recipe from RECIPE_PRESETS."""
        if name not in RECIPE_PRESETS:
            raise RecipeError(
                [
                    (
                        "preset",
                        name,
                        f"one of {', '.join(RECIPE_PRESETS)}" + _hint(name, RECIPE_PRESETS),
                    )
                ]
            )
        return _build(copy.deepcopy(RECIPE_PRESETS[name]), [])

    # -- output -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain TOML-able data (lists, not tuples), a deep copy."""
        out: dict[str, Any] = {"name": self.name}
        for section in SECTIONS:
            out[section] = {
                k: _plain(v) for k, v in dataclasses.asdict(getattr(self, section)).items()
            }
        return out

    def to_toml(self) -> str:
        import tomli_w  # lazily: training on a bare GPU machine needs no TOML writer

        return tomli_w.dumps(self.to_dict())

    # -- overrides --------------------------------------------------------------
    def with_overrides(self, overrides: Iterable[str] | Mapping[str, Any]) -> Recipe:
        """A new, validated Recipe with dotted-path overrides applied, either as
        "path=value" strings or as a {path: value} mapping. String values are parsed
        by the field's type ("3e-4", "true", '["lm_head", "layers.0.*"]' or
        "lm_head,layers.0.*"); `data.name=text:/some/file.txt` sets name and path.
        Roles take one more level: `precision.roles.dgrad_dy=high`,
        `precision.roles.dgrad_dy.rounding=sr`."""
        data = self.to_dict()
        problems: list[Problem] = []
        if isinstance(overrides, Mapping):
            items = list(overrides.items())
        elif isinstance(overrides, str):
            items = [_split_override(overrides, problems)]
        else:
            items = [_split_override(item, problems) for item in overrides]
        for item in items:
            if item is not None:
                apply_override(data, item[0], item[1], problems)
        return _build(data, problems)

    # -- checks -----------------------------------------------------------------
    def problems(self) -> list[Problem]:
        """Every problem of this recipe, [] when it is valid."""
        return _check(self)

    def validate(self) -> Recipe:
        """Raise one RecipeError listing every problem; return self when valid."""
        problems = self.problems()
        if problems:
            raise RecipeError(problems)
        return self

    def get(self, path: str) -> Any:
        """The value at a dotted path, e.g. recipe.get("train.steps")."""
        obj: Any = self
        for part in path.split("."):
            obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
        return obj


# ---------------------------------------------------------------------------
# Named recipes: partial tables over the defaults, plain data
# ---------------------------------------------------------------------------

RECIPE_PRESETS: dict[str, dict[str, Any]] = {
    "gpt-debug": {
        "name": "gpt-debug",
        "model": {"flavour": "debug"},
        "data": {"name": "pydoc"},
        "schedule": {"warmup_steps": 2},
        "train": {"steps": 20, "batch_size": 4, "seq_len": 32, "device": "cpu"},
        "eval": {"interval": 10, "batches": 2},
        "checkpoint": {"interval": 0, "keep": 1},
        "metrics": {"log_interval": 1, "stats_interval": 5, "histogram_interval": 10},
    },
    "gpt-tiny": {
        "name": "gpt-tiny",
        "model": {"name": "gpt", "flavour": "tiny"},
        "data": {"name": "pydoc", "tokenizer": "char"},
        "optimizer": {"name": "adamw", "lr": 3e-3},
        "schedule": {"warmup_steps": 30, "decay": "cosine"},
        "train": {"steps": 300, "batch_size": 16, "seq_len": 128},
    },
    "addition-tiny": {
        "name": "addition-tiny",
        "model": {"flavour": "tiny"},
        "data": {"name": "addition", "digits": 3, "val_fraction": 0.05},
        "optimizer": {"lr": 1e-3, "weight_decay": 0.0},
        "schedule": {"warmup_steps": 50},
        "train": {"steps": 1000, "batch_size": 64, "seq_len": 32},
        "eval": {"interval": 100, "batches": 4},
    },
}


# ---------------------------------------------------------------------------
# Building from plain data
# ---------------------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _hint(name: Any, known: Iterable[str]) -> str:
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown_key(path: str, key: str, table: str, known: Iterable[str], value: Any) -> Problem:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1)
    why = f"unknown key {key!r} in [{table}]; "
    why += f"did you mean {close[0]!r}?" if close else f"accepted: {', '.join(known)}"
    return (path, value, why)


def _build(data: Any, problems: list[Problem]) -> Recipe:
    """Recipe from plain data: unknown keys become problems, values that fit their
    field are normalised (int -> float, list -> tuple), the rest are kept as given
    for validation to report. Raises RecipeError when anything is wrong."""
    problems = list(problems)
    if not isinstance(data, Mapping):
        raise RecipeError([("(recipe)", data, "a table of sections")])
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "name":
            kwargs["name"] = value
        elif key in SECTIONS:
            if isinstance(value, Mapping):
                kwargs[key] = _build_section(key, value, problems)
            else:
                problems.append((key, value, f"a table of {key} settings"))
        else:
            problems.append(_unknown_key(key, key, "recipe", ["name", *SECTIONS], value))
    recipe = Recipe(**kwargs)
    problems += recipe.problems()
    if problems:
        raise RecipeError(_dedup(problems))
    _absolute_paths(recipe)
    return recipe


def _absolute_paths(recipe: Recipe) -> None:
    """data.path, a tokenizer path, model.path, a factory's file and an init_from folder,
    made absolute against the current folder once they are known to exist there: a job
    runs in its run folder and must read the same files (and the run's recipe.toml then
    says which). "~" is kept: it is the same user's home."""
    d = recipe.data
    if d.path and d.name in ("text", "files", "hf"):
        d.path = _absolute(d.path)
    if d.tokenizer not in ("char", "byte") and not d.tokenizer.startswith("bpe:"):
        d.tokenizer = _absolute(d.tokenizer)
    m = recipe.model
    if m.path:
        m.path = _absolute(m.path)
    module, sep, function = m.factory.rpartition(":")
    if sep and module.endswith(".py"):
        m.factory = f"{_absolute(module)}:{function}"
    if m.init_from and os.path.isdir(os.path.expanduser(m.init_from)):  # not a run id
        m.init_from = _absolute(m.init_from)


def _absolute(path: str) -> str:
    return path if os.path.isabs(os.path.expanduser(path)) else os.path.abspath(path)


def _build_section(section: str, table: Mapping[str, Any], problems: list[Problem]):
    cls = SECTIONS[section]
    hints = _hints(cls)
    kwargs = {}
    for key, value in table.items():
        if key not in hints:
            problems.append(_unknown_key(f"{section}.{key}", key, section, hints, value))
            continue
        kwargs[key] = _normalise(value, hints[key])
    return cls(**kwargs)


def _normalise(value: Any, tp: Any) -> Any:
    """Fit a value to its field type where that is lossless; else return it as is."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(_normalise(v, a) for v, a in zip(value, typing.get_args(tp), strict=False))
    if origin is list and isinstance(value, list | tuple):
        return list(value)
    if origin is dict and isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _dedup(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p[0], repr(p[1]), p[2])
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# ---------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------


def dotted_fields(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A recipe's TOML table as {dotted field path: value}, the paths overrides use
    ("optimizer.lr"); an empty table stays one field (precision.roles = {})."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= dotted_fields(value, path + ".")
        else:
            out[path] = value
    return out


def _split_override(item: Any, problems: list[Problem]) -> tuple[str, str] | None:
    if not isinstance(item, str) or "=" not in item:
        problems.append(("(override)", item, 'a "section.field=value" string'))
        return None
    path, _, raw = item.partition("=")
    return path.strip(), raw.strip()


def apply_override(data: dict[str, Any], path: Any, raw: Any, problems: list[Problem]) -> None:
    if not isinstance(path, str):
        problems.append(("(override)", path, 'a dotted path such as "train.steps"'))
        return
    parts = path.split(".")
    head = parts[0]
    if head == "name" and len(parts) == 1:
        data["name"] = _parse_or_problem(path, raw, str, problems)
        return
    if head not in SECTIONS:
        problems.append(_unknown_key(path, head, "recipe", ["name", *SECTIONS], raw))
        return
    if len(parts) == 1:
        problems.append(
            (path, raw, f"a field of [{head}], e.g. {head}.{next(iter(_hints(SECTIONS[head])))}")
        )
        return
    hints = _hints(SECTIONS[head])
    key = parts[1]
    if key not in hints:
        problems.append(_unknown_key(path, key, head, hints, raw))
        return
    tp = hints[key]
    if typing.get_origin(tp) is dict and len(parts) > 2:
        if not isinstance(data[head][key], dict):
            problems.append((path, raw, f"{head}.{key} to be a table first"))
            return
        if path.startswith("precision.roles."):
            _apply_role_override(data[head][key], path, parts[2:], raw, problems)
        else:
            _apply_table_override(data[head][key], parts[2:], raw)
        return
    if len(parts) > 2:
        problems.append((path, raw, f"{head}.{key} is a single value, not a table"))
        return
    if path == "data.name" and isinstance(raw, str) and ":" in raw:
        raw, _, data_path = raw.partition(":")
        data[head]["path"] = data_path
    value = _parse_or_problem(path, raw, tp, problems)
    if value is not _BAD:
        data[head][key] = _plain(value)


def _apply_table_override(table: dict[str, Any], keys: list[str], raw: Any) -> None:
    """section.table.key[.key...]=value: a TOML value (a bare word stays a string), e.g.
    model.config.hidden_size=256, model.config.rope_parameters.rope_theta=5e5."""
    for key in keys[:-1]:
        if not isinstance(table.get(key), dict):
            table[key] = {}
        table = table[key]
    value = raw
    if isinstance(raw, str):
        parsed = _parse_toml_value(raw)
        value = _unquote(raw) if parsed is _BAD else parsed
    table[keys[-1]] = _plain(value)


def _apply_role_override(
    roles: dict[str, Any], path: str, rest: list[str], raw: Any, problems: list[Problem]
) -> None:
    """precision.roles.<role>=<name|high|{table}> or precision.roles.<role>.<field>=v."""
    role = rest[0]
    if len(rest) == 1:
        if isinstance(raw, str) and raw.strip().startswith("{"):
            value = _parse_toml_value(raw)
            if not isinstance(value, dict):
                problems.append((path, raw, "a TOML inline table of QuantSpec fields"))
                return
            roles[role] = value
        elif isinstance(raw, str):
            roles[role] = _unquote(raw)
        else:
            roles[role] = _plain(raw)
        return
    if len(rest) > 2:
        problems.append((path, raw, "precision.roles.<role> or precision.roles.<role>.<field>"))
        return
    current = roles.get(role)
    if isinstance(current, dict):
        table = dict(current)
    elif isinstance(current, str) and current != "high":
        table = {"base": current}
    else:
        table = {}
    value = raw
    if isinstance(raw, str):
        parsed = _parse_toml_value(raw)
        value = raw if parsed is _BAD else parsed
    table[rest[1]] = value
    roles[role] = table


_BAD = object()  # a value that could not be parsed (a problem is already recorded)


def _parse_toml_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, KeyError):
        return _BAD


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        value = _parse_toml_value(raw)
        if isinstance(value, str):
            return value
    return raw


def _parse_or_problem(path: str, raw: Any, tp: Any, problems: list[Problem]) -> Any:
    if not isinstance(raw, str):
        return raw  # the dict form carries typed values; validation checks them
    value = _parse_value(raw, tp)
    if value is _BAD:
        problems.append((path, raw, _RULES[path][1] if path in _RULES else _type_text(tp)))
    return value


def _parse_value(raw: str, tp: Any) -> Any:
    """Parse an override string by the field's type; _BAD when it does not fit."""
    if tp is str:
        return _unquote(raw)
    if tp is bool:
        return {"true": True, "false": False}.get(raw.lower(), _BAD)
    if tp is int:
        value = _parse_toml_value(raw)
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if tp is float:
        value = _parse_toml_value(raw)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return float(raw)
        except ValueError:
            return _BAD
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        text = raw.strip()
        if text.startswith("["):
            value = _parse_toml_value(text)
            if not isinstance(value, list):
                return _BAD
        else:
            value = [_unquote(v.strip()) for v in text.split(",")] if text else []
        if origin is tuple:
            items = []
            for v in value:
                f = _parse_value(v, float) if isinstance(v, str) else v
                if f is _BAD:
                    return _BAD
                items.append(f)
            return tuple(items)
        return value
    if origin is dict:
        value = _parse_toml_value(raw)
        return value if isinstance(value, dict) else _BAD
    return _BAD


# ---------------------------------------------------------------------------
# Validation: types, ranges and choices per field, then cross-field rules
# ---------------------------------------------------------------------------


def _type_text(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    if origin is list:
        return "a list of strings"
    return "a table"


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        return (
            isinstance(value, tuple | list)
            and len(value) == len(args)
            and all(_type_ok(v, a) for v, a in zip(value, args, strict=True))
        )
    if origin is list:
        return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return True


def _int_at_least(lo: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: lo <= v < 2**63), f"an integer >= {lo}"


def _choice(options: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in options), f"one of {', '.join(options)}"


def _finite(pred: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: math.isfinite(v) and pred(v)


# path -> (predicate on a value of the right type, what is accepted)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": ((lambda v: bool(v.strip())), "a non-empty string"),
    # every dataset splits off a non-empty validation part
    "data.val_fraction": (_finite(lambda v: 0 < v < 1), "a number in (0, 1)"),
    "data.digits": ((lambda v: 1 <= v <= 18), "an integer in 1..18"),
    "data.text_column": ((lambda v: bool(v)), "a column name (not empty)"),
    "data.text_documents": _choice(TEXT_DOCUMENTS),
    "data.split_seed": _int_at_least(0),
    "optimizer.name": _choice(OPTIMIZERS),
    "optimizer.lr": (_finite(lambda v: 0 < v <= 10), "a number in (0, 10]"),
    "optimizer.betas": (
        (lambda v: all(math.isfinite(b) and 0 <= b < 1 for b in v)),
        "a list of 2 numbers, each in [0, 1)",
    ),
    "optimizer.weight_decay": (_finite(lambda v: v >= 0), "a number >= 0"),
    "optimizer.eps": (_finite(lambda v: 0 < v < 1), "a number in (0, 1)"),
    "schedule.warmup_steps": _int_at_least(0),
    "schedule.decay": _choice(DECAYS),
    "schedule.min_lr_ratio": (_finite(lambda v: 0 <= v <= 1), "a number in [0, 1]"),
    "train.steps": _int_at_least(1),
    "train.batch_size": _int_at_least(1),
    "train.seq_len": _int_at_least(1),
    "train.grad_accum": _int_at_least(1),
    "train.grad_clip": (_finite(lambda v: v >= 0), "a number >= 0 (0: no clipping)"),
    "train.seed": _int_at_least(0),
    "train.device": _choice(DEVICES),
    "train.dtype": _choice(DTYPES),
    "precision.backend": _choice(BACKENDS),
    "precision.gemm": _choice(GEMM_MODES),
    "parallel.dp_replicate": _int_at_least(1),
    "parallel.dp_shard": _int_at_least(1),
    "parallel.tp": _int_at_least(1),
    "parallel.pp": _int_at_least(1),
    "parallel.nproc": _int_at_least(1),
    "parallel.pp_schedule": _choice(PP_SCHEDULES),
    "eval.interval": _int_at_least(0),
    "eval.batches": _int_at_least(1),
    "eval.source": (
        (lambda v: v == "" or _RUN_ID.fullmatch(v) is not None),
        'a run id (letters, digits, "-", "_"), or "" for a training recipe',
    ),
    "eval.step": _int_at_least(0),
    "eval.precision": (
        (lambda v: v == "" or v in PRECISION_PRESETS or v in QUANT_PRESETS),
        '"" (the [precision] section), a precision preset '
        f"({', '.join(PRECISION_PRESETS)}) or a QuantSpec name "
        f"({', '.join(n for n in QUANT_PRESETS if n not in PRECISION_PRESETS)})",
    ),
    "eval.scan": (
        (lambda v: v in EVAL_SCANS),
        '"" (one evaluation), "module" or "role" (a sensitivity scan)',
    ),
    "checkpoint.interval": _int_at_least(0),
    "checkpoint.keep": _int_at_least(1),
    "metrics.log_interval": _int_at_least(1),
    "metrics.stats_interval": _int_at_least(0),
    "metrics.histogram_interval": _int_at_least(0),
    "finetune.method": _choice(FINETUNE_METHODS),
    "finetune.r": _int_at_least(1),
    "finetune.alpha": (_finite(lambda v: v > 0), "a number > 0"),
    "finetune.dropout": (_finite(lambda v: 0 <= v < 1), "a number in [0, 1)"),
    "finetune.prompt_field": ((lambda v: bool(v.strip())), "a non-empty field name"),
    "finetune.response_field": ((lambda v: bool(v.strip())), "a non-empty field name"),
}

# path -> registry kind, checked when the registry's module is importable
_REGISTRY_FIELDS = {
    "model.name": "model",
    "model.flavour": "flavour",
    "data.name": "dataset",
}  # data.tokenizer takes bpe:N and paths too: nblab.train.data.data_problems checks it


def _check(recipe: Recipe) -> list[Problem]:
    problems: list[Problem] = []
    ok: dict[str, Any] = {}  # path -> value, for fields of the right type

    def visit(path: str, value: Any, tp: Any) -> None:
        rule = _RULES.get(path)
        if not _type_ok(value, tp):
            problems.append((path, value, rule[1] if rule else _type_text(tp)))
            return
        if rule and not rule[0](value):
            problems.append((path, value, rule[1]))
            return
        ok[path] = value

    visit("name", recipe.name, str)
    for section, cls in SECTIONS.items():
        obj = getattr(recipe, section)
        if not isinstance(obj, cls):
            problems.append((section, obj, f"a {cls.__name__}"))
            continue
        for key, tp in _hints(cls).items():
            visit(f"{section}.{key}", getattr(obj, key), tp)

    for path, kind in _REGISTRY_FIELDS.items():
        if path in ok:
            names = known_names(kind)
            if names is not None and ok[path] not in names:
                problems.append(
                    (path, ok[path], f"one of {', '.join(names)}" + _hint(ok[path], names))
                )

    if all(
        p in ok for p in ("precision.preset", "precision.roles", "precision.keep_high_precision")
    ):
        problems += precision_problems(recipe.precision, prefix="precision.")
    elif "precision.preset" in ok and ok["precision.preset"] not in PRECISION_PRESETS:
        problems += precision_problems({"preset": ok["precision.preset"]}, prefix="precision.")

    problems += _cross_field(ok)
    if not problems:
        problems += _source_problems(recipe)
    return problems


# Checks that look outside the recipe (files, imports, model configs, tokenizers): each is
# `fn(recipe) -> list[Problem]`, owned by the module that knows the source, imported only
# when a recipe is otherwise valid (so a typo is reported without touching the disk).
SOURCE_CHECKS = (
    ("nblab.train.data", "data_problems"),
    ("nblab.models", "model_problems"),
    ("nblab.train.data", "vocab_problems"),
    ("nblab.train.weights", "init_problems"),
    ("nblab.finetune", "finetune_problems"),
    ("nblab.train.instruct", "instruct_problems"),
    ("nblab.eval.source", "source_problems"),
)


def _source_problems(recipe: Recipe) -> list[Problem]:
    problems: list[Problem] = []
    for module_name, attr in SOURCE_CHECKS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
                continue
            raise
        check = getattr(module, attr, None)
        if check is not None:
            problems += check(recipe)
    return problems


def _cross_field(ok: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []

    def have(*paths: str) -> bool:
        return all(p in ok for p in paths)

    needs_path = {
        "text": "a text file",
        "files": "a file, folder or glob of corpus files",
        "hf": "a folder saved by datasets' save_to_disk",
    }
    if have("data.name", "data.path") and ok["data.name"] in needs_path and not ok["data.path"]:
        what = needs_path[ok["data.name"]]
        problems.append(
            (
                "data.path",
                ok["data.path"],
                f"{what} for data.name={ok['data.name']!r} "
                f"(shorthand: data.name={ok['data.name']}:<path>)",
            )
        )
    if have("eval.source") and not ok["eval.source"]:
        defaults = EvalSection()
        for key in EVAL_RUN_FIELDS:
            path = f"eval.{key}"
            if have(path) and ok[path] != getattr(defaults, key):
                problems.append(
                    (
                        path,
                        ok[path],
                        "its default in a training recipe: set eval.source to the "
                        "run whose checkpoint this evaluates",
                    )
                )
    dims = tuple(f"parallel.{d}" for d in PARALLEL_DEGREES)
    if have(*dims, "parallel.nproc"):
        product = math.prod(ok[d] for d in dims)
        if product != ok["parallel.nproc"]:
            degrees = " * ".join(f"{d.split('.')[1]}={ok[d]}" for d in dims)
            problems.append(("parallel.nproc", ok["parallel.nproc"], f"{degrees} = {product}"))
        if have("train.batch_size", "train.grad_accum"):
            dp = ok["parallel.dp_replicate"] * ok["parallel.dp_shard"]
            micro = dp * ok["train.grad_accum"]
            if ok["train.batch_size"] % micro:
                problems.append(
                    (
                        "train.batch_size",
                        ok["train.batch_size"],
                        f"a multiple of dp_replicate * dp_shard * grad_accum = {micro}",
                    )
                )
    return problems


__all__ = [
    "BACKENDS",
    "DECAYS",
    "DEVICES",
    "DTYPES",
    "EVAL_RUN_FIELDS",
    "EVAL_SCANS",
    "FINETUNE_METHODS",
    "OPTIMIZERS",
    "PARALLEL_DEGREES",
    "PP_SCHEDULES",
    "RECIPE_PRESETS",
    "SECTIONS",
    "TEXT_DOCUMENTS",
    "CheckpointSection",
    "DataSection",
    "EvalSection",
    "FinetuneSection",
    "MetricsSection",
    "ModelSection",
    "OptimizerSection",
    "ParallelSection",
    "PrecisionSection",
    "Recipe",
    "RecipeError",
    "ScheduleSection",
    "TrainSection",
    "known_names",
]
