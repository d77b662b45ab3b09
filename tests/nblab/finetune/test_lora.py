"""LoRA through peft: only the adapters train (counted), the merged weight is W + B A alpha/r
(and peft's own merge gives the same tensor), bad targets are refused by name."""

from __future__ import annotations

import pytest
import torch

from nblab import Recipe
from nblab.finetune import dense_state_dict, prepare
from nblab.finetune.lora import apply_lora, lora_layers, target_names
from nblab.models import build_model
from nblab.models.protocol import architecture
from nblab.precision.plan import apply_precision
from nblab.recipe import RecipeError
from nblab.train.trainer import Trainer

DEBUG = Recipe.preset("gpt-debug").with_overrides(
    ["metrics.stats_interval=0", "data.name=addition", "data.digits=2", "train.seq_len=20"]
)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(DEBUG.model, vocab_size=64, max_seq_len=32)


def test_lora_trains_only_adapter_parameters_and_the_optimizer_sees_only_them():
    recipe = DEBUG.with_overrides(
        {"finetune.method": "lora", "finetune.r": 4, "finetune.target_modules": ["*.attn.w?"]}
    )
    trainer = Trainer(recipe)
    model = trainer.model
    # gpt-debug: 2 blocks x wq wk wv wo, each 64 -> 64: r (in + out) adapter parameters
    expected = 2 * 4 * 4 * (64 + 64)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected == trainer.finetune.trainable
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    in_optimizer = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert sum(p.numel() for p in in_optimizer) == expected
    assert {id(p) for p in in_optimizer} == {id(p) for p in trainable.values()}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in trainable.items()}
    for _ in range(2):
        trainer.train_step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    changed = [
        n for n, p in model.named_parameters() if n in adapters and not torch.equal(p, adapters[n])
    ]
    assert changed  # B starts at zero: the first steps move it
    assert "adapter parameters train" in trainer.describe()


def test_merged_weight_is_w_plus_ba_alpha_over_r_and_peft_merges_the_same_tensor():
    model = _model()
    arch = architecture(model)
    names = target_names(model, [], block_prefix=arch.block_prefix)
    assert len(names) == 14  # every linear of the 2 blocks, not the head
    before = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    apply_lora(model, names, r=4, alpha=12.0, dropout=0.0)
    torch.manual_seed(1)
    for layer in lora_layers(model).values():  # a trained adapter: B no longer zero
        torch.nn.init.normal_(layer.lora_B["default"].weight)
    dense = dense_state_dict(model)
    for name in names:
        layer = model.get_submodule(name)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        by_hand = before[name] + (b @ a) * (12.0 / 4)
        assert torch.equal(dense[f"{name}.weight"], by_hand.detach())
    assert not any("lora" in k or "base_layer" in k for k in dense)
    assert set(dense) == set(_model().state_dict())
    for name in names:  # peft's own merge, in place
        layer = model.get_submodule(name)
        layer.merge()
        assert torch.equal(layer.get_base_layer().weight.detach(), dense[f"{name}.weight"])


def test_lora_wraps_quantlinears_whose_roles_still_quantize_the_base_gemm():
    model = _model()
    arch = architecture(model)
    apply_precision(model, "mxfp4", block_prefix=arch.block_prefix, head=arch.head)
    plan = prepare(model, DEBUG.with_overrides({"finetune.method": "lora"}).finetune, arch)
    base = model.layers[0].attn.wq.get_base_layer()
    assert type(base).__name__ == "QuantLinear" and base.specs["fwd_w"] is not None
    # r = 8 on 2 blocks: wq wk wv wo (64 -> 64), gate and up (64 -> 128), down (128 -> 64)
    assert plan.trainable == 8 * 2 * (4 * (64 + 64) + 3 * (64 + 128))
    x = torch.randn(3, 64)
    assert torch.equal(model.layers[0].attn.wq(x), base(x))  # B = 0: the base's output


def test_target_globs_that_match_nothing_are_refused_with_the_field_named():
    with pytest.raises(RecipeError) as err:
        DEBUG.with_overrides({"finetune.method": "lora", "finetune.target_modules": ["*.q_proj"]})
    (problem,) = err.value.problems
    assert problem[0] == "finetune.target_modules" and problem[1] == "*.q_proj"
    assert "layers.0.attn.wq" in problem[2]
    with pytest.raises(ValueError, match="matches no linear"):
        target_names(_model(), ["nope*"], block_prefix="layers.")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"finetune.base_format": "nvfp4"}, "finetune.base_format"),  # needs method lora
        ({"finetune.method": "lora", "finetune.base_format": "nvfp5"}, "finetune.base_format"),
        ({"finetune.method": "qlora"}, "finetune.method"),
        ({"finetune.method": "lora", "finetune.r": 0}, "finetune.r"),
        ({"finetune.method": "lora", "finetune.dropout": 1.0}, "finetune.dropout"),
        (
            {"finetune.method": "lora", "parallel.nproc": 2, "parallel.dp_shard": 2},
            "finetune.method",
        ),
    ],
)
def test_bad_finetune_sections_are_refused_with_the_field_named(overrides, field):
    with pytest.raises(RecipeError) as err:
        DEBUG.with_overrides(overrides)
    assert [p[0] for p in err.value.problems] == [field]


HF_TINY = {
    "llama": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 128, "n_positions": 32},
}


@pytest.mark.parametrize(("arch", "base_format"), [("llama", "nvfp4"), ("gpt2", "")])
def test_lora_fine_tunes_a_hugging_face_model_and_folds_back_to_its_plain_weights(
    arch, base_format
):
    recipe = DEBUG.with_overrides(
        {
            "model.name": "hf",
            "model.architecture": arch,
            "model.config": HF_TINY[arch],
            "finetune.method": "lora",
            "finetune.base_format": base_format,
            "metrics.histogram_interval": 1,
        }
    )
    trainer = Trainer(recipe)
    assert (
        trainer.finetune.trainable
        == sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        > 0
    )
    trainer.train_step()  # histograms read the packed weights too
    dense = dense_state_dict(trainer.model)
    vocab = trainer.dataset.vocab_size
    plain = build_model(recipe.model, vocab_size=vocab, max_seq_len=20).state_dict()
    assert {k: tuple(v.shape) for k, v in dense.items()} == {
        k: tuple(v.shape) for k, v in plain.items()
    }
    for name, layer in lora_layers(trainer.model).items():
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        delta = (b @ a) * 2.0  # alpha 16 / r 8
        if arch == "gpt2":
            delta = delta.t()  # Conv1D stores W as (in, out)
        base = layer.get_base_layer()
        w = base.dequantized(torch.float32) if base_format else base.weight
        assert torch.equal(dense[f"{name}.weight"], w.detach().float() + delta.detach())


def test_a_lora_run_on_a_packed_base_resumes_exactly(tmp_path, monkeypatch):
    import shutil

    from nblab.runs import RunStore
    from nblab.train import checkpoint
    from nblab.train.trainer import train

    monkeypatch.setenv("NBLAB_HOME", str(tmp_path / "home"))
    store = RunStore()
    recipe = DEBUG.with_overrides(
        {
            "finetune.method": "lora",
            "finetune.base_format": "nvfp4",
            "train.steps": 4,
            "train.batch_size": 8,
            "checkpoint.interval": 2,
            "checkpoint.keep": 3,
            "eval.interval": 0,
            "metrics.log_interval": 1,
            "metrics.histogram_interval": 0,
        }
    )

    def losses(run_id):
        m = store.metrics(run_id, keys="loss")
        return m.groupby("step").value.last().tolist()

    first = train(recipe, store=store)
    folder = store.run_dir(first.run_id) / "checkpoints"
    assert [p.name for p in checkpoint.list_checkpoints(folder)] == ["step_0000002", "step_0000004"]
    whole = losses(first.run_id)
    shutil.rmtree(folder / "step_0000004")  # as if it stopped after step 2's checkpoint
    resumed = train(recipe, store=store, run_id=first.run_id, resume=True)
    assert resumed.status == "succeeded" and resumed.step == 4
    assert len(whole) == 4 and losses(first.run_id) == whole  # steps 3 and 4 again, the same
