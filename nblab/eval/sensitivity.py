"""Per-layer sensitivity: how much the val loss rises when one module (or one role of one
module) is quantized and everything else stays in high precision.

    result = scan(evaluator, "nvfp4", by="module")   # every linear of the model
    result.frame()           # module, role, delta_loss, sqnr_db, saturation, bits, params, ...

Every linear is scanned, whatever the format's keep list says (the advisor decides what to
keep); a module whose shape the format cannot quantize gets a row with the reason. Rows:
- by="module": role "fwd" (weights and activations), or "fwd_w" with weights_only;
- by="role": one row per role, "fwd_x" (activations) and "fwd_w" (weights).
Δ loss is against the high-precision model on the same fixed eval batches (the source
run's own eval batches), so it is paired: batch noise cancels. A configuration whose loss
is not finite (fp16 turns a weight past 65504 into inf) has Δ loss inf. SQNR (dB) is that of the
same tensors: the weight, and the activation on the first eval batch; a "fwd" row shows
the worse of the two (and the stats table of its run keeps both).

Each weight is quantized once per format. The blocks before the quantized module compute
what they computed in the high-precision pass, so their outputs are recorded once and
replayed (PrefixReplay): a configuration runs the model from its module's block on. Both
are exact: the rows equal those of full forwards (a test holds it).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

import nblab_kernels as nk
from nblab.eval.precision import HIGH_BITS, forward_preset, weight_bits
from nblab.eval.ptq import Evaluator, set_module
from nblab.models.protocol import block_index
from nblab.precision.linear import QuantLinear
from nblab.precision.plan import apply_precision, quant_linears
from nblab.precision.presets import PrecisionPreset

SCAN_BY = ("module", "role")
REPLAY_BYTES = 2 << 30  # block outputs kept for PrefixReplay at most; beyond, full forwards


@dataclass
class ScanRow:
    module: str
    role: str  # "fwd" (x and W), "fwd_x" or "fwd_w"
    delta_loss: float  # val loss minus the high-precision val loss; NaN when not quantized
    sqnr_db: float
    saturation: float
    underflow: float
    bits: float  # bits per element of the module's weight in the format
    params: int  # elements of the weight
    block: int | None
    reason: str = ""  # why the format cannot quantize it, else ""


@dataclass
class Scan:
    """A sensitivity scan's result (what sensitivity.json holds)."""

    precision: str
    weights_only: bool
    by: str
    base_loss: float  # the high-precision model's val loss on the same batches
    batches: int
    tokens: int  # tokens per forward over the batches
    forward_passes: int  # model forwards over one batch, the high-precision pass included
    block_passes: int  # blocks computed (a replayed block is not)
    seconds: float
    cpu_seconds: float
    block_prefix: str = "layers."  # where the model keeps its blocks (its Architecture's)
    head: str = "lm_head"  # its output head
    rows: list[ScanRow] = field(default_factory=list)

    def frame(self):
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = [asdict(r) for r in self.rows]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scan:
        data = dict(data)
        rows = [ScanRow(**r) for r in data.pop("rows")]
        return cls(**data, rows=rows)

    def module_deltas(self) -> dict[str, float]:
        """module -> Δ loss of quantizing it whole (a module scan's rows; a role scan's
        sum over roles)."""
        out: dict[str, float] = {}
        for r in self.rows:
            out[r.module] = out.get(r.module, 0.0) + r.delta_loss
        return out


class PrefixReplay:
    """Record each block's outputs in the high-precision pass; then, while `skipping(n)`,
    blocks 0..n-1 return them instead of computing. Works for any model that calls its
    blocks once each, in order, per forward (every model of the protocol); when a block's
    output is not a tensor (or tuple of tensors), or the outputs would pass REPLAY_BYTES,
    it turns itself off and every configuration runs whole."""

    def __init__(self, blocks: nn.ModuleList, enabled: bool = True):
        self.blocks = blocks
        self.enabled = enabled
        self.outputs: list[list[Any]] = [[] for _ in blocks]

    def record(self, run: Callable[[], float]) -> float:
        if not self.enabled:
            return run()
        size = [0]

        def hook(k):
            def keep(module, args, output):
                tensors = output if isinstance(output, tuple) else (output,)
                if not all(isinstance(t, torch.Tensor) for t in tensors):
                    self.enabled = False
                size[0] += sum(t.numel() * t.element_size() for t in tensors)
                if size[0] > REPLAY_BYTES:
                    self.enabled = False
                if self.enabled:
                    self.outputs[k].append(output)

            return keep

        handles = [b.register_forward_hook(hook(k)) for k, b in enumerate(self.blocks)]
        try:
            loss = run()
        finally:
            for h in handles:
                h.remove()
        if not self.enabled:
            self.outputs = [[] for _ in self.blocks]
        return loss

    @contextlib.contextmanager
    def skipping(self, n: int) -> Iterator[int]:
        """Blocks 0..n-1 replayed for one pass over the recorded batches; yields how many
        blocks are replayed (0 when off)."""
        n = n if self.enabled else 0
        originals = [self.blocks[k] for k in range(n)]
        for k in range(n):
            self.blocks[k] = _Replay(self.outputs[k])
        try:
            yield n
        finally:
            for k, block in enumerate(originals):
                self.blocks[k] = block


class _Replay(nn.Module):
    """A block that returns, call after call, the outputs recorded for it."""

    def __init__(self, outputs: list[Any]):
        super().__init__()
        self._outputs, self._next = outputs, 0

    def forward(self, *args, **kwargs):
        out = self._outputs[self._next]
        self._next += 1
        return out


def every_linear(preset: PrecisionPreset) -> PrecisionPreset:
    """`preset` without its keep list: the scan tries every linear."""
    return PrecisionPreset(preset.name, dict(preset.roles), (), preset.description)


def scan(
    evaluator: Evaluator,
    precision: Any,
    *,
    by: str = "module",
    weights_only: bool = False,
    replay: bool = True,
    progress: Callable[[int, int], None] | None = None,
    writer=None,
) -> Scan:
    """Quantize each linear of the evaluator's model (or each of its roles) alone; see the
    module docstring. With a writer, the SQNR of every tensor scanned goes to its stats."""
    if by not in SCAN_BY:
        raise ValueError(f"by={by!r}; accepted: {', '.join(SCAN_BY)}")
    ev = evaluator
    started, cpu_started = time.perf_counter(), time.process_time()
    preset = forward_preset(precision)
    batches = ev.trainer.val_batches()
    blocks = ev.model.get_submodule(ev.arch.blocks)
    prefix = PrefixReplay(blocks, enabled=replay)
    base_loss = prefix.record(lambda: ev.trainer.val_loss(batches))
    counts = {"forwards": len(batches), "blocks": len(batches) * len(blocks)}

    plan = apply_precision(
        ev.model,
        every_linear(preset),
        backend=ev.backend,
        block_prefix=ev.arch.block_prefix,
        head=ev.arch.head,
    )
    specs = {name: q.stored_specs for name, q in quant_linears(ev.model).items()}
    ev.restore()
    reasons = {m.module: m.reason for m in plan.modules}

    # the configurations of a module: (row label, quantize x, quantize W)
    on_x = not weights_only and preset.roles["fwd_x"] is not None
    if by == "role":
        configs = ([("fwd_x", True, False)] if on_x else []) + [("fwd_w", False, True)]
    else:
        configs = [("fwd", True, True)] if on_x else [("fwd_w", False, True)]

    total = len(configs) * len(ev.linears)
    done = 0
    rows: list[ScanRow] = []
    for name, module in ev.linears.items():
        out_f, in_f = ev.served_weight(module).shape
        block = block_index(name, ev.arch.block_prefix)
        n = module.weight.numel()
        if reasons.get(name):
            for role, _, _ in configs:
                nan = math.nan
                rows.append(
                    ScanRow(name, role, nan, nan, nan, nan, HIGH_BITS, n, block, reasons[name])
                )
                done += 1
            continue
        spec = specs[name]
        bits = weight_bits(spec["fwd_w"], out_f, in_f)
        wq = ev.quantize_weight(module, spec["fwd_w"])
        w_stats = nk.quant_stats(ev.served_weight(module), spec["fwd_w"], backend=ev.backend)
        if writer is not None:
            s = w_stats
            writer.log_stats(ev.source.step, name, "fwd_w", s.sqnr_db, s.saturation, s.underflow)
        if block is not None:
            skip = block
        elif name == ev.arch.head:
            skip = len(blocks)
        else:
            skip = 0
        for role, quantize_x, quantize_w in configs:
            q = QuantLinear.from_linear(
                module, {"fwd_x": spec["fwd_x"] if quantize_x else None}, ev.backend
            )
            if quantize_w:
                q.weight = wq
            q.recording = quantize_x
            set_module(ev.model, name, q)
            try:
                with prefix.skipping(skip) as replayed:
                    loss = ev.trainer.val_loss(batches)
            finally:
                set_module(ev.model, name, module)
            # a loss that is not finite (a weight past a cast's range is inf): destroyed
            delta = loss - base_loss if math.isfinite(loss) else math.inf
            counts["forwards"] += len(batches)
            counts["blocks"] += len(batches) * (len(blocks) - replayed)
            parts = ([w_stats] if quantize_w else []) + [s for r, s in q.recorded if r == "fwd_x"]
            if writer is not None and quantize_x:
                for r, s in q.recorded:
                    writer.log_stats(ev.source.step, name, r, s.sqnr_db, s.saturation, s.underflow)
            worst = min(parts, key=lambda s: s.sqnr_db)
            rows.append(
                ScanRow(
                    name,
                    role,
                    delta,
                    worst.sqnr_db,
                    max(s.saturation for s in parts),
                    max(s.underflow for s in parts),
                    bits,
                    n,
                    block,
                )
            )
            done += 1
            if progress is not None:
                progress(done, total)
    tokens = sum(x.numel() for x, _ in batches)
    return Scan(
        precision=preset.name if not isinstance(precision, str) else precision,
        weights_only=weights_only,
        by=by,
        base_loss=base_loss,
        batches=len(batches),
        tokens=tokens,
        forward_passes=counts["forwards"],
        block_passes=counts["blocks"],
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        block_prefix=ev.arch.block_prefix,
        head=ev.arch.head,
        rows=rows,
    )


__all__ = ["REPLAY_BYTES", "SCAN_BY", "PrefixReplay", "Scan", "ScanRow", "every_linear", "scan"]
