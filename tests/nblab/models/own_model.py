"""A model of one's own for the tests of model.name = "py" (factory own_model:build).

Its blocks sit in `blocks` and its head in `out`: nblab finds both itself."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class MLPMixerLM(nn.Module):
    """Token embedding, a causal running mean over positions, residual MLP blocks, head."""

    def __init__(self, vocab_size: int, d: int, n_blocks: int):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n_blocks))
        self.out = nn.Linear(d, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)  # (B, T, d)
        steps = torch.arange(1, idx.size(1) + 1, device=idx.device, dtype=x.dtype)
        x = x + x.cumsum(1) / steps[None, :, None]  # causal: position t sees 0..t
        for block in self.blocks:
            x = block(x)
        return self.out(x)  # (B, T, V)


def build(table: dict, vocab_size: int) -> nn.Module:
    config = table["config"]
    return MLPMixerLM(vocab_size, config.get("d_model", 64), config.get("n_blocks", 2))


def not_a_module(table: dict, vocab_size: int):
    return "a string"
