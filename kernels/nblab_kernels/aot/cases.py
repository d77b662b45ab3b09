"""The calls whose kernel specializations the AOT compile covers.

A `Case` is one call of the public API (`quantize`, `fake_quantize`, `quant_stats`)
on an input of one dtype, shape and layout, with one source of stochastic-rounding
bits. Running it through the Triton launcher in compile-only mode (`capture`) yields
the kernel specializations that call would compile on a GPU.

Which calls: every named QuantSpec (`api_cases`), and whatever a caller adds (nblab
adds each precision preset's roles as QuantLinear applies them, see
nblab.precision.aot), each crossed with

- the op: fake (dequantized in x's dtype), packed (codes and scales), stats (packed
  plus the statistics rows);
- the input dtype: fp32, bf16, fp16;
- the SR bits: none for rne; for sr both a given bits tensor and a Philox seed;
- the shapes in SHAPES: the tile plans that matter (see there).

Not enumerated, so compiled on a GPU at first use only: dims that are not multiples
of 16 (triton specializes M, K and the row stride on divisibility by 16: the same
code without the alignment hints), in-tile rows and columns of other powers of two
(the same code over another tile extent), and strided views other than a transpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ..formats import QUANT_PRESETS, QuantSpec

OPS = ("fake", "packed", "stats")  # fake_quantize, quantize, quant_stats
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# (M, K) of the 2-D view, and the granularities it is for. The tile plan
# (plan.TilePlan) depends on the shape only through powers of two and a few
# thresholds. These reach every kind of plan, each at its largest tile (the most
# registers); other sizes of a kind differ only in the tile's extent and warps (16
# elements a thread in every in-tile row plan).
SHAPES = {
    # tokens x features: every block and tile spec's one plan (the same for any
    # M >= 32 and K >= 128); a row of 8192, the widest in one tile (1 x 8192, 16
    # warps); tensor groups, and column groups over more than 128 rows, span tiles
    "train": (1024, 8192),
    # rows wider than 8192 span tiles (an MLP's down projection, K = 14336 and up);
    # a column group of 128 rows, the tallest in one tile (128 x 32)
    "wide": (128, 16384),
    # a whole tensor of 8192 elements, the most in one tile (64 x 128)
    "small": (64, 128),
}
SHAPE_GRANULARITIES = {
    "train": ("tensor", "row", "col", "block", "tile"),
    "wide": ("row", "col"),  # the others plan as at "train"
    "small": ("tensor",),  # rows and columns plan as at "train" or "wide"
}

# "rows": a contiguous (M, K) tensor. "cols": the transpose of a contiguous (K, M)
# one, as QuantLinear reads a transformers Conv1D weight (GPT-2 stores W as (in, out)).
LAYOUTS = ("rows", "cols")


@dataclass(frozen=True)
class Case:
    """One API call: op(x, spec, rbits= | seed=) on x of `dtype`, SHAPES[shape], `layout`.
    origin says where the spec comes from ("QuantSpec mxfp8", "preset nvfp4 wgrad_x")."""

    origin: str
    spec: QuantSpec
    op: str
    dtype: str
    bits: str  # "rne" | "rbits" (a given bits tensor) | "seed" (Philox in the kernel)
    shape: str = "train"
    layout: str = "rows"

    @property
    def call(self) -> tuple:
        """The call itself, whatever its origin."""
        return (self.spec, self.op, self.dtype, self.bits, self.shape, self.layout)

    @property
    def label(self) -> str:
        where = self.shape if self.layout == "rows" else f"{self.shape}/{self.layout}"
        return f"{self.origin} {self.op} {self.dtype} {self.bits} {where}"

    def launch(self) -> None:
        """Run the call through the Triton launcher. The tensors are meta tensors: the
        launcher plans, allocates and binds them as on a GPU (a meta tensor's address
        is 0, aligned like a fresh CUDA allocation), and no memory is touched, since a
        compile-only launch never reads or writes them."""
        from ..triton import quantize as tq

        m, k = SHAPES[self.shape]
        dtype, meta = DTYPES[self.dtype], torch.device("meta")
        if self.layout == "rows":
            x = torch.empty(m, k, dtype=dtype, device=meta)
        else:
            x = torch.empty(k, m, dtype=dtype, device=meta).t()
        rbits = torch.empty(m, k, dtype=torch.int64, device=meta) if self.bits == "rbits" else None
        seed = 0x5EED if self.bits == "seed" else None
        # the public quantize / fake_quantize / quant_stats are these launches plus host
        # code that reads the outputs (which compile-only launches never write)
        tq._launch(x, self.spec, rbits, seed, fake=self.op == "fake", stats=self.op == "stats")


def bit_sources(spec: QuantSpec) -> tuple[str, ...]:
    return ("rne",) if spec.rounding == "rne" else ("rbits", "seed")


def spec_cases(
    origin: str,
    spec: QuantSpec,
    ops: Iterable[str] = OPS,
    dtypes: Iterable[str] = tuple(DTYPES),
    shapes: Iterable[str] = tuple(SHAPES),
    layouts: Iterable[str] = ("rows",),
) -> list[Case]:
    """Every combination for one spec. Shapes the spec cannot take (a block that does
    not divide them) are left out, as the API would refuse them."""
    from ..triton.plan import unsupported_reason

    out = []
    for shape in shapes:
        if spec.granularity not in SHAPE_GRANULARITIES[shape] or not _fits(spec, SHAPES[shape]):
            continue
        for layout in layouts:
            for op in ops:
                for dtype in dtypes:
                    probe = torch.empty(0, dtype=DTYPES[dtype])
                    if unsupported_reason(probe, spec) is not None:
                        continue  # the dispatcher sends it to the reference
                    for bits in bit_sources(spec):
                        out.append(Case(origin, spec, op, dtype, bits, shape, layout))
    return out


def _fits(spec: QuantSpec, shape: tuple[int, int]) -> bool:
    from ..reference import GroupLayout, _check_hadamard

    try:
        GroupLayout.of(shape, *shape, spec)
        if spec.hadamard:
            _check_hadamard(shape, spec.hadamard, spec.dim)
    except ValueError:
        return False
    return True


def named_specs() -> dict[str, QuantSpec]:
    """The QuantSpecs the API takes by name (plain casts have no kernel)."""
    return {name: spec for name, spec in QUANT_PRESETS.items() if not spec.is_cast}


def api_cases(specs: Mapping[str, QuantSpec] | None = None) -> list[Case]:
    """Every op x dtype x shape of every named QuantSpec (or of `specs`)."""
    specs = named_specs() if specs is None else specs
    return [c for name, spec in specs.items() for c in spec_cases(f"QuantSpec {name}", spec)]
