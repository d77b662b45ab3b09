import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nblab.models import MODEL_KINDS
from nblab.models import build_model as build_from_section
from nblab.models.gpt import (
    FLAVOURS,
    GPT,
    GPTConfig,
    apply_rope,
    rope_tables,
)


def build_model(name, flavour, vocab_size, max_seq_len, **overrides):
    """A model of the registry from a [model] section of name, flavour and config."""
    section = {"name": name, "flavour": flavour, "config": overrides}
    return build_from_section(section, vocab_size=vocab_size, max_seq_len=max_seq_len)


def small_config(**overrides) -> GPTConfig:
    kwargs = dict(
        vocab_size=16,
        d_model=32,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        ffn_hidden=64,
        max_seq_len=8,
    )
    return GPTConfig(**{**kwargs, **overrides})


def seeded_gpt(cfg: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


def test_forward_shapes_and_loss_is_mean_cross_entropy():
    model = seeded_gpt(small_config())
    idx = torch.randint(0, 16, (3, 8))
    targets = torch.randint(0, 16, (3, 8))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 8, 16)
    assert loss.shape == ()
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(24, 16), targets.view(24)))
    assert model(idx)[1] is None


def test_loss_ignores_targets_equal_to_minus_100():
    model = seeded_gpt(small_config())
    idx = torch.randint(0, 16, (2, 8))
    targets = torch.randint(0, 16, (2, 8))
    masked = targets.clone()
    masked[:, :5] = -100
    logits, loss = model(idx, masked)
    expected = F.cross_entropy(logits[:, 5:].reshape(-1, 16), targets[:, 5:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_forward_longer_than_max_seq_len_names_the_field():
    model = seeded_gpt(small_config())
    with pytest.raises(ValueError, match=r"T=9 exceeds GPTConfig.max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_causal_changing_token_t_leaves_earlier_logits_unchanged(n_kv_heads):
    model = seeded_gpt(small_config(n_kv_heads=n_kv_heads))
    idx = torch.randint(0, 16, (2, 8))
    changed = idx.clone()
    t = 5
    changed[:, t] = (idx[:, t] + 1) % 16
    before, after = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(before[:, :t], after[:, :t], rtol=0, atol=1e-6)
    assert (before[:, t:] - after[:, t:]).abs().amax() > 1e-3  # and token t does matter


def test_rope_tables_by_hand():
    cos, sin = rope_tables(seq_len=4, head_dim=8, theta=10000.0)
    assert cos.shape == sin.shape == (4, 4)
    # angle(pos, i) = pos * theta^(-2i / head_dim)
    assert cos[1, 0].item() == pytest.approx(math.cos(1.0))
    assert sin[3, 1].item() == pytest.approx(math.sin(3 * 10000.0 ** (-2 / 8)))
    assert torch.equal(cos[0], torch.ones(4)) and torch.equal(sin[0], torch.zeros(4))


def test_rope_scores_depend_only_on_the_relative_position():
    cos, sin = rope_tables(seq_len=16, head_dim=8, theta=10000.0)
    torch.manual_seed(0)
    q = torch.randn(1, 1, 1, 8).expand(1, 16, 1, 8)  # the same vector at every position
    k = torch.randn(1, 1, 1, 8).expand(1, 16, 1, 8)
    rq, rk = apply_rope(q, cos, sin)[0, :, 0], apply_rope(k, cos, sin)[0, :, 0]  # (16, 8)
    torch.testing.assert_close(rq.norm(dim=-1), q[0, :, 0].norm(dim=-1))  # a rotation
    scores = rq @ rk.T  # (16, 16): scores[m, n] = f(m - n)
    for shift in (1, 5):
        torch.testing.assert_close(scores[shift:, shift:], scores[:-shift, :-shift])
    assert (scores[3, 0] - scores[3, 2]).abs() > 1e-3  # and it does depend on the distance


def test_tied_head_shares_the_embedding_tensor_and_untied_does_not():
    tied = seeded_gpt(small_config())
    untied = seeded_gpt(small_config(tie_embeddings=False))
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_params() - tied.num_params() == 16 * 32


def test_module_names_are_the_public_contract():
    model = seeded_gpt(small_config(n_layers=2))
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    expected = {"lm_head"} | {
        f"layers.{i}.{part}"
        for i in range(2)
        for part in ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.gate", "mlp.up", "mlp.down")
    }
    assert linears == expected
    assert all(type(model.get_submodule(n)) is nn.Linear for n in linears)
    assert all(model.get_submodule(n).bias is None for n in linears)
    names = dict(model.named_modules())
    for name in ("tok_emb", "norm", "layers.0.attn_norm", "layers.1.mlp_norm"):
        assert name in names
    assert isinstance(model.layers, nn.ModuleList)
    assert isinstance(model.tok_emb, nn.Embedding)


def test_gqa_equals_full_attention_with_each_kv_head_repeated_for_its_group():
    gqa = seeded_gpt(small_config(n_heads=4, n_kv_heads=2))
    mha = GPT(small_config(n_heads=4, n_kv_heads=4))
    assert gqa.layers[0].attn.wk.weight.shape == (2 * 8, 32)  # n_kv_heads * head_dim
    state = gqa.state_dict()
    for key in list(state):
        if key.endswith(("attn.wk.weight", "attn.wv.weight")):  # (nkv*hd, d) -> (nh*hd, d)
            w = state[key].view(2, 8, 32)
            state[key] = w.repeat_interleave(2, dim=0).reshape(32, 32)
    mha.load_state_dict(state)
    idx = torch.randint(0, 16, (2, 8))
    torch.testing.assert_close(gqa(idx)[0], mha(idx)[0], rtol=1e-5, atol=1e-5)


def test_num_params_and_flops_per_token_by_hand():
    cfg = small_config()  # V=16, d=32, 2 layers, 2 heads (hd 16), 1 kv head, F=64
    per_layer = (
        32 * 32  # wq
        + 2 * 32 * 16  # wk, wv: one kv head of 16
        + 32 * 32  # wo
        + 3 * 32 * 64  # gate, up, down
        + 2 * 32  # attn_norm, mlp_norm
    )
    assert per_layer == 9280
    tied = GPT(cfg)
    assert tied.num_params() == 16 * 32 + 2 * 9280 + 32 == 19104
    # a tied table is the lm_head matmul too, so "non-embedding" keeps it (nanoGPT convention)
    assert tied.num_params(exclude_embedding=True) == 19104
    # 6 N + 12 * n_layers * d_model * seq_len
    assert tied.flops_per_token(8) == 6 * 19104 + 12 * 2 * 32 * 8 == 120768
    untied = GPT(small_config(tie_embeddings=False))
    assert untied.num_params() == 19104 + 16 * 32
    assert untied.num_params(exclude_embedding=True) == 19104
    assert untied.flops_per_token(8) == 120768  # the same matmuls either way


def test_125m_param_count_on_meta_device():
    with torch.device("meta"):
        model = build_model("gpt", "125m", vocab_size=50257, max_seq_len=1024)
    d, f, layers = 768, 2048, 12
    expected = 50257 * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d
    assert model.num_params() == expected == 123_551_232
    assert 110e6 <= model.num_params() <= 140e6
    assert model.tok_emb.weight.is_meta


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_each_flavour_validates_and_its_linears_fit_quantization_blocks(flavour):
    cfg = GPTConfig(vocab_size=50257, max_seq_len=1024, **FLAVOURS[flavour])
    with torch.device("meta"):
        model = GPT(cfg)
    dims = [
        dim
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name != "lm_head"
        for dim in (m.in_features, m.out_features)
    ]
    assert all(dim % 32 == 0 for dim in dims), dims
    if cfg.d_model % 128 == 0:
        assert all(dim % 128 == 0 for dim in dims), dims
    if flavour in ("125m", "1b"):
        assert cfg.ffn_hidden % 128 == 0


def test_1b_has_gqa_and_about_a_billion_non_embedding_params():
    with torch.device("meta"):
        model = build_model("gpt", "1b", vocab_size=32000, max_seq_len=2048)
    assert model.config.n_kv_heads == 8 < model.config.n_heads == 16
    non_embedding = model.num_params() - 32000 * 2048
    assert 0.95e9 <= non_embedding <= 1.05e9


@pytest.mark.parametrize("flavour", ["debug", "tiny"])
def test_debug_and_tiny_train_forward_and_backward(flavour):
    torch.manual_seed(0)
    model = build_model("gpt", flavour, vocab_size=50, max_seq_len=32)
    idx = torch.randint(0, 50, (2, 32))
    _, loss = model(idx, idx.roll(-1, dims=1))
    assert math.isfinite(loss.item())
    assert abs(loss.item() - math.log(50)) < 0.5  # small init: near-uniform predictions
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_init_scales_residual_output_projections():
    torch.manual_seed(0)
    model = build_model("gpt", "small", vocab_size=256, max_seq_len=16)
    expected = 0.02 / math.sqrt(2 * 6)
    for name in ("layers.0.attn.wo", "layers.5.mlp.down"):
        std = model.get_submodule(name).weight.std().item()
        assert abs(std - expected) / expected < 0.05, (name, std)
    assert abs(model.layers[0].attn.wq.weight.std().item() - 0.02) < 0.001
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 0.001
    assert torch.equal(model.norm.weight, torch.ones(256))


def test_meta_build_then_to_empty_and_init_weights_matches_a_direct_build():
    cfg = small_config()
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    direct = GPT(cfg)  # init_weights alone decides every parameter, whatever came before
    torch.manual_seed(0)
    direct.init_weights()
    assert model.lm_head.weight is model.tok_emb.weight
    torch.testing.assert_close(model.rope_cos, direct.rope_cos, rtol=0, atol=0)
    idx = torch.randint(0, 16, (2, 8))
    torch.testing.assert_close(model(idx)[0], direct(idx)[0], rtol=0, atol=0)


def test_rope_buffers_are_not_checkpointed():
    model = seeded_gpt(small_config())
    assert not any("rope" in key for key in model.state_dict())


def test_generate_greedy_appends_the_argmax_of_each_prefix():
    model = seeded_gpt(small_config(max_seq_len=6))
    idx = torch.randint(0, 16, (2, 3))
    out = model.generate(idx, max_new_tokens=5)  # 8 > max_seq_len: the context is cropped
    assert out.shape == (2, 8)
    assert torch.equal(out[:, :3], idx)
    for t in range(3, 8):
        context = out[:, max(0, t - 6) : t]
        assert torch.equal(out[:, t], model(context)[0][:, -1].argmax(-1))


def test_generate_sampling_is_reproducible_with_a_generator():
    model = seeded_gpt(small_config())
    idx = torch.zeros(4, 1, dtype=torch.long)
    a = model.generate(idx, 6, greedy=False, generator=torch.Generator().manual_seed(3))
    b = model.generate(idx, 6, greedy=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.shape == (4, 7)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (dict(d_model=128, n_heads=6, n_kv_heads=6), r"n_heads=6 does not divide d_model=128"),
        (dict(n_heads=4, n_kv_heads=3), r"n_kv_heads=3 does not divide n_heads=4"),
        (dict(d_model=6, n_heads=2, n_kv_heads=2), r"n_heads=2 gives head_dim .* 3, .* even"),
        (dict(d_model=0), r"d_model=0 must be a positive integer"),
        (dict(vocab_size=-1), r"vocab_size=-1 must be a positive integer"),
        (dict(max_seq_len=1.5), r"max_seq_len=1.5 must be a positive integer"),
        (dict(n_layers=True), r"n_layers=True must be a positive integer"),
        (dict(norm_eps=0.0), r"norm_eps=0.0 must be a positive number"),
        (dict(rope_theta=-1.0), r"rope_theta=-1.0 must be a positive number"),
        (dict(tie_embeddings="yes"), r"tie_embeddings='yes' must be True or False"),
    ],
)
def test_invalid_config_names_the_field_value_and_rule(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        small_config(**overrides)


def test_registry_builds_gpt_and_applies_overrides():
    assert set(MODEL_KINDS) == {"gpt", "hf", "py"}
    model = build_model("gpt", "debug", vocab_size=11, max_seq_len=20, n_layers=3)
    assert isinstance(model, GPT)
    assert len(model.layers) == 3
    assert model.config.d_model == 64 and model.config.vocab_size == 11
    assert model.config.max_seq_len == 20


@pytest.mark.parametrize(
    ("args", "overrides", "pattern"),
    [
        (("llama", "tiny"), {}, r"name='llama' .* accepted: \['gpt', 'hf', 'py'\]"),
        (("gpt", "huge"), {}, r"flavour='huge' .* accepted: \['125m', '1b', 'debug', 'small'"),
        (
            ("gpt", "tiny"),
            {"n_layer": 2},
            r"'n_layer' is not a GPTConfig field; accepted: .*n_layers",
        ),
        (("gpt", "tiny"), {"n_heads": 5}, r"n_heads=5 does not divide d_model=128"),
    ],
)
def test_build_model_rejects_unknown_names_with_accepted_values(args, overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_model(*args, vocab_size=10, max_seq_len=8, **overrides)
