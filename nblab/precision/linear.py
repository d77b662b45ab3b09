"""QuantLinear: an nn.Linear whose six GEMM operands are fake-quantized by role.

y = x W^T has three GEMMs and six operands (NUMERICS.md, "Recipes"):
  forward  y  = x  @ W^T      roles fwd_x (T, in)  and fwd_w (out, in), reduce over in
  dgrad    dx = dy @ W        roles dgrad_dy (T, out) and dgrad_w (out, in), reduce over out
  wgrad    dW = dy^T @ x      roles wgrad_dy (T, out) and wgrad_x (T, in), reduce over T
Each operand is quantized from the high-precision tensor (as TransformerEngine and
torchao do), so a role's error never compounds with another's.

With every role in high precision QuantLinear computes exactly what nn.Linear does (the
same addmm / mm calls), so swapping it in changes no bit. A GEMM named in `native_gemms`
multiplies the quantized codes with the hardware's scaled GEMM instead
(nblab_kernels.matmul.native_mm; nblab.precision.gemm chooses which, precision.gemm):
the same result within the GEMM's accumulation tolerance, and the same random bits for
stochastic rounding (the operands are quantized in the same order). It also stands in for
transformers' Conv1D (GPT-2), which stores its weight as (in, out): `transposed_weight`
keeps that layout (and so the state_dict a Hugging Face checkpoint expects) and the GEMMs
use its transpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

import nblab_kernels as nk
from nblab.precision.presets import GEMMS, ROLES
from nblab_kernels import QuantSpec
from nblab_kernels.matmul import native_mm

# roles whose GEMM reduces over dim 0 of the tensor as stored
_REDUCE_DIM0 = frozenset({"dgrad_w", "wgrad_x", "wgrad_dy"})
_SWAP = {"row": "col", "col": "row"}


def on_stored_layout(spec: QuantSpec | None, role: str) -> QuantSpec | None:
    """Presets state specs along the GEMM's reduction dim ("row" = one scale per
    reduction vector); map them onto the operand as it is stored. A tensor-wise
    scale without a transform is the same along either dim: keep it as is, so equal
    specs can share one quantization (see _shared)."""
    if spec is None or spec.is_cast or role not in _REDUCE_DIM0:
        return spec
    if spec.granularity == "tensor" and not spec.hadamard:
        return spec
    return spec.replace(dim=0, granularity=_SWAP.get(spec.granularity, spec.granularity))


def _fq(t: torch.Tensor, spec: QuantSpec | None, backend: str) -> torch.Tensor:
    return t if spec is None else nk.fake_quantize(t, spec, backend=backend)


def _q(t: torch.Tensor, spec: QuantSpec, backend: str) -> nk.QTensor:
    return nk.quantize(t, spec, backend=backend)


def _shared(specs: dict, first: str, second: str) -> bool:
    """Whether `second` may reuse `first`'s quantization of the same tensor: the
    same spec, deterministic rounding (SR draws afresh per role)."""
    spec = specs[first]
    return spec is not None and spec == specs[second] and spec.rounding == "rne"


def linear_shape(module: nn.Module) -> tuple[int, int, bool] | None:
    """(in_features, out_features, weight stored transposed) of a module that computes
    y = x W^T + b: an nn.Linear, or transformers' Conv1D (GPT-2: weight (in, out), found by
    its class name so that this module need not import transformers); None otherwise."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, getattr(module, "transposed_weight", False)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2:
        n_in, n_out = module.weight.shape
        return int(n_in), int(n_out), True
    return None


class _QuantLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias, module):
        specs = module.stored_specs
        # one backend for all six operands of this call: "auto" compiles a large CPU
        # layer, whose weights alone would look small (nk.layer_backend)
        backend = nk.layer_backend(module.backend, x2)
        module._tap("fwd_x", x2, backend)
        module._tap("fwd_w", weight, backend)
        if "forward" in module.native_gemms:
            qx, qw = _q(x2, specs["fwd_x"], backend), _q(weight, specs["fwd_w"], backend)
            y = native_mm(qx, qw, x2.dtype)
            y = y if bias is None else y + bias
            xq = wq = None  # backward quantizes again: rne gives the same codes
        else:
            xq, wq = _fq(x2, specs["fwd_x"], backend), _fq(weight, specs["fwd_w"], backend)
            # nn.Linear's own calls (F.linear: addmm with a bias, else mm), so that a role
            # in high precision gives nn.Linear's bits
            y = xq @ wq.t() if bias is None else torch.addmm(bias, xq, wq.t())
        # keep the forward's quantized operands where backward would recompute them
        ctx.save_for_backward(
            x2,
            weight,
            xq if _shared(specs, "fwd_x", "wgrad_x") else None,
            wq if _shared(specs, "fwd_w", "dgrad_w") else None,
        )
        ctx.module, ctx.backend, ctx.has_bias = module, backend, bias is not None
        return y  # (T, out)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, xq, wq = ctx.saved_tensors
        module, backend = ctx.module, ctx.backend
        specs = module.stored_specs
        # a frozen weight (a fine-tuned base) needs no wgrad GEMM: its roles do not run
        need_dw = ctx.needs_input_grad[1]
        for role, t in (("dgrad_dy", dy), ("dgrad_w", weight), ("wgrad_dy", dy), ("wgrad_x", x2)):
            if need_dw or not role.startswith("wgrad"):
                module._tap(role, t, backend)
        native = module.native_gemms
        # quantized in the emulated order, so that stochastic rounding draws the same bits
        if "dgrad" in native:
            dyq = _q(dy, specs["dgrad_dy"], backend)
            dx = native_mm(dyq, _q(weight, specs["dgrad_w"], backend), dy.dtype, b_kfirst=True)
        else:
            dyq = _fq(dy, specs["dgrad_dy"], backend)
            wq = wq if wq is not None else _fq(weight, specs["dgrad_w"], backend)
            dx = dyq @ wq  # (T, out) @ (out, in)
        dw = None
        if need_dw and "wgrad" in native:
            shared = _shared(specs, "dgrad_dy", "wgrad_dy") and "dgrad" in native
            dyq = dyq if shared else _q(dy, specs["wgrad_dy"], backend)
            xq = _q(x2, specs["wgrad_x"], backend)
            dw = native_mm(dyq, xq, dy.dtype, a_kfirst=True, b_kfirst=True)  # (out, in)
        elif need_dw:
            shared = _shared(specs, "dgrad_dy", "wgrad_dy") and "dgrad" not in native
            dyq = dyq if shared else _fq(dy, specs["wgrad_dy"], backend)
            xq = xq if xq is not None else _fq(x2, specs["wgrad_x"], backend)
            dw = dyq.t() @ xq  # (out, T) @ (T, in)
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None


class QuantLinear(nn.Linear):
    """Drop-in nn.Linear (same parameters and state_dict keys) with per-role specs.

    specs maps each role to a QuantSpec (stated along the reduction dim) or None
    for high precision. While `recording` is on, the first quantized operand of each role
    has its quant_stats appended to `recorded` as (role, QuantStats); later ones of a
    role already recorded are skipped until `recorded` is cleared (a step's first
    micro-batch is the sample, however many micro-batches run)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        specs: Mapping[str, QuantSpec | None],
        backend: str = "auto",
        transposed_weight: bool = False,
        native_gemms: Iterable[str] = (),
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.transposed_weight = transposed_weight  # weight stored (in, out), as Conv1D
        unknown = set(specs) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; accepted: {', '.join(ROLES)}")
        self.specs = {role: specs.get(role) for role in ROLES}
        self.stored_specs = {role: on_stored_layout(s, role) for role, s in self.specs.items()}
        self.backend = backend
        self.native_gemms = frozenset(native_gemms)
        bad = sorted(g for g in self.native_gemms if g not in GEMMS)
        if bad:
            raise ValueError(f"native_gemms {bad} unknown; accepted: {', '.join(GEMMS)}")
        for gemm in self.native_gemms:
            missing = [r for r in GEMMS[gemm] if self.specs[r] is None]
            if missing:
                raise ValueError(
                    f"native_gemms: the {gemm} GEMM cannot run natively with {missing[0]} in "
                    f"high precision"
                )
        self.recording = False
        self.recorded: list[tuple[str, nk.QuantStats]] = []

    @classmethod
    def from_linear(
        cls, linear: nn.Module, specs, backend: str = "auto", native_gemms: Iterable[str] = ()
    ) -> QuantLinear:
        """Wrap an existing nn.Linear or transformers Conv1D, sharing its Parameters
        (optimizer state survives, state_dict keys and shapes stay)."""
        shape = linear_shape(linear)
        if shape is None:
            raise TypeError(f"{type(linear).__name__} is neither an nn.Linear nor a Conv1D")
        in_features, out_features, transposed = shape
        q = cls(
            in_features,
            out_features,
            linear.bias is not None,
            specs=specs,
            backend=backend,
            transposed_weight=transposed,
            native_gemms=native_gemms,
            device="meta",
        )
        q.weight = linear.weight
        q.bias = linear.bias
        return q

    def _tap(self, role: str, t: torch.Tensor, backend: str) -> None:
        spec = self.stored_specs[role]
        if self.recording and spec is not None and all(r != role for r, _ in self.recorded):
            self.recorded.append((role, nk.quant_stats(t.detach(), spec, backend=backend)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if self.transposed_weight:
            weight = weight.t()  # (in, out) as stored -> (out, in)
        device = x.device.type
        if torch.is_autocast_enabled(device):  # a custom Function is not autocast-aware
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        x2 = x.reshape(-1, self.in_features)  # (T, in)
        y = _QuantLinearFn.apply(x2, weight, bias, self)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        roles = ", ".join(f"{r}={s.describe() if s else 'high'}" for r, s in self.specs.items())
        native = f", native={','.join(sorted(self.native_gemms))}" if self.native_gemms else ""
        return f"{super().extra_repr()}, {roles}{native}"
