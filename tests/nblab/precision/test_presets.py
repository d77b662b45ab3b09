"""Precision presets: the NUMERICS.md table, plain-data round trips, role overrides."""

import tomllib

import pytest
import tomli_w

from nblab.precision import (
    GEMMS,
    PRECISION_PRESETS,
    ROLES,
    PrecisionPreset,
    get_preset,
    keep_blocks,
    parse_keep_token,
    precision_problems,
    preset_to_dict,
    resolve_precision,
    spec_from_dict,
    spec_to_dict,
)
from nblab_kernels.formats import QUANT_PRESETS, QuantSpec


def test_registry_is_exactly_the_numerics_table():
    assert list(PRECISION_PRESETS) == [
        "bf16",
        "fp8_tensorwise",
        "fp8_rowwise",
        "fp8_blockwise",
        "mxfp8",
        "mxfp4",
        "nvfp4",
        "quartet-like",
        "int8_rowwise",
    ]
    for preset in PRECISION_PRESETS.values():
        assert tuple(preset.roles) == ROLES
        assert "lm_head" in preset.keep_high_precision
        assert preset.description


# (preset, role, expected fields; None = high precision)
PRESET_FACTS = [
    ("bf16", "fwd_x", None),
    ("bf16", "wgrad_dy", None),
    ("fp8_tensorwise", "fwd_x", dict(element="e4m3", granularity="tensor", scale="fp32")),
    ("fp8_tensorwise", "fwd_w", dict(element="e4m3", granularity="tensor")),
    ("fp8_tensorwise", "dgrad_dy", dict(element="e5m2", granularity="tensor")),
    ("fp8_tensorwise", "dgrad_w", dict(element="e4m3", granularity="tensor")),
    ("fp8_tensorwise", "wgrad_x", dict(element="e4m3", granularity="tensor")),
    ("fp8_tensorwise", "wgrad_dy", dict(element="e5m2", granularity="tensor")),
    ("fp8_rowwise", "fwd_x", dict(element="e4m3", granularity="row", scale="pow2")),
    ("fp8_rowwise", "dgrad_dy", dict(element="e4m3", granularity="row", scale="pow2")),
    ("fp8_rowwise", "wgrad_x", dict(element="e4m3", granularity="row", scale="pow2")),
    ("fp8_blockwise", "fwd_x", dict(element="e4m3", granularity="block", block=128)),
    ("fp8_blockwise", "fwd_w", dict(element="e4m3", granularity="tile", block=128)),
    ("fp8_blockwise", "dgrad_dy", dict(granularity="block", block=128, scale="fp32")),
    ("fp8_blockwise", "dgrad_w", dict(granularity="tile", block=128)),
    ("fp8_blockwise", "wgrad_dy", dict(granularity="block", block=128)),
    ("mxfp8", "fwd_x", dict(element="e4m3", scale="e8m0", granularity="block", block=32)),
    ("mxfp8", "wgrad_dy", dict(element="e4m3", scale="e8m0", block=32, rule="floor")),
    ("mxfp4", "fwd_w", dict(element="e2m1", scale="e8m0", granularity="block", block=32)),
    ("mxfp4", "dgrad_dy", dict(element="e2m1", scale="e8m0", block=32, rounding="rne")),
    (
        "nvfp4",
        "fwd_x",
        dict(element="e2m1", scale="ue4m3", rule="nvfp4", granularity="block", block=16),
    ),
    ("nvfp4", "fwd_x", dict(rounding="rne", hadamard=0)),
    ("nvfp4", "fwd_w", dict(element="e2m1", granularity="tile", block=16, rounding="rne")),
    ("nvfp4", "dgrad_dy", dict(element="e2m1", granularity="block", block=16, rounding="sr")),
    ("nvfp4", "dgrad_w", dict(granularity="tile", block=16, rounding="rne")),
    ("nvfp4", "wgrad_x", dict(hadamard=16, granularity="block", block=16, rounding="rne")),
    ("nvfp4", "wgrad_dy", dict(hadamard=16, granularity="block", block=16, rounding="sr")),
    ("quartet-like", "fwd_x", dict(hadamard=32, element="e2m1", block=32, scale="e8m0")),
    ("quartet-like", "fwd_w", dict(hadamard=32, rounding="rne")),
    ("quartet-like", "dgrad_dy", dict(hadamard=32, element="e2m1", rounding="sr")),
    ("quartet-like", "dgrad_w", dict(hadamard=32, rounding="sr")),
    ("quartet-like", "wgrad_x", dict(hadamard=32, rounding="sr")),
    ("quartet-like", "wgrad_dy", dict(hadamard=32, rounding="sr")),
    ("int8_rowwise", "fwd_x", dict(element="int8", granularity="row")),
    ("int8_rowwise", "wgrad_dy", dict(element="int8", granularity="row")),
]


@pytest.mark.parametrize(("preset", "role", "expected"), PRESET_FACTS)
def test_preset_role_matches_numerics_table(preset, role, expected):
    spec = PRECISION_PRESETS[preset].spec(role)
    if expected is None:
        assert spec is None
    else:
        assert {k: getattr(spec, k) for k in expected} == expected


def test_every_role_spec_is_relative_to_the_reduction_dim():
    for preset in PRECISION_PRESETS.values():
        for spec in preset.roles.values():
            if spec is not None:
                assert spec.dim == -1
                assert spec.granularity != "col"


def test_hadamard_is_shared_by_both_operands_of_each_gemm():
    for preset in PRECISION_PRESETS.values():
        for a, b in GEMMS.values():
            sa, sb = preset.roles[a], preset.roles[b]
            ha = (sa.hadamard, sa.hadamard_seed) if sa else (0, 0)
            hb = (sb.hadamard, sb.hadamard_seed) if sb else (0, 0)
            assert ha == hb, (preset.name, a, b)


def test_keep_lists():
    assert PRECISION_PRESETS["nvfp4"].keep_high_precision == ("lm_head", "last:15%")
    assert PRECISION_PRESETS["mxfp8"].keep_high_precision == ("lm_head",)
    assert PRECISION_PRESETS["bf16"].is_high_precision
    assert not PRECISION_PRESETS["nvfp4"].is_high_precision


@pytest.mark.parametrize("name", list(PRECISION_PRESETS))
def test_preset_to_dict_is_toml_and_resolves_to_the_same_preset(name):
    preset = PRECISION_PRESETS[name]
    table = tomllib.loads(tomli_w.dumps(preset_to_dict(preset)))
    assert table["preset"] == name
    assert set(table["roles"]) == set(ROLES)
    assert resolve_precision(table) == preset


def test_preset_to_dict_writes_high_precision_roles_as_high():
    assert preset_to_dict("bf16")["roles"] == {role: "high" for role in ROLES}


@pytest.mark.parametrize("name", list(QUANT_PRESETS))
def test_spec_dict_round_trip(name):
    spec = QUANT_PRESETS[name]
    data = tomllib.loads(tomli_w.dumps(spec_to_dict(spec)))
    assert spec_from_dict(data) == spec
    assert ("block" in data) == (spec.block is not None)


def test_spec_from_dict_names_unknown_field_with_a_suggestion():
    with pytest.raises(ValueError, match="unknown QuantSpec field 'blok'.*did you mean 'block'"):
        spec_from_dict({"blok": 16})


def test_spec_from_dict_base_key():
    assert spec_from_dict({"base": "nvfp4", "rounding": "sr"}) == QUANT_PRESETS["nvfp4"].replace(
        rounding="sr"
    )


# (preset, roles overrides, role, expected fields or None)
OVERRIDES = [
    ("nvfp4", {"dgrad_dy": "high"}, "dgrad_dy", None),
    ("bf16", {"fwd_x": "mxfp8"}, "fwd_x", dict(element="e4m3", scale="e8m0", block=32)),
    ("nvfp4", {"dgrad_dy": {"rounding": "rne"}}, "dgrad_dy", dict(rounding="rne", block=16)),
    # a table edits the preset's spec for that role; other roles keep theirs
    ("nvfp4", {"dgrad_dy": {"rounding": "rne"}}, "wgrad_dy", dict(rounding="sr", hadamard=16)),
    ("mxfp4", {"fwd_x": {"rule": "rceil"}}, "fwd_x", dict(element="e2m1", rule="rceil")),
    ("bf16", {"fwd_x": {"element": "e5m2"}}, "fwd_x", dict(element="e5m2", scale="fp32")),
    ("bf16", {"fwd_x": {"base": "nvfp4", "rounding": "sr"}}, "fwd_x", dict(rounding="sr")),
    # changing the scale resets the rule to that scale's default
    ("fp8_rowwise", {"fwd_x": {"scale": "fp32"}}, "fwd_x", dict(scale="fp32", rule="amax")),
    # leaving block/tile drops the block size
    ("mxfp8", {"fwd_x": {"granularity": "row", "scale": "fp32"}}, "fwd_x", dict(block=None)),
    ("fp8_rowwise", {"fwd_w": "bf16"}, "fwd_w", dict(element="bf16", scale="none")),
]


@pytest.mark.parametrize(("preset", "roles", "role", "expected"), OVERRIDES)
def test_role_overrides(preset, roles, role, expected):
    resolved = resolve_precision({"preset": preset, "roles": roles})
    spec = resolved.roles[role]
    if expected is None:
        assert spec is None
    else:
        assert {k: getattr(spec, k) for k in expected} == expected


def test_keep_list_adds_to_and_removes_from_the_preset():
    resolved = resolve_precision(
        {"preset": "nvfp4", "keep_high_precision": ["!last:15%", "layers.0.*", "lm_head"]}
    )
    assert resolved.keep_high_precision == ("lm_head", "layers.0.*")


def test_description_names_changed_roles_only():
    assert "overridden" not in resolve_precision({"preset": "mxfp8"}).description
    changed = resolve_precision({"preset": "mxfp8", "roles": {"fwd_x": "high"}})
    assert changed.description.endswith("(overridden: fwd_x)")


# (section, path in the problem, substring of what is accepted)
INVALID = [
    ({"preset": "nvfp5"}, "preset", "did you mean 'nvfp4'"),
    ({"roles": {"fwd_y": "mxfp8"}}, "roles.fwd_y", "unknown role 'fwd_y'"),
    ({"roles": {"fwd_x": "mxfp9"}}, "roles.fwd_x", "QuantSpec preset name"),
    ({"roles": {"fwd_x": 8}}, "roles.fwd_x", "a table of QuantSpec fields"),
    ({"roles": {"fwd_x": {"blok": 16}}}, "roles.fwd_x.blok", "did you mean 'block'"),
    ({"roles": {"fwd_x": {"block": "16"}}}, "roles.fwd_x.block", "an integer"),
    ({"roles": {"fwd_x": {"element": 4}}}, "roles.fwd_x.element", "a string"),
    ({"roles": {"fwd_x": {"block": None}}}, "roles.fwd_x.block", "an integer"),
    ({"roles": {"fwd_x": {"hadamard_seed": -1}}}, "roles.fwd_x.hadamard_seed", "0..2**63-1"),
    ({"roles": {"fwd_x": {"base": "nope"}}}, "roles.fwd_x.base", "QuantSpec preset name"),
    # QuantSpec's own ValueError is caught and recorded
    ({"roles": {"fwd_x": {"element": "e9m9"}}}, "roles.fwd_x", "not a known element format"),
    ({"roles": {"fwd_x": {"hadamard": 24}}}, "roles.fwd_x", "QuantSpec.hadamard=24"),
    (
        {"preset": "mxfp8", "roles": {"fwd_x": {"granularity": "block", "block": 200}}},
        "roles.fwd_x",
        "QuantSpec.block=200",
    ),
    ({"preset": "mxfp8", "roles": {"fwd_x": {"dim": 0}}}, "roles.fwd_x", "reduction dim"),
    ({"roles": {"fwd_x": {"granularity": "col"}}}, "roles.fwd_x", "per-column scale"),
    # one operand of a GEMM with a Hadamard transform, the other without
    ({"preset": "nvfp4", "roles": {"wgrad_x": {"hadamard": 0}}}, "roles.wgrad_dy", "hadamard"),
    ({"preset": "mxfp8", "roles": {"fwd_w": {"hadamard": 32}}}, "roles.fwd_w", "fwd_x"),
    (
        {"preset": "quartet-like", "roles": {"dgrad_w": {"hadamard_seed": 7}}},
        "roles.dgrad_w",
        "hadamard_seed=0",
    ),
    ({"keep_high_precision": ["last:0"]}, "keep_high_precision[0]", "first:N"),
    ({"keep_high_precision": ["lm_head", "last:150%"]}, "keep_high_precision[1]", "P in"),
    ({"keep_high_precision": ["middle:3"]}, "keep_high_precision[0]", "module-name glob"),
    ({"keep_high_precision": ["layers 1"]}, "keep_high_precision[0]", "module-name glob"),
    ({"keep_high_precision": "lm_head"}, "keep_high_precision", "a list of strings"),
]


@pytest.mark.parametrize(("section", "path", "allowed"), INVALID)
def test_invalid_sections_name_the_problem(section, path, allowed):
    problems = precision_problems(section)
    assert [p for p in problems if p[0] == path and allowed in p[2]], problems
    with pytest.raises(ValueError, match="invalid precision section"):
        resolve_precision(section)


def test_valid_sections_have_no_problems():
    assert precision_problems({"preset": "nvfp4", "keep_high_precision": ["first:2"]}) == []
    both = {"fwd_x": {"hadamard": 32}, "fwd_w": {"hadamard": 32}}
    assert precision_problems({"preset": "mxfp8", "roles": both}) == []


def test_preset_constructor_rejects_bad_data():
    roles = dict(PRECISION_PRESETS["mxfp8"].roles)
    with pytest.raises(ValueError, match="roles must be exactly"):
        PrecisionPreset("x", {"fwd_x": None})
    with pytest.raises(ValueError, match="keep_high_precision"):
        PrecisionPreset("x", roles, keep_high_precision=("last:x",))
    roles["fwd_x"] = QuantSpec("e4m3", granularity="block", block=32, dim=0)
    with pytest.raises(ValueError, match="reduction dim"):
        PrecisionPreset("x", roles)


def test_get_preset_suggests():
    assert get_preset("mxfp4") is PRECISION_PRESETS["mxfp4"]
    with pytest.raises(ValueError, match="did you mean 'quartet-like'"):
        get_preset("quartet")


@pytest.mark.parametrize(
    ("token", "kind", "count", "percent"),
    [
        ("lm_head", "glob", 0, 0.0),
        ("layers.10.*", "glob", 0, 0.0),
        ("first:2", "first", 2, 0.0),
        ("last:3", "last", 3, 0.0),
        ("last:15%", "last", 0, 15.0),
        ("first:12.5%", "first", 0, 12.5),
    ],
)
def test_parse_keep_token(token, kind, count, percent):
    parsed = parse_keep_token(token)
    assert (parsed.kind, parsed.count, parsed.percent) == (kind, count, percent)


@pytest.mark.parametrize(
    "token", ["", "last:", "last:-1", "first:0", "last:0%", "last:101%", "mid:2", "a b", 3]
)
def test_parse_keep_token_rejects(token):
    with pytest.raises(ValueError, match="first:N"):
        parse_keep_token(token)


@pytest.mark.parametrize(
    ("tokens", "n_blocks", "expected"),
    [
        (["last:15%"], 4, {3}),  # 0.6 blocks rounds up to 1
        (["last:15%"], 62, set(range(52, 62))),  # 9.3 -> 10
        (["last:15%"], 20, {17, 18, 19}),  # exactly 3
        (["first:1", "last:2"], 6, {0, 4, 5}),
        (["first:10"], 3, {0, 1, 2}),  # capped at the model
        (["lm_head", "layers.0.*"], 4, set()),  # globs select no block index
    ],
)
def test_keep_blocks(tokens, n_blocks, expected):
    assert keep_blocks(tokens, n_blocks) == expected
