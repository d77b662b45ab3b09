"""Philox4x32-10 in plain torch, equal to `triton.language.randint(seed, offset)`.

Stochastic rounding draws one uint32 per element. The reference draws them with
the same counter-based generator the Triton kernels call, so a kernel given only a
seed still matches the reference bit for bit: element i of the (flattened) tensor
gets counter (i mod 2^32, i >> 32, 0, 0) and key (seed mod 2^32, seed >> 32).
All arithmetic is on int64 tensors holding uint32 values.
"""

from __future__ import annotations

import torch

ROUNDS = 10
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57
_MASK32 = 0xFFFFFFFF


def _mul_hi_lo(const: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(const * x) >> 32 and (const * x) mod 2^32 for uint32 x. The 64-bit product
    wraps in int64, but its bits are right mod 2^64, which is all we keep (the
    test against tl.randint pins this down)."""
    product = x * const
    return (product >> 32) & _MASK32, product & _MASK32


def randint(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """uint32 random bits (as int64) for each offset, as tl.randint(seed, offsets)."""
    offsets = offsets.to(torch.int64)
    c0 = offsets & _MASK32
    c1 = (offsets >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(ROUNDS):
        hi_b, lo_b = _mul_hi_lo(ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + KEY_A) & _MASK32, (k1 + KEY_B) & _MASK32
    return c0
