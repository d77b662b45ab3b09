"""The built-in model: a llama-style decoder-only transformer in one readable file.

    tok_emb -> N x Block -> norm -> lm_head
    Block:  x = x + attn(attn_norm(x))      causal self-attention, RoPE, grouped-query heads
            x = x + mlp(mlp_norm(x))        SwiGLU: down(silu(gate(x)) * up(x))

Every projection is a plain ``nn.Linear(bias=False)`` so that the precision layer can swap
it for a quantized linear by module name. The names are part of the API:

    tok_emb, layers.{i}.attn_norm, layers.{i}.attn.wq|wk|wv|wo,
    layers.{i}.mlp_norm, layers.{i}.mlp.gate|up|down, norm, lm_head

Shapes: B batch, T sequence, d d_model, nh query heads, nkv key/value heads, hd head_dim,
V vocab, F ffn_hidden. A model built under ``with torch.device("meta"):`` allocates nothing;
after ``model.to_empty(device=...)`` call ``model.init_weights()`` to fill it.

It answers nblab's model protocol (nblab.models.protocol) with GPT_ARCHITECTURE: blocks
`layers`, the TP plan of TP_PLAN, pipeline stages by `stage_forward`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from nblab.models.protocol import (
    COLWISE,
    ROWWISE,
    Architecture,
    ModelShape,
    attach,
    count_params,
    linear_shapes,
    lm_loss,
)


@dataclass
class GPTConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden: int
    max_seq_len: int
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "ffn_hidden",
            "max_seq_len",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name}={value!r} must be a positive integer")
        if self.d_model % self.n_heads:
            divisors = [h for h in range(1, 65) if self.d_model % h == 0]
            raise ValueError(
                f"GPTConfig.n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                f"n_heads must be one of {divisors} (or a larger divisor)"
            )
        if self.n_heads % self.n_kv_heads:
            divisors = [h for h in range(1, self.n_heads + 1) if self.n_heads % h == 0]
            raise ValueError(
                f"GPTConfig.n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}; "
                f"n_kv_heads must be one of {divisors}"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"GPTConfig.n_heads={self.n_heads} gives head_dim = d_model / n_heads = "
                f"{self.head_dim}, which must be even for RoPE"
            )
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(
                f"GPTConfig.tie_embeddings={self.tie_embeddings!r} must be True or False"
            )
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"GPTConfig.{name}={value!r} must be a positive number")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


# GPTConfig kwargs per flavour; vocab_size and max_seq_len come from the dataset and recipe.
# Linear dims are multiples of 128 wherever d_model allows and of 32 always (quantization
# blocks are 16/32/128). Params with vocab 50257, tied head (untied adds vocab * d_model):
# debug 3.3M, tiny 7.3M, small 17.6M, 125m 123.6M, 1b 1.11B (1.00B without the embedding).
FLAVOURS: dict[str, dict] = {
    "debug": dict(d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, ffn_hidden=128),
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, ffn_hidden=384),
    "small": dict(d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, ffn_hidden=768),
    "125m": dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_hidden=2048),
    "1b": dict(d_model=2048, n_layers=16, n_heads=16, n_kv_heads=8, ffn_hidden=8192),
}


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.type_as(x) * self.weight


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles pos * theta^(-2i/hd), each (seq_len, hd/2)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + hd/2]) of x (B, T, H, hd) by position (the "half split" layout
    of GPT-NeoX / HF llama, not Meta's interleaved pairs; both are RoPE, weights differ)."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, T, H, hd/2) each
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # (1, T, 1, hd/2)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, T, H, hd)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape  # (B, T, d)
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, nh, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh|nkv, T, hd)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads
        )  # (B, nh, T, hd); each kv head serves nh / nkv query heads
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, d)
        return self.wo(y)  # (B, T, d)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.gate(x)) * self.up(x)  # (B, T, F)
        return self.down(h)  # (B, T, d)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)  # (B, T, d)
        x = x + self.mlp(self.mlp_norm(x))  # (B, T, d)
        return x


def stage_forward(self: GPT, x: torch.Tensor) -> torch.Tensor:
    """GPT.forward of one pipeline stage (nblab.parallel.pipeline): token ids (stage 0) or
    hidden states (B, T, d) in; hidden states or, on the last stage, logits (B, T, V) out.
    The stage runs the blocks listed in self.pp_blocks; parts it does not own are None."""
    if self.tok_emb is not None:
        x = self.tok_emb(x)  # (B, T, d)
    T = x.size(1)
    cos, sin = self.rope_cos[:T], self.rope_sin[:T]
    for i in self.pp_blocks:
        x = self.layers[i](x, cos, sin)
    if self.lm_head is not None:
        x = self.lm_head(self.norm(x))  # (B, T, V)
    return x


# Block-relative module -> tensor-parallel style: each TP rank holds whole heads of wq/wk/wv
# and a slice of gate/up (column-parallel), and the matching input slice of wo/down.
TP_PLAN = {
    "attn.wq": COLWISE,
    "attn.wk": COLWISE,
    "attn.wv": COLWISE,
    "attn.wo": ROWWISE,
    "mlp.gate": COLWISE,
    "mlp.up": COLWISE,
    "mlp.down": ROWWISE,
}

GPT_ARCHITECTURE = Architecture(
    blocks="layers",
    embedding="tok_emb",
    final_norm="norm",
    head="lm_head",
    tp_plan=TP_PLAN,
    tp_divided=("attn.n_heads", "attn.n_kv_heads"),  # Attention views by its head counts
    stage_forward=stage_forward,
)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one tensor, two uses
        # RoPE tables are derived, not learned: rebuilt by init_weights, never checkpointed.
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_weights()
        attach(self, GPT_ARCHITECTURE)

    @torch.no_grad()
    def init_weights(self) -> None:
        """normal(0, 0.02) for embeddings and linears, std / sqrt(2 * n_layers) for the
        projections that write into the residual stream (wo, down), ones for the norms. Also
        rebuilds the RoPE tables and re-ties the head: call it after ``to_empty(device=...)``."""
        cfg, std = self.config, 0.02
        if cfg.tie_embeddings:  # again: to_empty() gives each module its own tensor
            self.lm_head.weight = self.tok_emb.weight
        device = self.tok_emb.weight.device
        cos, sin = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)  # (T_max, hd/2) each
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                scaled = name.endswith((".wo", ".down"))
                nn.init.normal_(
                    module.weight, 0.0, std / math.sqrt(2 * cfg.n_layers) if scaled else std
                )
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, V) and, given targets (B, T), the mean cross
        entropy over targets != -100 (NaN if every target is masked)."""
        B, T = idx.shape
        if idx.size(1) > self.config.max_seq_len:
            raise ValueError(
                f"input length T={T} exceeds GPTConfig.max_seq_len={self.config.max_seq_len}"
            )
        x = self.tok_emb(idx)  # (B, T, d)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, hd/2) each
        for layer in self.layers:
            x = layer(x, cos, sin)  # (B, T, d)
        x = self.norm(x)  # (B, T, d)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None if targets is None else lm_loss(logits, targets)
        return logits, loss

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameters, each tensor counted once. exclude_embedding drops the token lookup
        table; a tied table is also the lm_head matmul, so it stays counted (as in nanoGPT)."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if exclude_embedding and not self.config.tie_embeddings:
            n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward), as in PaLM appendix B / nanoGPT:

            6 * N  +  12 * n_layers * d_model * seq_len

        N = num_params(exclude_embedding=True): each weight does one multiply-add (2 FLOPs)
        per token forward and two backward. The attention term counts q @ k^T and att @ v
        (2 * 2 * d_model * seq_len per layer forward, x3 for backward) over the full T x T
        square: the causal mask's saved half is not subtracted. GQA does not change it,
        since n_heads * head_dim = d_model."""
        cfg = self.config
        return (
            6 * self.num_params(exclude_embedding=True) + 12 * cfg.n_layers * cfg.d_model * seq_len
        )

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        greedy: bool = True,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append max_new_tokens tokens to idx (B, T0) -> (B, T0 + max_new_tokens). Greedy
        takes the argmax; otherwise samples softmax(logits / temperature). No KV cache: the
        context is re-read each step, cropped to the last max_seq_len tokens."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.max_seq_len :])  # (B, T, V)
            logits = logits[:, -1, :].float()  # (B, V)
            if greedy:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                probs = F.softmax(logits / temperature, dim=-1)  # (B, V)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)  # (B, T + 1)
        return idx


def gpt_config(
    flavour: str, vocab_size: int, max_seq_len: int, tie_embeddings: bool = True, **overrides
) -> GPTConfig:
    """The GPTConfig of a flavour; overrides replace any GPTConfig field (e.g. n_layers=3)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour={flavour!r} is not a gpt flavour; accepted: {sorted(FLAVOURS)}")
    accepted = {f.name for f in fields(GPTConfig)} - {"vocab_size", "max_seq_len"}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ValueError(
            f"override {unknown[0]!r} is not a GPTConfig field; accepted: {sorted(accepted)}"
        )
    kwargs = {**FLAVOURS[flavour], "tie_embeddings": tie_embeddings, **overrides}
    return GPTConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, **kwargs)


def gpt_shape(cfg: GPTConfig) -> ModelShape:
    """The ModelShape of a GPTConfig, from a model built on the meta device."""
    with torch.device("meta"):
        model = GPT(cfg)
    n_params, n_lookup = count_params(model, GPT_ARCHITECTURE)
    return ModelShape(
        kind="gpt",
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        ffn_hidden=cfg.ffn_hidden,
        vocab_size=cfg.vocab_size,
        tie_embeddings=cfg.tie_embeddings,
        linears=linear_shapes(model, GPT_ARCHITECTURE),
        n_params=n_params,
        n_lookup_params=n_lookup,
        block_prefix=GPT_ARCHITECTURE.block_prefix,
        max_seq_len=cfg.max_seq_len,
    )


def build_gpt(flavour: str, vocab_size: int, max_seq_len: int, **overrides) -> GPT:
    """A GPT of the named flavour; overrides replace any GPTConfig field (e.g. n_layers=3)."""
    return GPT(gpt_config(flavour, vocab_size, max_seq_len, **overrides))


# ---------------------------------------------------------------------------
# The same weights as a transformers LlamaForCausalLM (nblab's GPT is llama-style)
# ---------------------------------------------------------------------------

_LLAMA_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn.wq": "self_attn.q_proj",
    "attn.wk": "self_attn.k_proj",
    "attn.wv": "self_attn.v_proj",
    "attn.wo": "self_attn.o_proj",
    "mlp_norm": "post_attention_layernorm",
    "mlp.gate": "mlp.gate_proj",
    "mlp.up": "mlp.up_proj",
    "mlp.down": "mlp.down_proj",
}


def llama_name(name: str) -> str:
    """A GPT parameter name as LlamaForCausalLM's: layers.0.attn.wq.weight ->
    model.layers.0.self_attn.q_proj.weight. (RoPE is the same "half split" as HF Llama's.)"""
    if name.startswith("tok_emb."):
        return "model.embed_tokens." + name[len("tok_emb.") :]
    if name.startswith("norm."):
        return "model." + name
    if name.startswith("layers."):
        _, index, rest = name.split(".", 2)
        module, _, leaf = rest.rpartition(".")
        return f"model.layers.{index}.{_LLAMA_BLOCK_NAMES[module]}.{leaf}"
    return name  # lm_head.weight


def gpt_name(name: str) -> str:
    """llama_name's inverse."""
    back = {v: k for k, v in _LLAMA_BLOCK_NAMES.items()}
    if name.startswith("model.embed_tokens."):
        return "tok_emb." + name[len("model.embed_tokens.") :]
    if name.startswith("model.norm."):
        return name[len("model.") :]
    if name.startswith("model.layers."):
        _, _, index, rest = name.split(".", 3)
        module, _, leaf = rest.rpartition(".")
        return f"layers.{index}.{back[module]}.{leaf}"
    return name


def llama_config(cfg: GPTConfig):
    """The transformers LlamaConfig of the same model."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
