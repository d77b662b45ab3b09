"""Hugging Face causal LMs through nblab: the same bits as transformers, every preset trains,
Conv1D is quantized, the config's errors name their field, nothing comes from a hub."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from nblab.models import build_model, model_shape
from nblab.models.protocol import architecture, lm_loss
from nblab.precision import PRECISION_PRESETS
from nblab.precision.linear import QuantLinear, linear_shape
from nblab.recipe import Recipe, RecipeError
from nblab.train.trainer import Trainer

TINY = {
    "llama": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "qwen2": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "qwen3": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    ),
    "gpt2": dict(
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_inner=128,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    ),
}
VOCAB, SEQ = 97, 16


def section(arch: str) -> dict:
    return {"name": "hf", "architecture": arch, "config": TINY[arch]}


def tiny_recipe(arch: str, *overrides: str) -> Recipe:
    return (
        Recipe.preset("gpt-debug")
        .with_overrides(
            {
                "model.name": "hf",
                "model.architecture": arch,
                "model.config": TINY[arch],
                "data.tokenizer": "byte",
                "train.batch_size": 8,
                "train.seq_len": 32,
                "metrics.stats_interval": 0,
                "metrics.histogram_interval": 0,
            }
        )
        .with_overrides(list(overrides))
    )


def swap_all_for_quant_linear(model: torch.nn.Module) -> int:
    """Every linear (nn.Linear, Conv1D) becomes a QuantLinear with every role high."""
    swapped = 0
    for name, module in list(model.named_modules()):
        if linear_shape(module) is not None and not isinstance(module, QuantLinear):
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, child, QuantLinear.from_linear(module, {}))
            swapped += 1
    return swapped


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_role_high_gives_transformers_bits(arch, dtype):
    """nblab's model (QuantLinear on every linear, every role high, logits through the
    protocol, nblab's loss) against the unwrapped transformers model: equal logits and
    equal gradients, bit for bit, in fp32 and under bf16 autocast."""
    torch.manual_seed(0)
    ours = build_model(section(arch), vocab_size=VOCAB, max_seq_len=SEQ)
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, vocab_size=VOCAB, use_cache=False, **TINY[arch])
    theirs = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert swap_all_for_quant_linear(ours) == (9 if arch == "gpt2" else 15)
    idx = torch.randint(0, VOCAB, (2, SEQ))
    targets = torch.randint(0, VOCAB, (2, SEQ))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        ours_logits = architecture(ours).logits(ours, idx)
        theirs_logits = theirs(input_ids=idx).logits
        lm_loss(ours_logits, targets).backward()
        lm_loss(theirs_logits, targets).backward()
    assert ours_logits.dtype == theirs_logits.dtype
    assert torch.equal(ours_logits, theirs_logits)
    ours_grads = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        assert torch.equal(ours_grads[name].grad, p.grad), name


@pytest.mark.parametrize("preset", list(PRECISION_PRESETS))
def test_every_preset_trains_a_tiny_llama(preset):
    # d 128 and ffn 256: fp8_blockwise's 128 x 128 weight tiles fit q/o/gate/up/down
    wide = {"model.config.hidden_size": 128, "model.config.intermediate_size": 256}
    recipe = tiny_recipe("llama", f"precision.preset={preset}", "optimizer.lr=3e-3")
    recipe = recipe.with_overrides(wide)
    trainer = Trainer(recipe)
    losses = [trainer.train_step() for _ in range(30)]
    quantized = trainer.plan.quantized
    if preset != "bf16":
        assert quantized and all(name.startswith("model.layers.") for name in quantized)
        assert "lm_head" in trainer.plan.skipped  # the head stays high by default
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5, losses


def test_gpt2_conv1d_projections_are_quantized():
    trainer = Trainer(tiny_recipe("gpt2", "precision.preset=mxfp8"))
    quantized = set(trainer.plan.quantized)
    assert {"transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"} <= quantized
    module = trainer.model.get_submodule("transformer.h.0.attn.c_attn")
    assert isinstance(module, QuantLinear) and module.transposed_weight
    assert module.weight.shape == (64, 192)  # Conv1D's (in, out), as the checkpoint has it
    losses = [trainer.train_step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_shape_from_config_alone_counts_a_llama_8b():
    shape = model_shape(
        {
            "name": "hf",
            "architecture": "llama",
            "config": dict(
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
            ),
        },
        vocab_size=128256,
        max_seq_len=8192,
    )
    assert shape.n_params == 8_030_261_248  # Llama 3 8B
    assert shape.n_lookup_params == 128256 * 4096  # the untied embedding
    assert len(shape.linears) == 32 * 7 + 1
    q = next(s for s in shape.linears if s.name == "model.layers.0.self_attn.q_proj")
    assert (q.in_features, q.out_features, q.style, q.block) == (4096, 4096, "ColwiseParallel", 0)
    assert shape.flops_per_token(8192) == 6 * shape.n_matmul_params + 12 * 32 * 4096 * 8192


def test_tp_plans_come_from_the_config_or_are_refused_with_a_reason():
    llama = model_shape(section("llama"), VOCAB, SEQ)
    assert not llama.tp_problem
    down = next(s for s in llama.linears if s.name.endswith("mlp.down_proj"))
    assert down.style == "RowwiseParallel"
    assert "q_norm" in model_shape(section("qwen3"), VOCAB, SEQ).tp_problem
    assert "c_attn" in model_shape(section("gpt2"), VOCAB, SEQ).tp_problem
    assert "pipeline stages" in llama.pp_problem


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"model.path": "/no/such/checkpoint"}, "model.path", "no such folder"),
        ({"model.path": "meta-llama/Llama-3.1-8B"}, "model.path", "never downloads"),
        (
            {"model.architecture": "llama", "model.config.hidden_sise": 64},
            "model.config.hidden_sise",
            "did you mean 'hidden_size'",
        ),
        (
            {"model.architecture": "llama", "model.config.hidden_size": "big"},
            "model.config.hidden_size",
            "expected int",
        ),
        ({"model.architecture": "mamba2"}, "model.architecture", "one of llama"),
        ({}, "model.path", "exactly one of the two"),
        (
            {"model.architecture": "gpt2", "model.config.n_positions": 16},
            "train.seq_len",
            "16 positions",
        ),
        (
            {"model.architecture": "llama", "model.factory": "m:f"},
            "model.factory",
            "only for model.name='py'",
        ),
    ],
)
def test_bad_hf_models_name_their_field(overrides, field, says):
    base = Recipe.preset("gpt-debug").with_overrides(["data.tokenizer=byte"])
    with pytest.raises(RecipeError) as err:
        base.with_overrides({"model.name": "hf", **overrides})
    problems = {p[0]: p[2] for p in err.value.problems}
    assert field in problems, problems
    assert says in problems[field]


def test_a_checkpoint_folder_loads_offline_with_its_weights(tmp_path):
    torch.manual_seed(1)
    config = AutoConfig.for_model("qwen2", vocab_size=256, **TINY["qwen2"])
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    model = build_model({"name": "hf", "path": str(tmp_path)}, vocab_size=256, max_seq_len=32)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    for name, value in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    with pytest.raises(ValueError, match="embedding has 256 rows, but the tokenizer has 300"):
        build_model({"name": "hf", "path": str(tmp_path)}, vocab_size=300, max_seq_len=32)


def test_a_tokenizer_larger_than_the_checkpoint_embedding_is_named(tmp_path):
    config = AutoConfig.for_model("qwen2", vocab_size=512, **TINY["qwen2"])
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "ckpt")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "one document"}\n{"text": "another one"}\n')
    base = Recipe.preset("gpt-debug").with_overrides(
        {"model.name": "hf", "model.path": str(tmp_path / "ckpt"), "data.name": f"files:{corpus}"}
    )
    assert base.with_overrides(["data.tokenizer=bpe:512"]).data.tokenizer == "bpe:512"  # fits
    with pytest.raises(RecipeError) as err:
        base.with_overrides(["data.tokenizer=bpe:600"])
    (field, value, says), *_ = err.value.problems
    assert (field, value) == ("data.tokenizer", "bpe:600")
    assert "embedding has 512 rows, but this tokenizer has 600 ids" in says
