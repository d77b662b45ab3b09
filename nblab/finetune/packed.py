"""A frozen base stored once as packed codes and scales (QLoRA's idea, any nblab format).

    pack_base(model, names, "nvfp4")     # each named linear -> PackedLinear, in place
    storage(model)                       # what the packed weights take, measured, vs bf16

A PackedLinear keeps no weight Parameter: its weight is the buffers of one
nblab_kernels.quantize call (codes two per byte for fp4 and int4, block scales, NVFP4's
tensor scale), and reading `.weight` dequantizes them. QLoRA (Dettmers et al. 2023,
"QLoRA: Efficient Finetuning of Quantized LLMs") stores its base in NF4 with double-quantized
scales and dequantizes to bf16 for each GEMM; here the format is any QuantSpec preset and
the dequantized weight goes through QuantLinear's GEMMs, so the precision plan's roles
(fwd_x, fwd_w, dgrad_*) still quantize its operands as in pretraining. No weight gradient
is computed (the base is frozen), so the wgrad roles never run.

The weight is quantized along in_features (the forward GEMM's reduction dim), as a
serving kernel would read it. Between a layer's forward and its backward the dequantized
weight is held for dgrad, as a fake-quant QuantLinear holds its weight; a fused kernel
would dequantize again instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

import nblab_kernels as nk
from nblab.precision.linear import QuantLinear, linear_shape, on_stored_layout
from nblab.precision.presets import ROLES
from nblab_kernels import QuantSpec

BF16_BYTES = 2


def base_formats() -> list[str]:
    """The QuantSpec presets a base may be stored in (every preset but fp32, which is
    what an unpacked base already is)."""
    return [name for name in nk.QUANT_PRESETS if name != "fp32"]


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes in [-8, 7] -> uint8, two per byte along the last dim (low nibble first)."""
    low, high = codes[..., 0::2], codes[..., 1::2]
    return ((low & 0xF) | ((high & 0xF) << 4)).to(torch.uint8)


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """_pack_nibbles' inverse: sign-extend each 4-bit two's complement nibble."""
    nibbles = torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2).to(torch.int8)
    return (nibbles ^ 8) - 8


class PackedLinear(QuantLinear):
    """A frozen QuantLinear whose weight is stored packed (see the module docstring).
    Its precision specs and backend are those of the linear it replaces (none for an
    nn.Linear left in high precision); its bias stays a frozen high-precision Parameter."""

    def __init__(self, linear: nn.Module, spec: QuantSpec | str):
        nn.Module.__init__(self)  # not nn.Linear's: there is no weight Parameter
        shape = linear_shape(linear)
        if shape is None:
            raise TypeError(f"{type(linear).__name__} is neither an nn.Linear nor a Conv1D")
        self.in_features, self.out_features, self.transposed_weight = shape
        specs = linear.specs if isinstance(linear, QuantLinear) else {}
        self.specs = {role: specs.get(role) for role in ROLES}
        self.stored_specs = {role: on_stored_layout(s, role) for role, s in self.specs.items()}
        self.backend = getattr(linear, "backend", "auto")
        self.native_gemms = getattr(linear, "native_gemms", frozenset())
        self.recording = False
        self.recorded: list[tuple[str, nk.QuantStats]] = []
        self.base_name = spec if isinstance(spec, str) else spec.describe()
        self.base_spec = QuantSpec.from_name(spec) if isinstance(spec, str) else spec
        if self.base_spec.hadamard or self.base_spec.rounding != "rne":
            raise ValueError(
                f"base format {self.base_spec.describe()}: a stored base takes a spec without "
                f"a Hadamard transform, rounded to nearest (rne)"
            )
        weight = linear.weight.detach()
        if self.transposed_weight:
            weight = weight.t()  # (in, out) as stored -> (out, in): blocks run along in
        q = nk.quantize(weight.float(), self.base_spec, backend="reference")
        self.nibbles = q.spec.element_format.kind == "int" and q.spec.element_format.bits <= 4
        self.register_buffer("codes", _pack_nibbles(q.codes) if self.nibbles else q.codes)
        self.register_buffer("scale", q.scale)
        self.register_buffer("tensor_scale", q.tensor_scale)
        bias = getattr(linear, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight in fp32, in the stored layout (a new tensor each read)."""
        return self.dequantized(torch.float32)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        codes = _unpack_nibbles(self.codes) if self.nibbles else self.codes
        shape = (self.out_features, self.in_features)
        q = nk.QTensor(codes, self.scale, self.tensor_scale, self.base_spec, shape, torch.float32)
        w = q.dequantize(dtype)  # (out, in)
        return w.t() if self.transposed_weight else w

    @property
    def stored_bytes(self) -> int:
        """Bytes of the packed weight as it is held: codes, scales and tensor scale."""
        parts = (self.codes, self.scale, self.tensor_scale)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base_name} (packed)"


def pack_base(model: nn.Module, names: list[str], spec: QuantSpec | str) -> None:
    """Replace each linear module in `names` (qualified names) by a PackedLinear."""
    for name in names:
        module = model.get_submodule(name)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PackedLinear(module, spec))


@dataclass(frozen=True)
class Storage:
    """The packed base of a model, measured: its modules, their weights (elements), the
    bytes they are held in, and what bf16 would take."""

    spec: str
    modules: int
    elements: int
    packed_bytes: int

    @property
    def bf16_bytes(self) -> int:
        return BF16_BYTES * self.elements

    @property
    def saved_bytes(self) -> int:
        return self.bf16_bytes - self.packed_bytes

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.packed_bytes / self.elements if self.elements else 0.0

    def describe(self) -> str:
        if not self.modules:
            return "no packed base"
        return (
            f"frozen base {self.spec}: {self.modules} linears, {self.elements:,} weights held in "
            f"{self.packed_bytes:,} bytes ({self.bits_per_weight:.2f} bits each: codes and "
            f"scales) against {self.bf16_bytes:,} in bf16: {self.saved_bytes:,} bytes saved "
            f"({self.bf16_bytes / self.packed_bytes:.2f}x smaller)"
        )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {
            "bf16_bytes": self.bf16_bytes,
            "saved_bytes": self.saved_bytes,
        }


def storage(model: nn.Module) -> Storage:
    """The measured storage of `model`'s PackedLinears (the bytes of their buffers)."""
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    specs = sorted({m.base_name for m in packed})
    return Storage(
        spec=", ".join(specs),
        modules=len(packed),
        elements=sum(m.in_features * m.out_features for m in packed),
        packed_bytes=sum(m.stored_bytes for m in packed),
    )


__all__ = ["PackedLinear", "Storage", "base_formats", "pack_base", "storage"]
