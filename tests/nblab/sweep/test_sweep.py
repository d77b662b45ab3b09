"""Sweep: expansion tables, one error for every bad point, safe exclude rules, TOML."""

import tomllib
from pathlib import Path

import pytest

from nblab.recipe import Recipe, RecipeError
from nblab.sweep import Sweep, SweepError, SweepPoint

SWEEPS = Path(__file__).resolve().parents[3] / "sweeps"


@pytest.fixture(scope="module")
def tiny():
    return Recipe.preset("gpt-tiny")


def names(sweep):
    return [p.name for p in sweep.expand()]


# ---------------------------------------------------------------------------
# Expansion table: axes -> exact point names, in order
# ---------------------------------------------------------------------------

EXPANSIONS = {
    "one grid axis": (
        {"grid": {"precision.preset": ["bf16", "nvfp4"]}},
        ["preset=bf16", "preset=nvfp4"],
    ),
    "grid product, first axis outermost": (
        {"grid": {"precision.preset": ["bf16", "nvfp4"], "optimizer.lr": [3e-4, 1e-3]}},
        [
            "preset=bf16,lr=3e-4",
            "preset=bf16,lr=1e-3",
            "preset=nvfp4,lr=3e-4",
            "preset=nvfp4,lr=1e-3",
        ],
    ),
    "zip steps together": (
        {"zip": {"optimizer.lr": [1e-3, 3e-3, 0.01], "train.steps": [100, 200, 300]}},
        ["lr=1e-3,steps=100", "lr=3e-3,steps=200", "lr=0.01,steps=300"],
    ),
    "grid x zip": (
        {
            "grid": {"precision.preset": ["bf16", "mxfp4"]},
            "zip": {"optimizer.lr": [1e-3, 2e-3], "train.seed": [1, 2]},
        },
        [
            "preset=bf16,lr=1e-3,seed=1",
            "preset=bf16,lr=2e-3,seed=2",
            "preset=mxfp4,lr=1e-3,seed=1",
            "preset=mxfp4,lr=2e-3,seed=2",
        ],
    ),
    "values formatted compactly": (
        {
            "grid": {
                "train.compile": [True, False],
                "precision.keep_high_precision": [[], ["lm_head", "layers.3.*"]],
                "schedule.min_lr_ratio": [0.1, 1e-5],
            }
        },
        [
            "compile=true,keep_high_precision=none,min_lr_ratio=0.1",
            "compile=true,keep_high_precision=none,min_lr_ratio=1e-5",
            "compile=true,keep_high_precision=lm_head+layers.3.*,min_lr_ratio=0.1",
            "compile=true,keep_high_precision=lm_head+layers.3.*,min_lr_ratio=1e-5",
            "compile=false,keep_high_precision=none,min_lr_ratio=0.1",
            "compile=false,keep_high_precision=none,min_lr_ratio=1e-5",
            "compile=false,keep_high_precision=lm_head+layers.3.*,min_lr_ratio=0.1",
            "compile=false,keep_high_precision=lm_head+layers.3.*,min_lr_ratio=1e-5",
        ],
    ),
    "shared last component gets more of the path": (
        {
            "grid": {
                "precision.roles.fwd_x.rounding": ["rne", "sr"],
                "precision.roles.wgrad_dy.rounding": ["sr"],
                "model.name": ["gpt"],
                "data.name": ["pydoc"],
            }
        },
        [
            "fwd_x.rounding=rne,wgrad_dy.rounding=sr,model.name=gpt,data.name=pydoc",
            "fwd_x.rounding=sr,wgrad_dy.rounding=sr,model.name=gpt,data.name=pydoc",
        ],
    ),
    "exclude string": (
        {
            "grid": {"precision.preset": ["bf16", "nvfp4"], "optimizer.lr": [1e-3, 3e-3]},
            "exclude": ["precision.preset == 'bf16' and optimizer.lr > 2e-3"],
        },
        ["preset=bf16,lr=1e-3", "preset=nvfp4,lr=1e-3", "preset=nvfp4,lr=3e-3"],
    ),
    "exclude with in, not, or, chained compare, negative literal": (
        {
            "grid": {"precision.preset": ["bf16", "mxfp8", "nvfp4"], "train.steps": [10, 50]},
            "exclude": [
                "precision.preset in ['mxfp8', 'bf16'] and not train.steps < 20",
                "-1 < train.steps < 20 and (precision.preset == 'nvfp4' or false)",
            ],
        },
        ["preset=bf16,steps=10", "preset=mxfp8,steps=10", "preset=nvfp4,steps=50"],
    ),
    "exclude callable over the axis values": (
        {
            "grid": {"precision.preset": ["bf16", "nvfp4"], "train.steps": [10, 20]},
            "exclude": [lambda v: v["precision.preset"] == "nvfp4" and v["train.steps"] == 20],
        },
        ["preset=bf16,steps=10", "preset=bf16,steps=20", "preset=nvfp4,steps=10"],
    ),
    "no axes: the base alone": ({}, ["base"]),
}


@pytest.mark.parametrize("case", list(EXPANSIONS))
def test_expansion_table(case, tiny):
    kwargs, expected = EXPANSIONS[case]
    sweep = Sweep(tiny, name="s", **kwargs)
    points = sweep.expand()
    assert [p.name for p in points] == expected
    assert len(sweep) == len(expected)
    for point in points:
        assert isinstance(point, SweepPoint)
        assert point.recipe.name == f"s/{point.name}"
        assert point.recipe.validate() is point.recipe
        for path, value in point.overrides.items():
            got = point.recipe.get(path)
            assert list(got) == value if isinstance(got, tuple) else got == value


def test_point_recipe_is_base_with_its_overrides(tiny):
    base = tiny.with_overrides({"train.steps": 7})
    sweep = Sweep(base, grid={"precision.preset": ["mxfp4"], "optimizer.lr": [2e-3]})
    (point,) = sweep.expand()
    assert point.overrides == {"precision.preset": "mxfp4", "optimizer.lr": 2e-3}
    assert point.recipe == base.with_overrides({**point.overrides, "name": point.recipe.name})
    assert point.recipe.train.steps == 7
    assert point.recipe.name == "gpt-tiny/preset=mxfp4,lr=2e-3"  # sweep name: base's


def test_string_values_are_typed_by_the_recipe(tiny):
    sweep = Sweep(tiny, grid={"optimizer.lr": ["3e-4"], "precision.keep_high_precision": ["a,b"]})
    (point,) = sweep.expand()
    assert point.name == "lr=3e-4,keep_high_precision=a+b"
    assert point.overrides == {"optimizer.lr": 3e-4, "precision.keep_high_precision": ["a", "b"]}
    assert point.recipe.optimizer.lr == 3e-4


def test_base_may_be_a_preset_name():
    sweep = Sweep("gpt-debug", grid={"train.steps": [5]})
    assert sweep.name == "gpt-debug"
    assert sweep.expand()[0].recipe.model.flavour == "debug"


# ---------------------------------------------------------------------------
# Random axes
# ---------------------------------------------------------------------------

RANDOM = {
    "optimizer.lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "schedule.min_lr_ratio": {"low": 0.05, "high": 0.5},
    "train.seed": {"low": 0, "high": 3, "int": True},
    "schedule.warmup_steps": {"low": 1, "high": 1000, "int": True, "log": True},
    "precision.preset": ["nvfp4", "mxfp4"],
}


def test_random_is_deterministic_by_seed_and_within_bounds(tiny):
    a = Sweep(tiny, random=RANDOM, samples=40, seed=3).expand()
    b = Sweep(tiny, random=RANDOM, samples=40, seed=3).expand()
    c = Sweep(tiny, random=RANDOM, samples=40, seed=4).expand()
    assert [p.name for p in a] == [p.name for p in b]
    assert [p.overrides for p in a] == [p.overrides for p in b]
    assert [p.name for p in a] != [p.name for p in c]
    assert len({p.name for p in a}) == 40
    values = {path: [p.overrides[path] for p in a] for path in RANDOM}
    assert all(1e-4 <= v <= 1e-2 and isinstance(v, float) for v in values["optimizer.lr"])
    assert all(0.05 <= v <= 0.5 for v in values["schedule.min_lr_ratio"])
    assert set(values["train.seed"]) == {0, 1, 2, 3}  # int range: both ends included
    assert all(type(v) is int and 1 <= v <= 1000 for v in values["schedule.warmup_steps"])
    assert set(values["precision.preset"]) == {"nvfp4", "mxfp4"}
    # log-uniform: about half of the draws below the geometric midpoint 1e-3
    below = sum(v < 1e-3 for v in values["optimizer.lr"])
    assert 10 <= below <= 30
    # sampled floats keep 4 significant digits, so the name is the value
    assert all(float(f"{v:.4g}") == v for v in values["optimizer.lr"])
    assert all(p.recipe.optimizer.lr == p.overrides["optimizer.lr"] for p in a)


def test_random_times_grid_repeats_the_same_samples(tiny):
    sweep = Sweep(
        tiny,
        grid={"precision.preset": ["bf16", "nvfp4"]},
        random={"optimizer.lr": {"low": 1e-3, "high": 2e-3}},
        samples=3,
        seed=0,
    )
    points = sweep.expand()
    assert len(sweep) == 6
    lrs = [p.overrides["optimizer.lr"] for p in points]
    assert lrs[:3] == lrs[3:]
    assert [p.overrides["precision.preset"] for p in points] == ["bf16"] * 3 + ["nvfp4"] * 3
    mantissa = f"{lrs[0]:.3e}".split("e")[0].rstrip("0").rstrip(".")
    assert points[0].name == f"preset=bf16,lr={mantissa}e-3"


def test_random_cannot_find_enough_distinct_samples(tiny):
    with pytest.raises(SweepError, match="at most 2 distinct samples"):
        Sweep(tiny, random={"precision.preset": ["nvfp4", "mxfp4"]}, samples=3)


@pytest.mark.parametrize(
    "random, samples, message",
    [
        ({"optimizer.lr": {"low": 1e-2, "high": 1e-4}}, 1, "low <= high"),
        ({"optimizer.lr": {"low": 0.0, "high": 1e-2, "log": True}}, 1, "> 0 with log"),
        ({"optimizer.lr": {"low": 1e-4, "hihg": 1e-2}}, 1, "did you mean 'high'"),
        ({"train.seed": {"low": 0.2, "high": 0.7, "int": True}}, 1, "an integer between"),
        ({"optimizer.lr": {"low": 1e-4, "high": 1e-2}}, 0, "an integer >= 1 with random"),
        ({"optimizer.lr": []}, 1, "a non-empty list to choose from"),
        ({}, 2, "0 when there are no random axes"),
    ],
)
def test_bad_random_specs(tiny, random, samples, message):
    with pytest.raises(SweepError, match=message):
        Sweep(tiny, random=random, samples=samples)


# ---------------------------------------------------------------------------
# Errors: every bad point at once, structure, names
# ---------------------------------------------------------------------------


def test_every_bad_point_in_one_error(tiny):
    sweep = Sweep(
        tiny,
        name="s",
        zip={
            "precision.preset": ["nvfp5", "bf16", "mxfp9", "nvfp4"],
            "optimizer.lr": [1e-3, 3e-3, 1e-3, 20.0],
        },
    )
    with pytest.raises(SweepError) as info:
        sweep.expand()
    err = info.value
    assert list(err.bad_points) == [
        "preset=nvfp5,lr=1e-3",
        "preset=mxfp9,lr=1e-3",
        "preset=nvfp4,lr=20",
    ]
    assert err.bad_points["preset=nvfp5,lr=1e-3"][0][:2] == ("precision.preset", "nvfp5")
    assert "did you mean 'nvfp4'" in err.bad_points["preset=nvfp5,lr=1e-3"][0][2]
    assert err.bad_points["preset=nvfp4,lr=20"] == [("optimizer.lr", 20.0, "a number in (0, 10]")]
    text = str(err)
    assert "3 of 4 points invalid" in text
    for name in err.bad_points:
        assert name in text
    assert "preset=bf16,lr=3e-3" not in text
    assert isinstance(err, ValueError)


def test_structural_problems_all_reported(tiny):
    with pytest.raises(SweepError) as info:
        Sweep(
            tiny,
            name="my sweep",
            grid={"optimizer.lrr": [1e-3], "train.steps": [], "name": ["x"]},
            zip={"optimizer.lr": [1e-3, 2e-3], "train.seed": [1, 2, 3]},
        )
    where = [p[0] for p in info.value.problems]
    assert where == ["name", "grid.optimizer.lrr", "grid.train.steps", "grid.name", "zip"]
    problems = {p[0]: p for p in info.value.problems}
    assert "did you mean 'optimizer.lr'" in problems["grid.optimizer.lrr"][2]
    assert problems["zip"][1] == {"optimizer.lr": 2, "train.seed": 3}
    assert "{'optimizer.lr': 2, 'train.seed': 3}" in str(info.value)
    assert "'my sweep'" in str(info.value)


@pytest.mark.parametrize("name", ["a/b", "../up", "..", "sp ace", "ü", ""])
def test_unsafe_sweep_names(tiny, name):
    with pytest.raises(SweepError, match="letters, digits"):
        Sweep(tiny, name=name, grid={"train.steps": [1]})


def test_default_name_must_be_safe_too():
    base = Recipe.preset("gpt-debug").with_overrides({"name": "my recipe"})
    with pytest.raises(SweepError, match="pass name="):
        Sweep(base, grid={"train.steps": [1]})
    assert Sweep(base, name="ok_1.2-x", grid={"train.steps": [1]}).name == "ok_1.2-x"


def test_axis_in_two_kinds(tiny):
    with pytest.raises(SweepError, match="optimizer.lr: 'grid and zip' -> one axis per field"):
        Sweep(tiny, grid={"optimizer.lr": [1e-3]}, zip={"optimizer.lr": [2e-3]})


@pytest.mark.parametrize(
    "kwargs, collided",
    [
        ({"grid": {"optimizer.lr": [1e-3, 0.001]}}, "lr=1e-3"),
        ({"grid": {"precision.preset": ["nvfp4", "nvfp4"]}}, "preset=nvfp4"),
        ({"zip": {"train.steps": [5, 5], "train.seed": [1, 1]}}, "steps=5,seed=1"),
    ],
)
def test_name_collisions(tiny, kwargs, collided):
    sweep = Sweep(tiny, **kwargs)
    with pytest.raises(SweepError) as info:
        sweep.expand()
    assert info.value.problems == [
        ("point names", collided, "unique names: 2 points share it (repeated values?)")
    ]


def test_excluding_everything_is_an_error(tiny):
    with pytest.raises(SweepError, match="rules that keep some point"):
        Sweep(tiny, grid={"train.steps": [1, 2]}, exclude=["train.steps > 0"]).expand()


# ---------------------------------------------------------------------------
# Exclude expressions are safe
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule, message",
    [
        ("__import__('os')", "a function call is not allowed"),
        ("optimizer.lr.__class__", "attribute access is not allowed"),
        ("().__class__.__bases__", "attribute access is not allowed"),
        ("'x'.upper() == 'X'", "a function call is not allowed"),
        ("optimizer.lr * 2 > 1", "arithmetic is not allowed"),
        ("precision.preset[0] == 'b'", "indexing is not allowed"),
        ("(lambda: 1)()", "a function call is not allowed"),
        ("optimizer.lr is None", "the operator Is is not allowed"),
        ("[x for x in 'ab']", "ListComp is not allowed"),
        ("optimzer.lr > 1", "did you mean 'optimizer.lr'"),
        ("train.steps > 1", "an axis of this sweep (precision.preset, optimizer.lr)"),
        ("optimizer.lr >", "a valid expression"),
        ("import os", "a valid expression"),
    ],
)
def test_unsafe_or_unknown_exclude_rejected(tiny, rule, message):
    grid = {"precision.preset": ["bf16"], "optimizer.lr": [1e-3]}
    with pytest.raises(SweepError, match="exclude") as info:
        Sweep(tiny, grid=grid, exclude=[rule])
    assert info.value.problems[0][:2] == ("exclude[0]", rule)
    assert message in info.value.problems[0][2]


def test_exclude_that_cannot_compare_names_the_point(tiny):
    sweep = Sweep(tiny, grid={"precision.preset": ["bf16"]}, exclude=["precision.preset > 1"])
    with pytest.raises(SweepError, match="a rule that works on preset=bf16: TypeError"):
        sweep.expand()


# ---------------------------------------------------------------------------
# TOML, overrides, describe
# ---------------------------------------------------------------------------

STUDY = """
name = "fp4-study"
base = "gpt-tiny"
[set]
"train.steps" = 200
[grid]
"precision.preset" = ["bf16", "mxfp8", "nvfp4", "mxfp4"]
"optimizer.lr" = [1e-3, 3e-3]
[zip]
"train.seed" = [1, 2]
"data.val_fraction" = [0.1, 0.2]
[random]
samples = 2
seed = 0
"schedule.min_lr_ratio" = { low = 0.01, high = 0.5, log = true }
exclude = ["precision.preset == 'bf16' and optimizer.lr > 2e-3"]
"""


def test_toml_sweep_expands_and_round_trips():
    sweep = Sweep.from_toml(STUDY)
    assert (sweep.name, sweep.base.train.steps, sweep.base.name) == ("fp4-study", 200, "gpt-tiny")
    points = sweep.expand()
    assert len(points) == len(sweep) == (4 * 2 - 1) * 2 * 2
    assert points[0].name.startswith("preset=bf16,lr=1e-3,seed=1,val_fraction=0.1,min_lr_ratio=")
    assert all(p.recipe.train.steps == 200 for p in points)
    text = sweep.to_toml()
    data = tomllib.loads(text)
    assert data["base"] == "gpt-tiny" and data["set"] == {"train.steps": 200}
    assert data["exclude"] == ["precision.preset == 'bf16' and optimizer.lr > 2e-3"]
    again = Sweep.from_toml(text)
    assert again.to_toml() == text
    assert again.to_dict() == sweep.to_dict()
    assert again.expand() == points


def test_to_toml_writes_a_non_preset_base_whole(tiny):
    base = tiny.with_overrides({"name": "mine", "train.steps": 3})
    sweep = Sweep(base, grid={"optimizer.lr": ["1e-3"]})
    data = sweep.to_dict()
    assert data["base"] == base.to_dict()
    assert data["grid"] == {"optimizer.lr": [1e-3]}  # typed, as the recipe reads it
    assert Sweep.from_toml(sweep.to_toml()).expand() == sweep.expand()


def test_to_toml_refuses_callable_exclude(tiny):
    sweep = Sweep(tiny, grid={"train.steps": [1, 2]}, exclude=[lambda v: False])
    with pytest.raises(SweepError, match="an expression string to be written out"):
        sweep.to_toml()


def test_base_from_recipe_file_relative_to_sweep_file(tmp_path):
    (tmp_path / "recipes").mkdir()
    recipe = Recipe.preset("gpt-debug").with_overrides({"name": "mine", "train.steps": 9})
    (tmp_path / "recipes" / "mine.toml").write_text(recipe.to_toml())
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('base = "recipes/mine.toml"\n[grid]\n"train.seed" = [1, 2]\n')
    sweep = Sweep.from_toml(sweep_file)
    assert sweep.name == "mine"
    assert sweep.base == recipe
    assert [p.recipe.name for p in sweep.expand()] == ["mine/seed=1", "mine/seed=2"]
    assert Sweep.from_toml(str(sweep_file)).base == recipe


def test_inline_base_table():
    text = 'name = "x"\n[base]\nname = "b"\n[base.train]\nsteps = 4\n[grid]\n"train.seed" = [1]\n'
    sweep = Sweep.from_toml(text)
    assert (sweep.base.name, sweep.base.train.steps, sweep.base.model.flavour) == ("b", 4, "tiny")


@pytest.mark.parametrize(
    "text, where, message",
    [
        ('base = "gpt-tiny"\n[gird]\n"train.steps" = [1]', "gird", "did you mean 'grid'?"),
        ('base = "gpt-tiny"\nexlcude = []', "exlcude", "did you mean 'exclude'?"),
        ('base = "gpt-tiny"\nfoo = 1', "foo", "accepted: name, base, set, grid"),
        ('base = "gpt-tniy"', "base", "did you mean 'gpt-tiny'?"),
        ('base = "gpt-tiny"\nsamples = 4', "samples", "samples inside the [random] table"),
        ('base = "gpt-tiny"\nrandom = 4', "random", "a table of random axes"),
        ('name = "x"', "base", "a recipe preset"),
        ('base = "missing.toml"', "base", "is no file"),
        ('base = "gpt-tiny"\n[set]\n"train.stepz" = 1', "set.train.stepz", "did you mean"),
        ('base = "gpt-tiny"\n[set]\n"train.steps" = 0', "set.train.steps", "an integer >= 1"),
        ("[base]\nmodel = 3", "base.model", "a table of model settings"),
        ('base = "gpt-tiny"\n[grid]\n"a" = 1 =', "(toml)", "valid TOML"),
    ],
)
def test_toml_errors(text, where, message):
    with pytest.raises(SweepError) as info:
        Sweep.from_toml(text)
    problem = next(p for p in info.value.problems if p[0] == where)
    assert message in problem[2]


def test_from_overrides_matches_toml():
    cli = Sweep.from_overrides(
        "gpt-tiny",
        ["precision.preset=bf16, nvfp4", "optimizer.lr=1e-3,3e-3"],
        name="fp4-study",
        exclude=["precision.preset == 'bf16' and optimizer.lr > 2e-3"],
    )
    toml = Sweep.from_toml(
        'name = "fp4-study"\nbase = "gpt-tiny"\n'
        "exclude = [\"precision.preset == 'bf16' and optimizer.lr > 2e-3\"]\n"
        '[grid]\n"precision.preset" = ["bf16", "nvfp4"]\n"optimizer.lr" = [1e-3, 3e-3]\n'
    )
    assert cli.expand() == toml.expand()
    assert cli.to_dict() == toml.to_dict()
    assert len(cli) == 3


def test_from_overrides_toml_array_for_values_with_commas():
    sweep = Sweep.from_overrides(
        "gpt-tiny", ['precision.keep_high_precision=[[], ["lm_head", "layers.3.*"]]']
    )
    assert names(sweep) == ["keep_high_precision=none", "keep_high_precision=lm_head+layers.3.*"]


@pytest.mark.parametrize(
    "items, message",
    [
        (["precision.preset"], 'a "section.field=v1,v2" string'),
        (["train.steps=1", "train.steps=2"], "each field once"),
        (["train.steps=[1, 2"], "a TOML array of values"),
        (["train.stepz=1,2"], "did you mean 'train.steps'"),
    ],
)
def test_from_overrides_errors(items, message):
    with pytest.raises(SweepError, match=message):
        Sweep.from_overrides("gpt-tiny", items)


def test_from_overrides_bad_value_is_a_bad_point():
    sweep = Sweep.from_overrides("gpt-tiny", ["train.steps=10,ten"])
    with pytest.raises(SweepError) as info:
        sweep.expand()
    assert info.value.bad_points == {"steps=ten": [("train.steps", "ten", "an integer >= 1")]}


def test_describe(tiny):
    sweep = Sweep(
        tiny,
        name="s",
        grid={"precision.preset": ["bf16", "nvfp4"], "optimizer.lr": [1e-3, 3e-3]},
        random={"schedule.min_lr_ratio": {"low": 0.01, "high": 0.5, "log": True}},
        samples=3,
        exclude=["precision.preset == 'bf16' and optimizer.lr > 2e-3"],
    )
    text = sweep.describe()
    assert text.splitlines()[0] == "sweep s (base gpt-tiny)"
    assert "precision.preset       bf16, nvfp4" in text
    assert "optimizer.lr           1e-3, 3e-3" in text
    assert "schedule.min_lr_ratio  log-uniform in [0.01, 0.5]" in text
    assert "3 samples, seed 0" in text
    assert "exclude precision.preset == 'bf16' and optimizer.lr > 2e-3" in text
    assert text.splitlines()[-1] == "  9 points (2 x 2 x 3 = 12, 3 excluded)"


# ---------------------------------------------------------------------------
# The example sweep files
# ---------------------------------------------------------------------------


def test_formats_cpu_sweep_is_the_demo_of_issue_5():
    """gpt-tiny on pydoc in bf16, mxfp8, mxfp4 and nvfp4, on CPU, slowest point first."""
    sweep = Sweep.from_toml(SWEEPS / "formats-cpu.toml")
    points = sweep.expand()
    assert [p.name for p in points] == [
        "preset=nvfp4",
        "preset=mxfp4",
        "preset=mxfp8",
        "preset=bf16",
    ]
    for point in points:
        r = point.recipe.validate()
        assert r.name == f"formats-cpu/{point.name}"
        assert (r.model.flavour, r.data.name, r.train.device) == ("tiny", "pydoc", "cpu")
        assert 100 <= r.train.steps <= 150


def test_fp4_study_sweep():
    sweep = Sweep.from_toml(SWEEPS / "fp4-study.toml")
    points = sweep.expand()
    assert len(points) == 21  # 4 x 3 x 2, less bf16's three keep variants
    assert sweep.axes == ["precision.preset", "optimizer.lr", "precision.keep_high_precision"]
    assert all(p.recipe.validate() is p.recipe for p in points)
    assert "preset=nvfp4,lr=3e-3,keep_high_precision=last:2" in [p.name for p in points]
    assert not any(p.name.startswith("preset=bf16") and "last:2" in p.name for p in points)
    assert Sweep.from_toml(sweep.to_toml()).expand() == points


def test_recipe_error_problems_are_reused_verbatim(tiny):
    # a point's problems are exactly what Recipe.with_overrides reports for it
    sweep = Sweep(tiny, grid={"train.batch_size": [15]}, zip={"train.grad_accum": [2]})
    with pytest.raises(SweepError) as info:
        sweep.expand()
    with pytest.raises(RecipeError) as direct:
        tiny.with_overrides({"train.batch_size": 15, "train.grad_accum": 2})
    assert info.value.bad_points["batch_size=15,grad_accum=2"] == direct.value.problems
    assert direct.value.problems[0][0] == "train.batch_size"
