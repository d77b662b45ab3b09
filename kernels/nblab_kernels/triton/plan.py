"""What the Triton quantize kernels support, and how a spec is tiled. No triton import.

Every group of a spec has an extent along each dim of the (M, K) view: 1, the block
B, or the whole dim (tensor / row / col). A program owns a BM x BK tile:

- a group that fits in a tile (extent a power of two; a whole dim rounded up to a
  power of two and masked) is reduced inside the program: one pass over x;
- a whole-dim group that is too large to fit "spans" tiles: a first kernel reduces
  each tile's part and atomic-maxes it into a (gm, gk) buffer, the quantize kernel
  then reads the group amax from there (two passes over x).

NVFP4 always takes the first pass for the tensor amax; its blocks live in the tile.
A Hadamard transform of n along dim -1 (dim 0) needs n | BK (n | BM): its chunks are
transformed inside the tile, in both passes, before any amax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import QuantSpec

INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DEVICE_TYPES = ("cuda", "cpu")  # cpu: only under the Triton interpreter

# A whole-dim group (tensor / row / col) of at most this many elements (after
# rounding its extents up to powers of two) is reduced inside one program.
MAX_INTILE_GROUP = 8192
# Target elements per program when the groups leave the tile shape free.
TILE_ELEMS = 4096
MAX_TILE_K = 128
# Groups taller than one row keep the tile near TILE_ELEMS by narrowing it, but to no
# fewer than COL_TILE_K columns (a 128-byte fp32 row segment: coalesced loads). So a
# column group lies in one tile up to 128 rows; a taller one spans tiles (two passes).
# The AOT compile (nblab_kernels.aot) found the wider tiles spilling: 2048 x 128 fp32
# (20 KB a thread, sm_90), and the statistics kernels of 512 x 32 and of 128 x 128
# for 128-row blocks. Only a 128 x 128 tile group is still 16384 elements a program.
COL_TILE_K = 32


def unsupported_reason(x: torch.Tensor, spec: QuantSpec) -> str | None:
    """Why the Triton kernels cannot quantize x by spec (None: they can). The reason
    names the offending field so that a fallback warning says what to change."""
    if spec.is_cast:
        return f"plain cast element={spec.element!r} has no Triton kernel (it is a dtype cast)"
    if x.dtype not in INPUT_DTYPES:
        return f"input dtype {x.dtype} is not supported; Triton kernels take fp32, bf16, fp16"
    if x.device.type not in DEVICE_TYPES:
        return f"device {x.device} is not supported; Triton kernels run on cuda (cpu interpreted)"
    fmt = spec.element_format
    if fmt.bits > 8:
        return f"element={spec.element!r} has {fmt.bits} bits; Triton kernels take at most 8"
    if spec.granularity in ("block", "tile") and spec.block & (spec.block - 1):
        return f"block={spec.block} is not a power of two; Triton kernels need one"
    return None


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class TilePlan:
    """How the quantize kernel tiles an (M, K) view for one spec.

    bm x bk elements per program; rm x rk groups per program (1 along a spanning
    dim); span_m / span_k: the group covers the whole dim across programs and its
    amax comes from the first pass."""

    bm: int
    bk: int
    rm: int
    rk: int
    span_m: bool
    span_k: bool

    @property
    def spans(self) -> bool:
        return self.span_m or self.span_k

    def grid(self, m: int, k: int) -> tuple[int, int]:
        return (-(-m // self.bm), -(-k // self.bk))

    @property
    def num_warps(self) -> int:
        """About 16 elements per thread, at most 16 warps (ptxas sm_90: no spills)."""
        return min(16, max(4, self.bm * self.bk // 512))

    @staticmethod
    def of(spec: QuantSpec, m: int, k: int) -> TilePlan:
        g, b = spec.granularity, spec.block
        full_m, full_k = next_pow2(m), next_pow2(k)
        # group extent along (M, K): an int fits a tile, None spans the whole dim
        if g == "tensor":
            ext = (full_m, full_k) if full_m * full_k <= MAX_INTILE_GROUP else (None, None)
        elif g == "row":
            ext = (1, full_k if full_k <= MAX_INTILE_GROUP else None)
        elif g == "col":
            fits = full_m <= MAX_INTILE_GROUP and full_m * COL_TILE_K <= TILE_ELEMS
            ext = (full_m if fits else None, 1)
        elif g == "tile":
            ext = (b, b)
        else:
            ext = (1, b) if spec.dim == -1 else (b, 1)
        gm, gk = (e or 1 for e in ext)
        # a Hadamard chunk of n along its dim lies whole inside one tile
        had_m, had_k = (spec.hadamard, 1) if spec.dim == 0 else (1, spec.hadamard or 1)
        narrow = max(COL_TILE_K, TILE_ELEMS // max(gm, had_m))
        bk = max(gk, had_k, min(full_k, MAX_TILE_K, narrow))
        bm = max(gm, had_m, min(full_m, max(1, TILE_ELEMS // bk)))
        return TilePlan(
            bm=bm,
            bk=bk,
            rm=1 if ext[0] is None else bm // gm,
            rk=1 if ext[1] is None else bk // gk,
            span_m=ext[0] is None,
            span_k=ext[1] is None,
        )
