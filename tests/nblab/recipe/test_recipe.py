"""Recipe: TOML round trips, dotted overrides, validation that lists every problem."""

import dataclasses
import math
import sys
import tomllib
import types

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import nblab
from nblab.precision import PRECISION_PRESETS, ROLES, precision_problems
from nblab.recipe import (
    RECIPE_PRESETS,
    SECTIONS,
    PrecisionSection,
    Recipe,
    RecipeError,
    known_names,
)


def test_package_exports():
    assert nblab.Recipe is Recipe
    assert nblab.RecipeError is RecipeError
    assert issubclass(RecipeError, ValueError)


# ---------------------------------------------------------------------------
# Named recipes and round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RECIPE_PRESETS))
def test_named_recipe_round_trips(name):
    recipe = Recipe.preset(name)
    assert recipe.name == name
    text = recipe.to_toml()
    again = Recipe.from_toml(text)
    assert again == recipe
    assert again.to_toml() == text
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_gpt_tiny_values():
    r = Recipe.preset("gpt-tiny")
    assert (r.model.name, r.model.flavour, r.data.name) == ("gpt", "tiny", "pydoc")
    assert (r.train.steps, r.train.batch_size, r.train.seq_len) == (300, 16, 128)
    assert (r.optimizer.name, r.optimizer.lr, r.schedule.decay) == ("adamw", 3e-3, "cosine")
    assert r.precision.preset == "bf16"


def test_gpt_debug_is_a_small_cpu_run():
    r = Recipe.preset("gpt-debug")
    assert r.model.flavour == "debug"
    assert r.train.device == "cpu"
    assert r.train.steps <= 30
    assert r.schedule.warmup_steps <= r.train.steps


def test_addition_tiny_uses_the_addition_dataset():
    r = Recipe.preset("addition-tiny")
    assert (r.data.name, r.data.digits, r.model.flavour) == ("addition", 3, "tiny")


def test_named_recipes_return_independent_copies():
    a = Recipe.preset("gpt-tiny")
    a.precision.keep_high_precision.append("layers.0.*")
    assert Recipe.preset("gpt-tiny").precision.keep_high_precision == []


def test_unknown_named_recipe_lists_the_names():
    with pytest.raises(RecipeError) as err:
        Recipe.preset("gpt-tiy")
    msg = str(err.value)
    assert "gpt-debug, gpt-tiny, addition-tiny" in msg
    assert "did you mean 'gpt-tiny'" in msg


def test_defaults_fill_missing_keys():
    r = Recipe.from_toml('name = "x"\n[train]\nsteps = 50\n')
    assert r.train.steps == 50
    assert r.train.batch_size == Recipe().train.batch_size
    assert r.precision == PrecisionSection()


def test_from_toml_reads_a_file(tmp_path):
    path = tmp_path / "r.toml"
    recipe = Recipe.preset("gpt-debug").with_overrides(["precision.preset=mxfp8"])
    path.write_text(recipe.to_toml())
    assert Recipe.from_toml(path) == recipe
    assert Recipe.from_toml(str(path)) == recipe


def test_missing_file_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="a readable TOML file"):
        Recipe.from_toml(tmp_path / "missing.toml")


def test_toml_syntax_error_is_a_recipe_error():
    with pytest.raises(RecipeError, match="valid TOML"):
        Recipe.from_toml("[train\nsteps = 3")


def test_int_in_float_field_is_normalised():
    r = Recipe.from_dict({"optimizer": {"lr": 1, "betas": [0, 0.5]}})
    assert r.optimizer.lr == 1.0 and isinstance(r.optimizer.lr, float)
    assert r.optimizer.betas == (0.0, 0.5)
    assert r == Recipe.from_toml(r.to_toml())


def test_precision_section_resolves():
    r = Recipe.preset("gpt-tiny").with_overrides(
        ["precision.preset=nvfp4", "precision.roles.dgrad_dy=high"]
    )
    plan = r.precision.resolve()
    assert plan.roles["dgrad_dy"] is None
    assert plan.roles["wgrad_dy"].rounding == "sr"
    assert plan.keep_high_precision == ("lm_head", "last:15%")


def test_get_reads_dotted_paths():
    r = Recipe.preset("gpt-tiny")
    assert r.get("train.steps") == 300
    assert r.get("name") == "gpt-tiny"


# Valid recipes, field by field, for the round-trip property.
_finite = dict(allow_nan=False, allow_infinity=False)


@st.composite
def valid_recipes(draw):
    dp_r, dp_s, tp, pp = (draw(st.integers(1, 4)) for _ in range(4))
    accum = draw(st.integers(1, 4))
    steps = draw(st.integers(1, 10**6))
    data_name = draw(st.sampled_from(["pydoc", "addition", "text"]))
    preset = draw(st.sampled_from(list(PRECISION_PRESETS)))
    roles = draw(
        st.dictionaries(
            st.sampled_from(ROLES),
            st.sampled_from(
                ["high", "bf16", "mxfp8", "int8_row", {"rounding": "sr"}, {"base": "nvfp4"}]
            ),
            max_size=3,
        )
    )
    precision = {
        "preset": preset,
        "roles": roles,
        "keep_high_precision": draw(
            st.lists(st.sampled_from(["lm_head", "layers.0.*", "first:1", "last:25%", "!lm_head"]))
        ),
        "backend": draw(st.sampled_from(["auto", "reference", "triton"])),
    }
    assume(not precision_problems(precision))
    return Recipe.from_dict(
        {
            "name": draw(st.text("abcdefgh-_0123456789", min_size=1, max_size=20)),
            "model": {
                "flavour": draw(st.sampled_from(["debug", "tiny", "small", "125m", "1b"])),
                "tie_embeddings": draw(st.booleans()),
            },
            "data": {
                "name": data_name,
                "path": __file__ if data_name == "text" else "",  # must exist
                # addition has its own char vocabulary
                "tokenizer": draw(st.sampled_from(["char", "byte"]))
                if data_name != "addition"
                else "char",
                "val_fraction": draw(st.floats(1e-6, 0.999, **_finite)),
                "digits": draw(st.integers(1, 18)),
            },
            "optimizer": {
                "name": draw(st.sampled_from(["adamw", "adam", "sgd"])),
                "lr": draw(st.floats(1e-9, 10, **_finite)),
                "betas": [draw(st.floats(0, 0.999999, **_finite)) for _ in range(2)],
                "weight_decay": draw(st.floats(0, 1e3, **_finite)),
                "eps": draw(st.floats(1e-30, 0.5, **_finite)),
            },
            "schedule": {
                "warmup_steps": draw(st.integers(0, 2 * steps)),
                "decay": draw(st.sampled_from(["cosine", "linear", "constant"])),
                "min_lr_ratio": draw(st.floats(0, 1, **_finite)),
            },
            "train": {
                "steps": steps,
                "batch_size": dp_r * dp_s * accum * draw(st.integers(1, 64)),
                "seq_len": draw(st.integers(1, 8192)),
                "grad_accum": accum,
                "grad_clip": draw(st.floats(0, 1e6, **_finite)),
                "seed": draw(st.integers(0, 2**63 - 1)),
                "device": draw(st.sampled_from(["auto", "cpu", "cuda"])),
                "dtype": draw(st.sampled_from(["float32", "bfloat16"])),
                "compile": draw(st.booleans()),
            },
            "precision": precision,
            "parallel": {
                "dp_replicate": dp_r,
                "dp_shard": dp_s,
                "tp": tp,
                "pp": pp,
                "nproc": dp_r * dp_s * tp * pp,
            },
            "eval": {"interval": draw(st.integers(0, 10**6)), "batches": draw(st.integers(1, 99))},
            "checkpoint": {
                "interval": draw(st.integers(0, 10**6)),
                "keep": draw(st.integers(1, 9)),
            },
            "metrics": {
                "log_interval": draw(st.integers(1, 1000)),
                "stats_interval": draw(st.integers(0, 1000)),
                "histogram_interval": draw(st.integers(0, 1000)),
            },
        }
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(valid_recipes())
def test_round_trip_property(recipe):
    text = recipe.to_toml()
    again = Recipe.from_toml(text)
    assert again == recipe
    assert again.to_toml() == text
    assert Recipe.from_dict(recipe.to_dict()) == recipe


# ---------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------

# (override, path read back with Recipe.get, expected value)
OVERRIDES = [
    ("precision.preset=nvfp4", "precision.preset", "nvfp4"),
    ("train.steps=200", "train.steps", 200),
    ("train.steps=1_000", "train.steps", 1000),
    ("optimizer.lr=3e-4", "optimizer.lr", 3e-4),
    ("optimizer.lr=1", "optimizer.lr", 1.0),
    ("optimizer.lr=.5", "optimizer.lr", 0.5),
    ("optimizer.betas=[0.8, 0.99]", "optimizer.betas", (0.8, 0.99)),
    ("optimizer.betas=0.8,0.99", "optimizer.betas", (0.8, 0.99)),
    ("train.compile=true", "train.compile", True),
    ("train.compile=False", "train.compile", False),
    ("model.tie_embeddings=false", "model.tie_embeddings", False),
    ("train.device=cpu", "train.device", "cpu"),
    ('train.device="cuda"', "train.device", "cuda"),
    ("name=my-run", "name", "my-run"),
    (" train.seq_len = 64 ", "train.seq_len", 64),
    (
        'precision.keep_high_precision=["lm_head","layers.0.*"]',
        "precision.keep_high_precision",
        ["lm_head", "layers.0.*"],
    ),
    (
        "precision.keep_high_precision=lm_head,last:2",
        "precision.keep_high_precision",
        ["lm_head", "last:2"],
    ),
    ("precision.keep_high_precision=", "precision.keep_high_precision", []),
    (f"data.name=text:{__file__}", "data.name", "text"),
    (f"data.name=text:{__file__}", "data.path", __file__),
    ("data.name=addition", "data.name", "addition"),
    ("precision.roles.dgrad_dy=high", "precision.roles", {"dgrad_dy": "high"}),
    ("precision.roles.fwd_x=mxfp8", "precision.roles", {"fwd_x": "mxfp8"}),
    ("precision.roles.fwd_x.rounding=sr", "precision.roles", {"fwd_x": {"rounding": "sr"}}),
    (
        'precision.roles.fwd_x={base = "mxfp4", rule = "rceil"}',
        "precision.roles",
        {"fwd_x": {"base": "mxfp4", "rule": "rceil"}},
    ),
    ('precision.roles={fwd_w = "high"}', "precision.roles", {"fwd_w": "high"}),
    ("parallel.nproc=1", "parallel.nproc", 1),
]


@pytest.mark.parametrize(("override", "path", "expected"), OVERRIDES)
def test_override(override, path, expected):
    recipe = Recipe.preset("gpt-tiny").with_overrides([override])
    assert recipe.get(path) == expected
    assert type(recipe.get(path)) is type(expected)


def test_overrides_return_a_new_recipe():
    base = Recipe.preset("gpt-tiny")
    new = base.with_overrides(["train.steps=5"])
    assert base.train.steps == 300 and new.train.steps == 5


def test_dict_overrides_take_typed_and_string_values():
    r = Recipe.preset("gpt-tiny").with_overrides(
        {"train.steps": 7, "optimizer.lr": "1e-4", "precision.keep_high_precision": ["x.*"]}
    )
    assert (r.train.steps, r.optimizer.lr) == (7, 1e-4)
    assert r.precision.keep_high_precision == ["x.*"]


def test_role_field_override_builds_on_a_named_role():
    r = Recipe.preset("gpt-tiny").with_overrides(
        ["precision.roles.fwd_x=mxfp4", "precision.roles.fwd_x.rule=rceil"]
    )
    assert r.precision.roles == {"fwd_x": {"base": "mxfp4", "rule": "rceil"}}
    assert r.precision.resolve().roles["fwd_x"].rule == "rceil"


def test_several_overrides_apply_in_order():
    r = Recipe.preset("gpt-tiny").with_overrides(
        ["train.steps=10", "train.steps=20", "schedule.warmup_steps=20"]
    )
    assert (r.train.steps, r.schedule.warmup_steps) == (20, 20)


# (override, expected substring of the RecipeError message)
BAD_OVERRIDES = [
    ("train.steps=abc", "train.steps: 'abc' -> an integer >= 1"),
    ("train.steps=2.5", "train.steps: '2.5' -> an integer >= 1"),
    ("train.steps=0", "train.steps: 0 -> an integer >= 1"),
    ("train.compile=yes", "train.compile: 'yes' -> true or false"),
    ("optimizer.lr=fast", "optimizer.lr: 'fast' -> a number in (0, 10]"),
    ("optimizer.betas=[0.9]", "optimizer.betas: (0.9,) -> a list of 2 numbers"),
    ("trian.steps=3", "unknown key 'trian' in [recipe]; did you mean 'train'?"),
    ("train.stpes=3", "unknown key 'stpes' in [train]; did you mean 'steps'?"),
    ("train.steps.x=3", "train.steps is a single value, not a table"),
    ("train=3", "a field of [train]"),
    ("train.steps", '"section.field=value"'),
    ("precision.roles.fwd_z=high", "unknown role 'fwd_z'"),
    ("precision.roles.fwd_x.rounding=up", "QuantSpec.rounding='up'"),
    ("precision.roles.fwd_x={rounding = ", "a TOML inline table"),
    ("data.name=text:", "data.path: '' -> a text file"),
]


@pytest.mark.parametrize(("override", "message"), BAD_OVERRIDES)
def test_bad_override(override, message):
    with pytest.raises(RecipeError) as err:
        Recipe.preset("gpt-tiny").with_overrides([override])
    assert message in str(err.value)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

# (partial recipe, expected substring of the RecipeError message)
INVALID = [
    ({"name": ""}, "name: '' -> a non-empty string"),
    ({"name": 3}, "name: 3 -> a non-empty string"),
    ({"model": {"name": "llama"}}, "model.name: 'llama' -> one of gpt"),
    ({"model": {"flavour": "tinny"}}, "did you mean 'tiny'"),
    ({"model": {"flavour": "huge"}}, "model.flavour: 'huge' -> one of debug, tiny"),
    ({"model": {"tie_embeddings": "yes"}}, "model.tie_embeddings: 'yes' -> true or false"),
    ({"model": {"tie_embeddings": 1}}, "model.tie_embeddings: 1 -> true or false"),
    ({"model": "gpt"}, "model: 'gpt' -> a table of model settings"),
    ({"data": {"name": "wiki"}}, "data.name: 'wiki' -> one of"),
    ({"data": {"name": "text"}}, "data.path: '' -> a text file for data.name='text'"),
    ({"data": {"name": "hf"}}, "a folder saved by datasets' save_to_disk for data.name='hf'"),
    ({"data": {"name": "files"}}, "data.path: '' -> a file, folder or glob of corpus files"),
    ({"data": {"name": "hf", "path": "roneneldan/TinyStories"}}, "never downloads"),
    ({"data": {"name": "text", "path": "/no/such.txt"}}, "data.path: '/no/such.txt' -> an exist"),
    ({"data": {"path": "/tmp"}}, "data.path: '/tmp' -> empty: dataset 'pydoc' takes no path"),
    ({"data": {"tokenizer": "bpe:512"}}, "char or byte for data.name='pydoc'; bpe:N and"),
    ({"data": {"text_column": ""}}, "data.text_column: '' -> a column name (not empty)"),
    ({"data": {"text_documents": "page"}}, "data.text_documents: 'page' -> one of line,"),
    ({"data": {"split_seed": -1}}, "data.split_seed: -1 -> an integer >= 0"),
    ({"data": {"tokenizer": "bpe"}}, "data.tokenizer: 'bpe' -> one of"),
    ({"data": {"val_fraction": 0.0}}, "data.val_fraction: 0.0 -> a number in (0, 1)"),
    ({"data": {"val_fraction": 1.5}}, "data.val_fraction: 1.5 -> a number in (0, 1)"),
    ({"data": {"digits": 0}}, "data.digits: 0 -> an integer in 1..18"),
    ({"optimizer": {"name": "lion"}}, "optimizer.name: 'lion' -> one of adamw, adam, sgd"),
    ({"optimizer": {"lr": 0.0}}, "optimizer.lr: 0.0 -> a number in (0, 10]"),
    ({"optimizer": {"lr": math.nan}}, "optimizer.lr: nan -> a number in (0, 10]"),
    ({"optimizer": {"lr": math.inf}}, "optimizer.lr: inf"),
    ({"optimizer": {"lr": True}}, "optimizer.lr: True -> a number"),
    ({"optimizer": {"betas": [0.9, 1.0]}}, "each in [0, 1)"),
    ({"optimizer": {"betas": [0.9, "x"]}}, "optimizer.betas: (0.9, 'x') -> a list of 2"),
    ({"optimizer": {"weight_decay": -0.1}}, "optimizer.weight_decay: -0.1 -> a number >= 0"),
    ({"optimizer": {"eps": 0.0}}, "optimizer.eps: 0.0 -> a number in (0, 1)"),
    ({"schedule": {"decay": "step"}}, "schedule.decay: 'step' -> one of cosine, linear, constant"),
    ({"schedule": {"min_lr_ratio": 2.0}}, "schedule.min_lr_ratio: 2.0 -> a number in [0, 1]"),
    ({"schedule": {"warmup_steps": -1}}, "schedule.warmup_steps: -1 -> an integer >= 0"),
    ({"train": {"steps": -5}}, "train.steps: -5 -> an integer >= 1"),
    ({"train": {"steps": 2**63}}, "train.steps"),
    ({"train": {"batch_size": 1.0}}, "train.batch_size: 1.0 -> an integer >= 1"),
    ({"train": {"grad_accum": 0}}, "train.grad_accum: 0 -> an integer >= 1"),
    ({"train": {"grad_clip": -1.0}}, "train.grad_clip: -1.0 -> a number >= 0"),
    ({"train": {"seed": -1}}, "train.seed: -1 -> an integer >= 0"),
    ({"train": {"device": "gpu"}}, "train.device: 'gpu' -> one of auto, cpu, cuda"),
    ({"train": {"dtype": "float16"}}, "train.dtype: 'float16' -> one of float32, bfloat16"),
    ({"train": {"compile": "no"}}, "train.compile: 'no' -> true or false"),
    (
        {"train": {"batch_size": 10, "grad_accum": 4}},
        "train.batch_size: 10 -> a multiple of dp_replicate * dp_shard * grad_accum = 4",
    ),
    ({"precision": {"preset": "fp4"}}, "precision.preset: 'fp4' -> one of bf16"),
    ({"precision": {"preset": 4}}, "precision.preset: 4 -> a string"),
    ({"precision": {"backend": "cuda"}}, "precision.backend: 'cuda' -> one of auto, reference"),
    ({"precision": {"roles": {"fwdx": "high"}}}, "did you mean 'fwd_x'"),
    ({"precision": {"roles": {"fwd_x": "fp9"}}}, "precision.roles.fwd_x: 'fp9'"),
    ({"precision": {"roles": {"fwd_x": {"block": 3}}}}, "QuantSpec.block=3"),
    ({"precision": {"roles": ["fwd_x"]}}, "precision.roles: ['fwd_x'] -> a table"),
    ({"precision": {"roles": {"fwd_x": {"element": "e9m9"}}}}, "not a known element format"),
    (
        {"precision": {"preset": "nvfp4", "roles": {"wgrad_dy": "nvfp4"}}},
        "precision.roles.wgrad_dy: 'hadamard=0, hadamard_seed=0' -> the same hadamard",
    ),
    ({"precision": {"keep_high_precision": ["last:x"]}}, "keep_high_precision[0]: 'last:x'"),
    ({"precision": {"keep_high_precision": [1]}}, "precision.keep_high_precision: [1]"),
    ({"parallel": {"tp": 0}}, "parallel.tp: 0 -> an integer >= 1"),
    (
        {"parallel": {"pp_schedule": "zigzag"}},
        "parallel.pp_schedule: 'zigzag' -> one of gpipe, 1f1b",
    ),
    (
        {"parallel": {"tp": 2, "dp_shard": 2}},
        "parallel.nproc: 1 -> dp_replicate=1 * dp_shard=2 * tp=2 * pp=1 = 4",
    ),
    ({"eval": {"interval": -1}}, "eval.interval: -1 -> an integer >= 0"),
    ({"eval": {"batches": 0}}, "eval.batches: 0 -> an integer >= 1"),
    ({"checkpoint": {"keep": 0}}, "checkpoint.keep: 0 -> an integer >= 1"),
    ({"metrics": {"log_interval": 0}}, "metrics.log_interval: 0 -> an integer >= 1"),
    ({"metrics": {"histogram_interval": "often"}}, "metrics.histogram_interval: 'often'"),
    ({"trian": {"steps": 3}}, "unknown key 'trian' in [recipe]; did you mean 'train'?"),
    ({"train": {"setps": 3}}, "unknown key 'setps' in [train]; did you mean 'steps'?"),
    ({"zzz": 1}, "unknown key 'zzz' in [recipe]; accepted: name, model, data"),
    ({"metrics": {"qqq": 1}}, "unknown key 'qqq' in [metrics]; accepted: log_interval"),
]


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid_recipe(data, message):
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict(data)
    assert message in str(err.value)
    assert err.value.problems


def test_one_error_lists_every_problem():
    text = """
name = "bad"
[trian]
steps = 3
[train]
steps = 0
device = "gpu"
[optimizer]
lr = -1.0
[precision]
preset = "nvfp5"
keep_high_precision = ["last:0"]
[parallel]
tp = 2
"""
    with pytest.raises(RecipeError) as err:
        Recipe.from_toml(text)
    paths = [p[0] for p in err.value.problems]
    # unknown keys first, then fields in section order
    assert paths == [
        "trian",
        "optimizer.lr",
        "train.steps",
        "train.device",
        "precision.preset",
        "precision.keep_high_precision[0]",
        "parallel.nproc",
    ]
    msg = str(err.value)
    assert msg.startswith("invalid recipe (7 problems):")
    assert "  train.device: 'gpu' -> one of auto, cpu, cuda" in msg.splitlines()
    assert ("optimizer.lr", -1.0, "a number in (0, 10]") in err.value.problems


def test_validate_checks_a_recipe_edited_in_place():
    r = Recipe.preset("gpt-tiny")
    assert r.validate() is r
    r.train.steps = "many"
    r.optimizer.lr = -3.0
    with pytest.raises(RecipeError) as err:
        r.validate()
    assert [p[0] for p in err.value.problems] == ["optimizer.lr", "train.steps"]


def test_unknown_keys_in_overrides_and_toml_agree():
    with pytest.raises(RecipeError) as a:
        Recipe.from_toml("[precison]\npreset = 'nvfp4'\n")
    with pytest.raises(RecipeError) as b:
        Recipe().with_overrides(["precison.preset=nvfp4"])
    assert "did you mean 'precision'?" in str(a.value)
    assert "did you mean 'precision'?" in str(b.value)


def _fake_registry_modules(monkeypatch, models, flavours, datasets):
    kinds = types.ModuleType("nblab.models")
    kinds.MODEL_KINDS = models
    gpt = types.ModuleType("nblab.models.gpt")
    gpt.FLAVOURS = flavours
    data = types.ModuleType("nblab.train.data")
    data.DATASETS = datasets
    monkeypatch.setitem(sys.modules, "nblab.models", kinds)
    monkeypatch.setitem(sys.modules, "nblab.models.gpt", gpt)
    monkeypatch.setitem(sys.modules, "nblab.train.data", data)


def test_names_are_checked_against_the_registries(monkeypatch):
    _fake_registry_modules(monkeypatch, {"mamba": 0}, {"xl": 0}, {"owt": 0})
    with pytest.raises(RecipeError) as err:
        Recipe().validate()
    problems = {p[0]: p[2] for p in err.value.problems}
    assert problems["model.name"] == "one of mamba"
    assert problems["model.flavour"] == "one of xl"
    assert problems["data.name"] == "one of owt"
    assert "data.tokenizer" not in problems  # no TOKENIZERS there: not checked
    r = Recipe.from_dict({"model": {"name": "mamba", "flavour": "xl"}, "data": {"name": "owt"}})
    assert r.model.name == "mamba"


def test_missing_registry_module_skips_the_check(monkeypatch):
    # the models package and the modules built on it (data, weights) are absent
    for name in ("nblab.models", "nblab.models.gpt", "nblab.train.data", "nblab.train.weights"):
        monkeypatch.setitem(sys.modules, name, None)
    assert known_names("model") is None
    assert known_names("dataset") is None
    assert Recipe.from_dict({"model": {"name": "anything", "flavour": "any"}}).model.name == (
        "anything"
    )


def test_real_registries_hold_the_preset_names():
    for name in RECIPE_PRESETS:
        r = Recipe.preset(name)
        assert r.model.name in known_names("model")
        assert r.model.flavour in known_names("flavour")
        assert r.data.name in known_names("dataset")


# ---------------------------------------------------------------------------
# Fuzz: random dotted overrides either validate or raise RecipeError
# ---------------------------------------------------------------------------

_PATHS = ["name"] + [
    f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
]
_PATHS += [f"precision.roles.{r}" for r in ROLES] + [
    f"precision.roles.{r}.{k}" for r in ROLES for k in ("rounding", "hadamard", "block", "base")
]
_VALUES = [
    "0",
    "1",
    "-1",
    "3",
    "16",
    "32",
    "1e-3",
    "3e-4",
    "0.5",
    "nan",
    "inf",
    "true",
    "false",
    "",
    "high",
    "nvfp4",
    "mxfp8",
    "sr",
    "rne",
    "cpu",
    "cuda",
    "text:/x",
    "hf:",
    "[1, 2]",
    '["lm_head"]',
    "last:15%",
    '{rounding = "sr"}',
    "{",
    "[",
    '"',
    "'x'",
    "tiny",
    "debug",
]
_path = st.one_of(
    st.sampled_from(_PATHS),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", max_size=25),
)
_raw = st.one_of(st.sampled_from(_VALUES), st.text(max_size=20))
_typed = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=10),
    st.lists(st.one_of(st.text(max_size=5), st.floats(0, 1)), max_size=3),
    st.dictionaries(st.sampled_from(list(ROLES) + ["x"]), st.text(max_size=6), max_size=2),
)


def _check_outcome(make):
    try:
        recipe = make()
    except RecipeError as err:
        assert err.problems
        return
    recipe.validate()
    assert Recipe.from_toml(recipe.to_toml()) == recipe


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_path, _raw), min_size=1, max_size=4))
def test_fuzz_string_overrides(items):
    base = Recipe.preset("gpt-debug")
    _check_outcome(lambda: base.with_overrides([f"{p}={v}" for p, v in items]))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_path, st.one_of(_raw, _typed), min_size=1, max_size=4))
def test_fuzz_dict_overrides(mapping):
    base = Recipe.preset("gpt-debug")
    _check_outcome(lambda: base.with_overrides(mapping))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_toml_text(text):
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        with pytest.raises(RecipeError):
            Recipe.from_toml(text)
        return
    _check_outcome(lambda: Recipe.from_toml(text))
