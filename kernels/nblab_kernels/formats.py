"""Element formats, scale formats and QuantSpec: the numbers of NUMERICS.md, once.

Every constant a quantizer needs (bias, max, min normal, min subnormal, the value
table) is computed here from the bit layout, and the reference quantizers and the
Triton kernels both read it from here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from functools import cached_property

import torch

# ---------------------------------------------------------------------------
# Element formats
# ---------------------------------------------------------------------------

# How the top exponent code is used. "finite": every code is a number (OCP fp6/fp4
# and the generic eXmY). "fn": only S.1111.111 is NaN (OCP e4m3). "ieee": the top
# exponent holds Inf and NaN (e5m2).
_SPECIALS = ("finite", "fn", "ieee")


@dataclass(frozen=True)
class ElementFormat:
    """One element format. kind is "float" (sign/exponent/mantissa), "int"
    (symmetric, never the most negative code) or "cast" (bf16/fp16/fp32)."""

    name: str
    kind: str
    ebits: int = 0
    mbits: int = 0
    specials: str = "finite"
    signed: bool = True
    int_max: int = 0  # only for kind == "int"
    torch_dtype: torch.dtype | None = None  # a native torch dtype with the same grid

    @property
    def bits(self) -> int:
        if self.kind == "int":
            return int(math.log2(self.int_max + 1)) + 1
        if self.kind == "cast":
            return torch.finfo(self.torch_dtype).bits
        return int(self.signed) + self.ebits + self.mbits

    @property
    def bias(self) -> int:
        return 2 ** (self.ebits - 1) - 1 if self.kind == "float" else 0

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number."""
        return 1 - self.bias

    @cached_property
    def max(self) -> float:
        if self.kind == "int":
            return float(self.int_max)
        if self.kind == "cast":
            return float(torch.finfo(self.torch_dtype).max)
        top_e = 2**self.ebits - 1
        if self.specials == "ieee":
            top_e -= 1
        top_m = 2**self.mbits - 1
        if self.specials == "fn":
            top_m -= 1  # S.1111.111 is NaN
        return (1 + top_m / 2**self.mbits) * 2.0 ** (top_e - self.bias)

    @property
    def emax(self) -> int:
        """floor(log2(max)): the exponent the OCP e8m0 floor rule subtracts."""
        return math.floor(math.log2(self.max))

    @property
    def min_normal(self) -> float:
        if self.kind == "int":
            return 1.0
        if self.kind == "cast":
            return float(torch.finfo(self.torch_dtype).tiny)
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        if self.kind == "int":
            return 1.0
        if self.kind == "cast":
            return float(torch.finfo(self.torch_dtype).smallest_normal) * float(
                torch.finfo(self.torch_dtype).eps
            )
        return 2.0 ** (self.emin - self.mbits)

    @property
    def has_nan(self) -> bool:
        return self.specials in ("fn", "ieee")

    @cached_property
    def values(self) -> torch.Tensor | None:
        """All finite non-negative values in code order (fp64), for formats of at
        most 8 bits; None for wider ones. Code order is value order."""
        if self.bits > 8 or self.kind == "cast":
            return None
        if self.kind == "int":
            return torch.arange(0, self.int_max + 1, dtype=torch.float64)
        vals = []
        for code in range(2 ** (self.ebits + self.mbits)):
            e, m = code >> self.mbits, code & (2**self.mbits - 1)
            if e == 0:
                v = m * self.min_subnormal
            else:
                v = (1 + m / 2**self.mbits) * 2.0 ** (e - self.bias)
            if v <= self.max:
                vals.append(v)
        return torch.tensor(vals, dtype=torch.float64)

    @property
    def storage_dtype(self) -> torch.dtype:
        """How QTensor.codes stores this format (fp4 packs two codes per uint8)."""
        if self.kind == "cast":
            return self.torch_dtype
        if self.kind == "int":
            return torch.int8
        if self.torch_dtype is not None:
            return self.torch_dtype
        return torch.uint8 if self.bits <= 8 else torch.int32

    @property
    def packed(self) -> bool:
        """fp4 codes are packed two per byte; int4 stays one int8 per element."""
        return self.bits == 4 and self.kind == "float"


def _float(name: str, e: int, m: int, **kw) -> ElementFormat:
    return ElementFormat(name=name, kind="float", ebits=e, mbits=m, **kw)


ELEMENT_FORMATS: dict[str, ElementFormat] = {
    f.name: f
    for f in (
        _float("e4m3", 4, 3, specials="fn", torch_dtype=torch.float8_e4m3fn),
        _float("e5m2", 5, 2, specials="ieee", torch_dtype=torch.float8_e5m2),
        _float("e3m2", 3, 2),
        _float("e2m3", 2, 3),
        _float("e2m1", 2, 1),
        ElementFormat("int8", "int", int_max=127),
        ElementFormat("int4", "int", int_max=7),
        ElementFormat("bf16", "cast", torch_dtype=torch.bfloat16),
        ElementFormat("fp16", "cast", torch_dtype=torch.float16),
        ElementFormat("fp32", "cast", torch_dtype=torch.float32),
    )
}

_EXMY = re.compile(r"^e(\d+)m(\d+)$")


def element_format(name: str) -> ElementFormat:
    """Look up an element format; any `eXmY` (X in 1..8, Y in 0..10) not in the table
    is the generic all-finite float with bias 2^(X-1)-1."""
    if name in ELEMENT_FORMATS:
        return ELEMENT_FORMATS[name]
    match = _EXMY.match(name)
    if match:
        e, m = int(match.group(1)), int(match.group(2))
        if 1 <= e <= 8 and 0 <= m <= 10:
            return _float(name, e, m)
    raise ValueError(
        f"element={name!r} is not a known element format; accepted: "
        f"{', '.join(ELEMENT_FORMATS)} or a generic eXmY with X in 1..8 and Y in 0..10"
    )


# ---------------------------------------------------------------------------
# Scale formats
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleFormat:
    """How one group's scale is stored. `grid` is the small-float grid the scale is
    rounded onto (ue4m3, ue5m3); e8m0 is a power of two 2^(byte-127)."""

    name: str
    kind: str  # "none" | "fp32" | "pow2" | "e8m0" | "float"
    grid: ElementFormat | None = None
    storage_dtype: torch.dtype | None = None
    rules: tuple[str, ...] = ()

    @property
    def max(self) -> float:
        if self.kind == "e8m0":
            return 2.0**127
        if self.grid is not None:
            return self.grid.max
        return float(torch.finfo(torch.float32).max)

    @property
    def min_normal(self) -> float:
        if self.kind == "e8m0":
            return 2.0**-127
        if self.grid is not None:
            return self.grid.min_normal
        return float(torch.finfo(torch.float32).tiny)


E8M0_NAN = 0xFF
E8M0_BIAS = 127
# pow2 scale exponents stay inside fp32's normal range so 1/scale is exact.
POW2_EXP_RANGE = (-126, 127)
E8M0_EXP_RANGE = (-127, 127)

SCALE_FORMATS: dict[str, ScaleFormat] = {
    s.name: s
    for s in (
        ScaleFormat("none", "none", rules=("none",)),
        ScaleFormat("fp32", "fp32", storage_dtype=torch.float32, rules=("amax",)),
        ScaleFormat("pow2", "pow2", storage_dtype=torch.float32, rules=("amax",)),
        ScaleFormat(
            "e8m0", "e8m0", storage_dtype=torch.uint8, rules=("floor", "ceil", "rceil", "even")
        ),
        ScaleFormat(
            "ue4m3",
            "float",
            grid=_float(
                "ue4m3", 4, 3, specials="fn", signed=False, torch_dtype=torch.float8_e4m3fn
            ),
            storage_dtype=torch.float8_e4m3fn,
            rules=("nvfp4",),
        ),
        ScaleFormat(
            "ue5m3",
            "float",
            grid=_float("ue5m3", 5, 3, specials="ieee", signed=False),
            storage_dtype=torch.uint8,
            rules=("nvfp4",),
        ),
    )
}


def scale_format(name: str) -> ScaleFormat:
    if name not in SCALE_FORMATS:
        raise ValueError(
            f"scale={name!r} is not a known scale format; accepted: {', '.join(SCALE_FORMATS)}"
        )
    return SCALE_FORMATS[name]


# ---------------------------------------------------------------------------
# QuantSpec
# ---------------------------------------------------------------------------

GRANULARITIES = ("tensor", "row", "col", "block", "tile")
ROUNDINGS = ("rne", "sr")
HADAMARD_SIZES = (0, 16, 32, 64, 128)  # 0: no transform
PADDINGS = ("error", "pad")
BLOCK_DIMS = (-1, 0)  # last dim, or the flattened leading dims (x^T for wgrad)
BLOCK_RANGE = (8, 128)


def _require(field: str, value, allowed) -> None:
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"QuantSpec.{field}={value!r} is not allowed; accepted: {shown}")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized. See NUMERICS.md for what each field means.

    - granularity: tensor | row (one scale per row of the last dim) | col | block
      (1 x `block` along `dim`) | tile (`block` x `block`). Tensors of rank > 2 are
      viewed as 2-D (prod(leading dims), last dim).
    - dim: -1 blocks along the last dim (the reduction dim of x in y = x W^T); 0
      along the leading dims (x^T and dy^T for the weight gradient), no copy needed.
    - rule: amax (fp32/pow2 scales), floor/ceil/rceil/even (e8m0), nvfp4 (the
      two-level ue4m3/ue5m3 block scale under an fp32 tensor scale).
    - hadamard: 0 or n, a random-sign Hadamard transform in chunks of n along `dim`
      applied before quantizing (signs from `hadamard_seed`).
    - padding: "error" rejects a dim the block does not divide; "pad" zero-pads.
    """

    element: str = "e4m3"
    scale: str | None = None  # None: "none" for casts, else "fp32"
    granularity: str = "tensor"
    block: int | None = None
    dim: int = -1
    rule: str | None = None  # None: the scale format's default (its first rule)
    rounding: str = "rne"
    hadamard: int = 0
    hadamard_seed: int = 0
    padding: str = "error"

    def __post_init__(self) -> None:
        elem = element_format(self.element)  # raises with the accepted names
        if self.scale is None:  # frozen: fill defaults through object.__setattr__
            object.__setattr__(self, "scale", "none" if elem.kind == "cast" else "fp32")
        sfmt = scale_format(self.scale)
        if self.rule is None:
            object.__setattr__(self, "rule", sfmt.rules[0])
        _require("granularity", self.granularity, GRANULARITIES)
        _require("rounding", self.rounding, ROUNDINGS)
        _require("hadamard", self.hadamard, HADAMARD_SIZES)
        _require("padding", self.padding, PADDINGS)
        _require("dim", self.dim, BLOCK_DIMS)
        if elem.kind == "cast":
            _require("scale", self.scale, ("none",))
            _require("granularity", self.granularity, ("tensor",))
            _require("rounding", self.rounding, ("rne",))
            _require("hadamard", self.hadamard, (0,))
        elif self.scale == "none":
            raise ValueError(
                f"QuantSpec.scale='none' is only for the plain casts bf16, fp16, fp32; "
                f"element={self.element!r} needs one of: fp32, pow2, e8m0, ue4m3, ue5m3"
            )
        _require("rule", self.rule, sfmt.rules)
        if self.granularity in ("block", "tile"):
            lo, hi = BLOCK_RANGE
            if not isinstance(self.block, int) or not lo <= self.block <= hi:
                raise ValueError(
                    f"QuantSpec.block={self.block!r} is not allowed for granularity="
                    f"{self.granularity!r}; accepted: an integer in {lo}..{hi}"
                )
        elif self.block is not None:
            raise ValueError(
                f"QuantSpec.block={self.block!r} is not allowed for granularity="
                f"{self.granularity!r}; accepted: None (block is for 'block' and 'tile')"
            )
        if self.rule == "nvfp4":
            _require("granularity", self.granularity, ("block", "tile"))
        blocked = self.granularity in ("block", "tile") and self.block
        if self.hadamard and blocked and self.block % self.hadamard and self.hadamard % self.block:
            raise ValueError(
                f"QuantSpec.hadamard={self.hadamard} and block={self.block} do not nest; "
                f"accepted: one a multiple of the other"
            )

    # -- derived ----------------------------------------------------------------
    @property
    def element_format(self) -> ElementFormat:
        return element_format(self.element)

    @property
    def scale_format(self) -> ScaleFormat:
        return scale_format(self.scale)

    @property
    def is_cast(self) -> bool:
        return self.element_format.kind == "cast"

    def replace(self, **changes) -> QuantSpec:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    @staticmethod
    def from_name(name: str) -> QuantSpec:
        if name not in QUANT_PRESETS:
            raise ValueError(
                f"QuantSpec name {name!r} is unknown; accepted: {', '.join(QUANT_PRESETS)}"
            )
        return QUANT_PRESETS[name]

    def describe(self) -> str:
        """Short human label, e.g. 'e2m1 block32(dim -1) e8m0/floor rne'."""
        if self.is_cast:
            return self.element
        gran = self.granularity
        if self.granularity in ("block", "tile"):
            gran = f"{gran}{self.block}" + (" (dim 0)" if self.dim == 0 else "")
        parts = [self.element, gran, f"{self.scale}/{self.rule}", self.rounding]
        if self.hadamard:
            parts.insert(0, f"hadamard{self.hadamard}")
        return " ".join(parts)


def _mx(element: str, rule: str = "floor") -> QuantSpec:
    return QuantSpec(element, "e8m0", "block", 32, rule=rule)


QUANT_PRESETS: dict[str, QuantSpec] = {
    "bf16": QuantSpec("bf16", "none"),
    "fp16": QuantSpec("fp16", "none"),
    "fp32": QuantSpec("fp32", "none"),
    "fp8_e4m3_tensor": QuantSpec("e4m3", "fp32", "tensor"),
    "fp8_e5m2_tensor": QuantSpec("e5m2", "fp32", "tensor"),
    "fp8_e4m3_row": QuantSpec("e4m3", "pow2", "row"),
    "fp8_e4m3_b128": QuantSpec("e4m3", "fp32", "block", 128),
    "fp8_e4m3_t128": QuantSpec("e4m3", "fp32", "tile", 128),
    "mxfp8": _mx("e4m3"),
    "mxfp8_rceil": _mx("e4m3", "rceil"),
    "mxfp6_e3m2": _mx("e3m2"),
    "mxfp6_e2m3": _mx("e2m3"),
    "mxfp4": _mx("e2m1"),
    "mxfp4_rceil": _mx("e2m1", "rceil"),
    "nvfp4": QuantSpec("e2m1", "ue4m3", "block", 16, rule="nvfp4"),
    "nvfp4_tile16": QuantSpec("e2m1", "ue4m3", "tile", 16, rule="nvfp4"),
    "int8_row": QuantSpec("int8", "fp32", "row"),
    "int4_b32": QuantSpec("int4", "fp32", "block", 32),
}
