"""ParallelDims: degrees, dp_shard=-1, the mesh shape, and the rule table."""

from __future__ import annotations

import pytest

from nblab.parallel import LayoutError, ParallelDims
from nblab.recipe import Recipe

# d_model 256, 8 heads: tp 8 keeps whole heads; ffn 384 splits into 48 per rank under tp 8
CFG_384 = dict(d_model=256, n_heads=8, n_kv_heads=8, ffn_hidden=384, n_layers=4)
# ffn 416 = 16 x 26: unsharded fine for nvfp4's 16, but 416 / tp 4 = 104 is not
CFG_416 = dict(d_model=256, n_heads=8, n_kv_heads=8, ffn_hidden=416, n_layers=4)
GQA = dict(d_model=512, n_heads=8, n_kv_heads=2, ffn_hidden=1024, n_layers=6)
OK = dict(batch_size=16, seq_len=128)

# (dims kwargs, validate parts, expected message substring)
INVALID = [
    pytest.param(
        dict(dp_shard=3, tp=2, world_size=8),
        {},
        "dp_replicate 1 x dp_shard 3 x tp 2 x pp 1 = 6, but world_size is 8",
        id="product",
    ),
    pytest.param(
        dict(dp_shard=-1, tp=3, world_size=8),
        {},
        "dp_shard -1 (the rest) cannot be resolved: world_size 8 is not a multiple of "
        "dp_replicate 1 x tp 3 x pp 1 = 3",
        id="rest-unresolvable",
    ),
    pytest.param(
        dict(tp=0, world_size=8), {}, "tp 0 must be an integer >= 1", id="tp-not-positive"
    ),
    pytest.param(
        dict(tp=4, world_size=4),
        dict(config=dict(d_model=192, n_heads=6, n_kv_heads=6, ffn_hidden=512, n_layers=2)),
        "tp 4 does not divide n_heads 6",
        id="heads",
    ),
    pytest.param(
        dict(tp=4, world_size=4),
        dict(config=GQA),
        "tp 4 does not divide n_kv_heads 2",
        id="kv-heads",
    ),
    pytest.param(
        dict(tp=8, world_size=8),
        dict(config=dict(d_model=256, n_heads=8, n_kv_heads=8, ffn_hidden=100, n_layers=2)),
        "tp 8 does not divide ffn_hidden 100",
        id="ffn",
    ),
    pytest.param(
        dict(dp_shard=4, world_size=4),
        dict(batch_size=30, grad_accum=2),
        "train.batch_size 30 is not a multiple of dp 4 (dp_replicate 1 x dp_shard 4) x "
        "grad_accum 2 = 8",
        id="batch",
    ),
    pytest.param(
        dict(pp=8, world_size=8),
        dict(config=GQA),
        "pp 8 stages > n_layers 6",
        id="pp-more-than-layers",
    ),
    pytest.param(
        dict(pp=4, world_size=4),
        dict(config=GQA),
        "pp 4 does not divide n_layers 6 (stages would hold 2+2+1+1 blocks)",
        id="pp-uneven",
    ),
    pytest.param(
        dict(pp=4, tp=2, world_size=8),
        dict(config=CFG_384, grad_accum=2),
        "train.grad_accum 2 < pp 4: the pipeline's micro-batches are the grad_accum "
        "micro-batches, at least one per stage (set train.grad_accum >= 4)",
        id="pp-micro-batches",
    ),
    pytest.param(
        dict(tp=2, world_size=2),
        dict(config=GQA, seq_len=127, sequence_parallel=True),
        "seq_len 127 is not a multiple of tp 2",
        id="sequence-parallel",
    ),
    pytest.param(
        dict(tp=8, world_size=8),
        dict(config=CFG_384, precision="mxfp4", **OK),
        "layers.0.mlp.down: in_features 384 / tp 8 = 48 is not a multiple of mxfp4 block 32 "
        "(fwd_x, fwd_w, RowwiseParallel); also in layers 1-3",
        id="mxfp4-rowwise-block",
    ),
    pytest.param(
        dict(tp=8, world_size=8),
        dict(config=CFG_384, precision="mxfp4", **OK),
        "layers.0.mlp.gate: out_features 384 / tp 8 = 48 is not a multiple of mxfp4 block 32 "
        "(dgrad_dy, dgrad_w, ColwiseParallel)",
        id="mxfp4-colwise-block",
    ),
    pytest.param(
        dict(tp=4, world_size=4),
        dict(config=CFG_416, precision="nvfp4", **OK),
        # nvfp4 keeps the last 15% of blocks (block 3 of 4) in high precision
        "layers.0.mlp.up: out_features 416 / tp 4 = 104 is not a multiple of nvfp4 tile 16x16 "
        "(fwd_w, dgrad_w, ColwiseParallel); also in layers 1-2",
        id="nvfp4-colwise-tile",
    ),
    pytest.param(
        dict(dp_shard=8, world_size=8),
        dict(config=CFG_384, precision="mxfp8", batch_size=16, seq_len=100),
        "tokens per micro-batch: local batch 2 x seq_len 100 = 200 is not a multiple of mxfp8 "
        "block 32 (wgrad_x, wgrad_dy",
        id="tokens-block",
    ),
]


@pytest.mark.parametrize(("dims", "parts", "message"), INVALID)
def test_invalid_layout_names_the_numbers(dims, parts, message):
    layout = ParallelDims(**dims)
    with pytest.raises(LayoutError) as info:
        layout.validate(**parts)
    assert message in str(info.value)
    assert any(message in p for p in info.value.problems)


@pytest.mark.parametrize(
    ("dims", "parts"),
    [
        pytest.param(dict(tp=8, world_size=8), dict(config=CFG_384, **OK), id="bf16-tp8"),
        pytest.param(
            dict(tp=4, world_size=4),
            dict(config=CFG_384, precision="mxfp4", **OK),  # 384 / 4 = 96 = 3 x 32
            id="mxfp4-tp4",
        ),
        pytest.param(
            dict(tp=8, world_size=8),
            dict(
                config=CFG_384,
                precision={"preset": "mxfp4", "keep_high_precision": ["layers.*.mlp.*"]},
                **OK,
            ),
            id="mlp-kept-high-precision",
        ),
        pytest.param(
            dict(tp=8, world_size=8),
            dict(
                config=CFG_384,
                precision={"preset": "mxfp4", "keep_high_precision": ["first:2", "last:2"]},
                **OK,
            ),
            id="every-block-kept",
        ),
    ],
)
def test_valid_layouts_pass(dims, parts):
    layout = ParallelDims(**dims)
    assert layout.problems(**parts) == []
    assert layout.validate(**parts) is layout


def test_kept_blocks_are_exempt_and_the_rest_are_listed():
    parts = dict(
        config=CFG_384,
        precision={"preset": "mxfp4", "keep_high_precision": ["layers.0.*", "last:1"]},
        **OK,
    )
    problems = ParallelDims(tp=8, world_size=8).problems(**parts)
    down = [p for p in problems if ".mlp.down:" in p]
    assert len(down) == 1
    assert down[0].startswith("layers.1.mlp.down: in_features 384 / tp 8 = 48")
    assert down[0].endswith("also in layers 2")


def test_dims_unquantizable_unsharded_are_left_to_high_precision():
    # ffn 400 is not a multiple of 32 even unsharded: apply_precision keeps gate/up/down in
    # high precision, so sharding it (400 / 2 = 200) is no new problem
    cfg = dict(d_model=256, n_heads=8, n_kv_heads=8, ffn_hidden=400, n_layers=2)
    assert ParallelDims(tp=2, world_size=2).problems(config=cfg, precision="mxfp4", **OK) == []


def test_all_problems_are_reported_at_once():
    layout = ParallelDims(dp_shard=1, tp=3, pp=4, world_size=8)
    with pytest.raises(LayoutError) as info:
        layout.validate(config=GQA, batch_size=10, grad_accum=4)
    text = str(info.value)
    assert text.startswith("invalid parallel layout pp 4 x tp 3 (6 problems):")
    for fragment in (
        "= 12, but world_size is 8",
        "tp 3 does not divide n_heads 8",
        "tp 3 does not divide n_kv_heads 2",
        "tp 3 does not divide ffn_hidden 1024",
        "pp 4 does not divide n_layers 6",
        "train.batch_size 10 is not a multiple of dp 1",
    ):
        assert fragment in text


@pytest.mark.parametrize(
    ("kwargs", "resolved"),
    [
        (dict(dp_shard=-1, world_size=8), 8),
        (dict(dp_shard=-1, tp=2, world_size=8), 4),
        (dict(dp_replicate=2, dp_shard=-1, tp=2, pp=2, world_size=16), 2),
        (dict(dp_shard=-1, tp=8, world_size=8), 1),
    ],
)
def test_dp_shard_minus_one_takes_the_rest(kwargs, resolved):
    layout = ParallelDims(**kwargs)
    assert layout.dp_shard == resolved
    assert layout.problems() == []


def test_world_size_defaults_to_the_product():
    assert ParallelDims(dp_replicate=2, dp_shard=2, tp=2).world_size == 8


def test_mesh_shape_is_ordered_and_skips_size_one():
    layout = ParallelDims(dp_replicate=2, dp_shard=2, tp=2, pp=2, world_size=16)
    assert list(layout.mesh_shape().items()) == [
        ("pp", 2),
        ("dp_replicate", 2),
        ("dp_shard", 2),
        ("tp", 2),
    ]
    assert list(ParallelDims(dp_shard=4, tp=2).mesh_shape().items()) == [
        ("dp_shard", 4),
        ("tp", 2),
    ]
    assert ParallelDims().mesh_shape() == {}
    assert str(ParallelDims(dp_shard=4, tp=2)) == "dp_shard 4 x tp 2"
    assert layout.dp == 4


def test_from_recipe_reads_the_parallel_section_and_validates_against_it():
    recipe = Recipe.preset("gpt-tiny").with_overrides(
        ["parallel.dp_shard=2", "parallel.tp=2", "parallel.nproc=4", "precision.preset=mxfp4"]
    )
    layout = ParallelDims.from_recipe(recipe)
    assert (layout.dp_shard, layout.tp, layout.world_size) == (2, 2, 4)
    layout.validate(recipe)  # tiny: 4 heads, ffn 384 / 2 = 192 = 6 x 32
    wide = ParallelDims.from_recipe(recipe, world_size=8)
    assert "= 4, but world_size is 8" in wide.problems(recipe)[0]
    # tiny has 4 heads: tp 8 cannot hold whole heads
    problems = ParallelDims(tp=8, world_size=8).problems(recipe)
    assert "tp 8 does not divide n_heads 4" in problems[0]
