"""The planner: memory and communication formulas, ranking, rejections, `nblab plan`."""

from __future__ import annotations

import pytest
import torch

from nblab.models import build_model
from nblab.parallel import ParallelDims, estimate_layout, format_plan, layouts, plan
from nblab.parallel.planner import parse_bytes, plan_command, quant_bytes_per_element
from nblab.precision.presets import PRECISION_PRESETS
from nblab.recipe import Recipe

GB80 = 80e9
N_1B = 1_109_626_880  # gpt 1b, vocab 50257, tied head (checked against the model below)
# 1b, batch 80 x seq 4096 in bf16: on 8 GPUs each rank's micro-batch is 10 x 4096 tokens
ONE_B = ["model.flavour=1b", "train.batch_size=80", "train.seq_len=4096", "train.dtype=bfloat16"]


def recipe_1b(*more: str) -> Recipe:
    return Recipe.preset("gpt-tiny").with_overrides([*ONE_B, *more])


def dims(rep=1, shard=1, tp=1, pp=1) -> ParallelDims:
    return ParallelDims(rep, shard, tp, pp, world_size=rep * shard * tp * pp)


def states(e) -> float:
    return e.memory["params"] + e.memory["grads"] + e.memory["optimizer"]


def test_param_count_matches_the_model():
    with torch.device("meta"):
        model = build_model({"flavour": "1b"}, vocab_size=50257, max_seq_len=4096)
    assert model.num_params() == N_1B


def test_ddp_1b_memory_by_hand_does_not_fit_80gb():
    e = estimate_layout(recipe_1b(), dims(rep=8), GB80)
    # fp32 params 4 + fp32 grads 4 + AdamW moments 8 = 16 bytes per param, unsharded
    assert states(e) == 16 * N_1B == 17_754_030_080
    # per block per token, bf16 (2 bytes): high precision 2 x (2d + (nh hd + 2 nkv hd)
    # + nh hd + 2F) = 2 x 26624, Linear inputs 2 x (d + d + F) = 2 x 12288
    per_block = 2 * (2 * 2048 + (2048 + 2 * 1024) + 2048 + 2 * 8192) + 2 * (2048 + 2048 + 8192)
    assert per_block == 77_824
    head = 2 * 2048 * 2 + 50257 * (2 + 4)  # norm + lm_head inputs, logits + fp32 log-softmax
    tokens = 10 * 4096  # batch 80 / dp 8
    assert e.memory["activations"] == tokens * (16 * per_block + head) == 63_689_441_280
    assert e.memory["fsdp_buffers"] == 0
    assert e.memory_bytes == 81_443_471_360
    assert not e.fits
    assert e.reasons == [
        "does not fit: 81.4 GB > 80.0 GB (params+grads+optimizer 17.8 GB, activations "
        "63.7 GB, fsdp buffers 0.0 GB)"
    ]
    # one fp32 all-reduce of the grads: 2 x 7/8 x N x 4 bytes
    assert e.comm == {"replicate": pytest.approx(7 * N_1B)}


def test_fsdp_1b_fits_and_ranks_first():
    estimates = plan(recipe_1b(), 8, GB80)
    ranked = [e for e in estimates if e.rank is not None]
    assert ranked and all(e.fits and e.valid for e in ranked)
    assert [e.rank for e in ranked] == list(range(1, len(ranked) + 1))
    assert all(a.score <= b.score for a, b in zip(ranked, ranked[1:], strict=False))
    best = ranked[0]
    assert best.dims.degrees() == {"pp": 1, "dp_replicate": 1, "dp_shard": 8, "tp": 1}
    assert states(best) == pytest.approx(16 * N_1B / 8)
    # bf16 all-gather forward + backward and fp32 reduce-scatter: 7/8 x N x (2 + 2 + 4)
    assert best.comm == {"fsdp": pytest.approx(7 * N_1B)}
    ddp = next(e for e in estimates if e.dims.degrees()["dp_replicate"] == 8)
    assert ddp.rank is None and ddp.reasons[0].startswith("does not fit: 81.4 GB > 80.0 GB")


def test_more_dp_shard_means_less_memory_per_gpu():
    totals = [
        estimate_layout(recipe_1b(), dims(rep=8 // s, shard=s), GB80).memory_bytes
        for s in (1, 2, 4, 8)
    ]
    assert all(a > b for a, b in zip(totals, totals[1:], strict=False))


def test_low_precision_and_checkpointing_shrink_activations():
    layout = dims(shard=8)
    bf16 = estimate_layout(recipe_1b(), layout, GB80).memory["activations"]
    mxfp8 = estimate_layout(recipe_1b("precision.preset=mxfp8"), layout, GB80)
    nvfp4 = estimate_layout(recipe_1b("precision.preset=nvfp4"), layout, GB80)
    assert nvfp4.memory["activations"] < mxfp8.memory["activations"] < bf16
    assert states(nvfp4) == states(mxfp8)  # precision does not change the fp32 states
    ckpt = estimate_layout(recipe_1b(), layout, GB80, activation_checkpointing=True)
    # block inputs (d x 2 bytes) for 16 blocks + one block recomputed + the head, per token
    per_token = 16 * 2048 * 2 + 77_824 + (2 * 2048 * 2 + 50257 * 6)
    assert ckpt.memory["activations"] == 10 * 4096 * per_token == 18_558_730_240
    assert ckpt.times["compute"] == pytest.approx(
        estimate_layout(recipe_1b(), layout, GB80).times["compute"] * 4 / 3
    )


def test_tp_and_pp_split_the_states_and_add_their_traffic():
    base = estimate_layout(recipe_1b(), dims(rep=2), GB80)
    tp = estimate_layout(recipe_1b(), dims(rep=2, tp=4), GB80)
    # pp 4 needs 4 micro-batches; the bubble is (pp - 1) / micro-batches of the compute
    pp = estimate_layout(recipe_1b("train.grad_accum=4"), dims(rep=2, pp=4), GB80)
    assert states(tp) < states(base) / 3 and states(pp) < states(base) / 3
    assert tp.comm["tp"] > 0 and "tp" not in base.comm
    assert pp.comm["pp"] > 0 and pp.times["bubble"] == pytest.approx(3 / 4 * pp.times["compute"])
    both = estimate_layout(recipe_1b("train.grad_accum=4"), dims(tp=2, pp=4), GB80)
    assert both.valid and both.fits and both.comm["tp"] > 0 and both.comm["pp"] > 0


def test_pp_with_fewer_micro_batches_than_stages_is_rejected_with_the_rule():
    estimates = plan(recipe_1b(), gpus=8, gpu_mem_bytes=GB80)
    pp = [e for e in estimates if e.dims.pp > 1]
    assert pp and all(e.rank is None and not e.valid for e in pp)
    assert all(any("train.grad_accum 1 < pp" in r for r in e.reasons) for e in pp)


@pytest.mark.parametrize(
    ("spec", "bits"),
    [("mxfp8", 8.25), ("mxfp4", 4.25), ("nvfp4", 4.5), ("bf16", 16)],
)
def test_quantized_bytes_per_element(spec, bits):
    from nblab_kernels.formats import QUANT_PRESETS

    assert quant_bytes_per_element(QUANT_PRESETS[spec], 2) * 8 == bits


def test_nvfp4_preset_saves_its_wgrad_input_at_4_5_bits():
    spec = PRECISION_PRESETS["nvfp4"].roles["wgrad_x"]
    assert quant_bytes_per_element(spec, 2) == 4.5 / 8


def test_rejected_layouts_keep_their_validation_reasons():
    estimates = plan(recipe_1b("train.batch_size=36"), 8, GB80)
    dp8 = [e for e in estimates if e.dims.dp == 8]
    assert dp8 and all(not e.valid and e.rank is None for e in dp8)
    assert all("train.batch_size 36 is not a multiple of dp 8" in e.reasons[0] for e in dp8)
    assert any(e.fits for e in estimates)
    assert all(e.reasons for e in estimates if e.rank is None)


def test_layouts_enumerate_every_factorisation_with_tp_in_a_node():
    found = layouts(8)
    assert len(found) == 20  # ordered ways to write 2^3 as 4 factors: C(6, 3)
    assert len({tuple(d.degrees().values()) for d in found}) == 20
    assert all(d.problems() == [] for d in found)
    assert max(d.tp for d in layouts(32)) == 8


def test_top_keeps_the_best_and_every_rejection():
    everything = plan(recipe_1b(), 8, GB80)
    top2 = plan(recipe_1b(), 8, GB80, top=2)
    ranked = [e for e in everything if e.rank is not None]
    assert [e.label for e in top2[:2]] == [e.label for e in ranked[:2]]
    assert len(top2) == len(everything) - (len(ranked) - 2)


def test_format_plan_shows_units_and_reasons():
    text = format_plan(plan(recipe_1b(), 8, GB80, top=3))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["#", "layout", "mem/GPU"]
    assert lines[2].split()[:5] == ["1", "dp_shard", "8", "66.7", "GB"]
    assert "dp_replicate 8: does not fit: 81.4 GB > 80.0 GB" in text


@pytest.mark.parametrize(
    ("text", "value"),
    [("80GB", 80e9), ("80 GiB", 80 * 2**30), ("80e9", 80e9), ("1.5TB", 1.5e12), ("96gb", 96e9)],
)
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["eighty", "80XB", "-5GB", "0GB", "80", ""])
def test_parse_bytes_rejects_naming_the_value(text):
    with pytest.raises(ValueError, match=repr(text).replace(".", r"\.")):
        parse_bytes(text)


CMD = ["gpt-tiny", "--gpus", "8", "--gpu-mem", "80GB", *[a for o in ONE_B for a in ("--set", o)]]


def test_plan_command_prints_the_ranking(capsys):
    assert plan_command([*CMD, "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "gpt-1b, bf16, batch 80 x seq 4096" in out
    assert "\n 1  dp_shard 8 " in out and "\n 3  " not in out
    assert "dp_replicate 8: does not fit: 81.4 GB > 80.0 GB" in out


def test_plan_command_reads_a_toml_file(tmp_path, capsys):
    path = tmp_path / "1b.toml"
    path.write_text(recipe_1b("precision.preset=mxfp4").to_toml())
    assert plan_command([str(path), "--gpus", "8", "--gpu-mem", "80 GiB", "--ac"]) == 0
    assert "gpt-1b, mxfp4" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gpt-tiny", "--gpus", "8", "--gpu-mem", "80XB"], "'80XB' is not a memory size"),
        (["gpt-tiny", "--gpus", "0", "--gpu-mem", "80GB"], "'0' is not an integer >= 1"),
        (["gpt-tiny", "--gpus", "8"], "--gpu-mem"),
        (
            ["gpt-tiny", "--gpus", "8", "--gpu-mem", "80GB", "--set", "model.flavour=2b"],
            "model.flavour",
        ),
        (["no-such.toml", "--gpus", "8", "--gpu-mem", "80GB"], "no-such.toml"),
    ],
)
def test_plan_command_bad_input_exits_2(argv, message, capsys):
    assert plan_command(argv) == 2
    assert message in capsys.readouterr().err


def test_plan_command_exits_1_when_nothing_fits(capsys):
    assert plan_command([*CMD[:3], "--gpu-mem", "1GB", *CMD[5:]]) == 1
    out = capsys.readouterr().out
    assert "no layout fits" in out and "does not fit" in out


LLAMA_8B = """
name = "llama-8b"
[model]
name = "hf"
architecture = "llama"
[model.config]
hidden_size = 4096
intermediate_size = 14336
num_hidden_layers = 32
num_attention_heads = 32
num_key_value_heads = 8
rope_parameters = {rope_type = "default", rope_theta = 500000.0}
[train]
batch_size = 64
seq_len = 8192
dtype = "bfloat16"
grad_accum = 8
[precision]
preset = "mxfp8"
"""


def test_planner_ranks_layouts_of_an_hf_llama_8b_written_inline(tmp_path, capsys):
    recipe = Recipe.from_toml(LLAMA_8B)
    estimates = plan(recipe, 8, GB80, vocab_size=128256)
    best = estimates[0]
    assert best.rank == 1 and best.fits
    # 8.03B params x 16 bytes (fp32 params, grads, AdamW) does not fit unsharded in 80 GB
    ddp = next(e for e in estimates if e.dims.dp_replicate == 8)
    assert states(ddp) == 16 * 8_030_261_248 and not ddp.fits
    assert best.dims.dp_shard > 1 or best.dims.tp > 1 or best.dims.pp > 1
    # the model's own TP plan splits q/k/v/o and the MLP: tp 8 keeps whole kv heads (8)
    assert any(e.dims.tp == 8 and e.valid for e in estimates)
    # a pipeline of a Hugging Face model is refused, saying why
    pp2 = next(e for e in estimates if e.dims.pp == 2)
    assert not pp2.valid and "cannot be split into pipeline stages" in pp2.reasons[0]
    path = tmp_path / "llama8b.toml"
    path.write_text(LLAMA_8B)
    assert plan_command([str(path), "--gpus", "8", "--gpu-mem", "80GB", "--vocab", "128256"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("llama-8b (hf llama, mxfp8, batch 64 x seq 8192")
    assert " 1  " in out
