"""Post-training quantization: a checkpoint evaluated with its weights (and, unless
weights_only, its activations) quantized after training.

    evaluator = Evaluator(recipe, source)          # the model in high precision, loaded once
    with evaluator.quantized("nvfp4", weights_only=True) as plan:
        metrics = evaluator.evaluate()             # val_loss, val_ppl (+ val_accuracy)

The evaluation is the training run's own (nblab.train.trainer.Trainer.evaluate): the same
eval.batches fixed batches, dtype and loss, so preset bf16 on a bf16-trained checkpoint
gives exactly the val loss the run logged at that step.

Each quantized weight is computed once per evaluation, not once per batch: the precision
plan swaps the linears for QuantLinear, then each one's weight is replaced by its
quantized value (as the forward would compute it: transposed back for Conv1D, in the
autocast dtype) and its fwd_w role set to high precision. Only the activations (fwd_x)
are quantized per batch. The forward GEMM then gives the same bits as quantizing W in
every forward, without the cost. A tied head gets a weight of its own, so the embedding
lookup keeps its high-precision table (as the forward-time quantization leaves it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import nblab_kernels as nk
from nblab.eval.precision import HIGH_BITS, forward_preset, mean_bits, weight_bits
from nblab.eval.source import EvalSource
from nblab.precision.linear import QuantLinear, linear_shape
from nblab.precision.plan import PlanReport, apply_precision, quant_linears
from nblab.recipe import Recipe
from nblab.train import weights
from nblab.train.trainer import Trainer


def _plain_recipe(recipe: Recipe) -> Recipe:
    """`recipe` as the Trainer builds it: in high precision (the evaluation quantizes),
    without an eval source or initial weights (the checkpoint is loaded instead)."""
    return recipe.with_overrides(
        {
            "name": "evaluation",
            "precision.preset": "bf16",
            "precision.roles": {},
            "precision.keep_high_precision": [],
            "eval.source": "",
            "eval.step": 0,
            "eval.precision": "",
            "eval.weights_only": False,
            "eval.scan": "",
            "model.init_from": "",
        }
    )


@dataclass
class WeightRecord:
    """One linear's weight as an evaluation serves it."""

    module: str
    numel: int
    bits: float  # bits per element (HIGH_BITS when kept high)
    stats: nk.QuantStats | None  # the quantization error of the weight, None when high


class Evaluator:
    """A source checkpoint loaded into its model in high precision, with the trainer that
    evaluates it. `quantized(...)` swaps in a format for one evaluation and restores the
    high-precision modules after it, so one Evaluator serves many evaluations."""

    def __init__(self, recipe: Recipe, source: EvalSource, *, dataset=None):
        self.recipe, self.source = recipe, source
        self.trainer = Trainer(_plain_recipe(recipe), dataset=dataset)
        self.model, self.arch = self.trainer.model, self.trainer.arch
        weights.load_weights(
            self.model,
            weights.WeightSource(
                source.run_id, str(source.path), "run", source.run_id, source.step
            ),
        )
        self.model.eval()
        self.backend = recipe.precision.backend
        self.autocast_dtype = torch.bfloat16 if recipe.train.dtype == "bfloat16" else None
        self.linears = {
            name: module for name, module in self.model.named_modules() if linear_shape(module)
        }
        self.records: list[WeightRecord] = []
        self.plan: PlanReport | None = None

    def serves(self, recipe: Recipe, source: EvalSource) -> bool:
        """Whether this evaluator evaluates `recipe`'s model, batches and dtype at `source`."""
        return source == self.source and _plain_recipe(recipe) == self.trainer.recipe

    # -- formats ------------------------------------------------------------------
    def served_weight(self, module: nn.Module) -> torch.Tensor:
        """The (out, in) weight the forward GEMM reads, in the autocast dtype."""
        weight = module.weight.detach()
        if linear_shape(module)[2]:  # stored (in, out), as transformers' Conv1D
            weight = weight.t()
        return weight if self.autocast_dtype is None else weight.to(self.autocast_dtype)

    def quantize_weight(self, module: nn.Module, spec) -> nn.Parameter:
        """`module`'s weight quantized by `spec` (a stored-layout spec), as a new Parameter
        in the module's own layout and dtype."""
        wq = nk.fake_quantize(self.served_weight(module), spec, backend=self.backend)
        if linear_shape(module)[2]:
            wq = wq.t()
        return nn.Parameter(wq.to(module.weight.dtype).contiguous(), requires_grad=False)

    @contextlib.contextmanager
    def quantized(self, precision: Any, weights_only: bool = False) -> Iterator[PlanReport]:
        """The model in `precision` (a format name or a [precision] section) for the
        duration: weights quantized once, activations per batch unless weights_only."""
        preset = forward_preset(precision)
        plan = apply_precision(
            self.model,
            preset,
            backend=self.backend,
            block_prefix=self.arch.block_prefix,
            head=self.arch.head,
        )
        self.records = []
        try:
            for name, q in quant_linears(self.model).items():
                self._serve(name, q, weights_only)
            for name, module in self.linears.items():
                if not isinstance(self.model.get_submodule(name), QuantLinear):
                    self.records.append(WeightRecord(name, module.weight.numel(), HIGH_BITS, None))
            self.plan = plan
            yield plan
        finally:
            self.restore()
            self.plan = None

    def _serve(self, name: str, q: QuantLinear, weights_only: bool) -> None:
        """Replace QuantLinear `q` by one whose weight is quantized already."""
        spec_w = q.stored_specs["fwd_w"]
        out_f, in_f = q.out_features, q.in_features
        stats = nk.quant_stats(self.served_weight(q), spec_w, backend=self.backend)
        specs = {"fwd_x": None if weights_only else q.specs["fwd_x"]}
        served = QuantLinear.from_linear(q, specs, self.backend)
        served.weight = self.quantize_weight(q, spec_w)
        set_module(self.model, name, served)
        self.records.append(
            WeightRecord(name, q.weight.numel(), weight_bits(q.specs["fwd_w"], out_f, in_f), stats)
        )

    def restore(self) -> None:
        """Every linear back to the high-precision module it was."""
        for name, module in self.linears.items():
            set_module(self.model, name, module)

    # -- evaluating -----------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """The training run's evaluation of the model as it is now: val_loss, val_ppl
        (exp of val_loss) and, for the addition task, val_accuracy."""
        out = self.trainer.evaluate()
        self.model.eval()  # evaluate() leaves the model in train mode, as training wants
        out["val_ppl"] = math.exp(out["val_loss"]) if out["val_loss"] < 700 else math.inf
        return out

    def val_loss(self) -> float:
        """evaluate()'s val loss alone (no accuracy, no mode change)."""
        return self.trainer.val_loss(self.trainer.val_batches())

    def bits_per_element(self) -> float:
        """Bits per element of the linear weights as the current evaluation serves them."""
        return mean_bits([(r.numel, r.bits) for r in self.records])

    def activation_stats(self, batch) -> dict[str, nk.QuantStats]:
        """The quantization error of each quantized activation (fwd_x) on one batch."""
        qs = quant_linears(self.model)
        for q in qs.values():
            q.recorded.clear()
            q.recording = True
        try:
            self.trainer.val_loss([batch])
        finally:
            for q in qs.values():
                q.recording = False
        out = {name: s for name, q in qs.items() for role, s in q.recorded if role == "fwd_x"}
        for q in qs.values():
            q.recorded.clear()
        return out


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the dotted path `name` of `model`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def evaluate_precision(
    evaluator: Evaluator, precision: Any, weights_only: bool, writer=None
) -> tuple[dict[str, float], PlanReport]:
    """One PTQ evaluation: metrics (+ bits_per_element, quantized_modules) and the plan.
    With a writer, the metrics go to the run at the source step, with the SQNR of every
    quantized weight and (on the first eval batch) activation."""
    step = evaluator.source.step
    with evaluator.quantized(precision, weights_only) as plan:
        metrics = evaluator.evaluate()
        metrics["bits_per_element"] = evaluator.bits_per_element()
        metrics["quantized_modules"] = float(len(plan.quantized))
        if writer is not None:
            for r in evaluator.records:
                if r.stats is not None:
                    s = r.stats
                    writer.log_stats(step, r.module, "fwd_w", s.sqnr_db, s.saturation, s.underflow)
            if not weights_only and plan.quantized:
                first = evaluator.trainer.val_batches()[0]
                for name, s in evaluator.activation_stats(first).items():
                    writer.log_stats(step, name, "fwd_x", s.sqnr_db, s.saturation, s.underflow)
            writer.log_metrics(step, metrics)
    return metrics, plan


__all__ = ["Evaluator", "WeightRecord", "evaluate_precision", "set_module"]
