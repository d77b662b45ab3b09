"""The precision advisor: which modules to keep in high precision so that a format meets a
loss budget (or a bits-per-element budget) with the fewest bits.

    advice = advise(scan, "nvfp4", budget=0.02)    # scan: a module sensitivity Scan
    advice.patch        # precision.keep_high_precision entries for a recipe on nvfp4
    advice.predicted_delta, advice.bits_per_element

Greedy by sensitivity per bit: keeping module m costs params_m * (HIGH_BITS - bits_m)
bits and saves its Δ loss; modules are kept in order of Δ loss per bit, highest first,
until the predicted Δ loss (the sum of the Δ losses of the modules still quantized, a
negative Δ counted as 0) is within the budget; with a bits budget, each module in that
order is kept while the bits per element stay within it. Modules the format cannot
quantize (a shape its blocks do not divide) stay high whatever is chosen.

The patch is relative to the preset: one of its own keep entries (lm_head, last:15%)
stays when everything it keeps is to be kept, else it is dropped with "!entry"; the
chosen modules it does not cover are named one by one. `advise` checks the patch: the
preset with it quantizes exactly the modules the advice quantizes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from nblab.eval.precision import HIGH_BITS, mean_bits
from nblab.eval.sensitivity import Scan
from nblab.precision.plan import count_blocks, keeping_token
from nblab.precision.presets import PRECISION_PRESETS, PrecisionPreset, resolve_precision


class AdviceError(ValueError):
    """A budget or preset the advisor cannot meet; the message says what can be."""


@dataclass
class Advice:
    preset: str
    weights_only: bool
    budget: float | None  # Δ val loss allowed, or None
    bits_budget: float | None  # bits per element allowed, or None
    keep: list[str]  # modules the advice keeps in high precision
    forced: list[str]  # modules the format cannot quantize (high whatever is chosen)
    patch: list[str]  # precision.keep_high_precision for a recipe on `preset`
    predicted_delta: float
    bits_per_element: float
    floor_bits: float  # bits per element with every quantizable module quantized
    floor_delta: float  # predicted Δ loss with every quantizable module quantized
    order: list[str]  # quantizable modules by Δ loss per bit, highest first
    base_loss: float  # the high-precision val loss the scan measured
    scan_run: str | None = None
    measured_run: str | None = None
    measured_delta: float | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)  # refinements: keep, Δ
    trained_run: str | None = None
    trained_val_loss: float | None = None
    source_val_loss: float | None = None  # the source run's logged val loss at its step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Advice:
        return cls(**data)

    def describe(self) -> str:
        limit = (
            f"Δ loss <= {self.budget:g}"
            if self.budget is not None
            else f"<= {self.bits_budget:g} bits"
        )
        lines = [
            f"{self.preset}{' weights only' if self.weights_only else ''}, {limit}: keep "
            f"{len(self.keep)} module(s) high at {self.bits_per_element:.3f} bits per element "
            f"(all quantized: {self.floor_bits:.3f} bits, predicted Δ {self.floor_delta:.4f})",
            f"precision.keep_high_precision = {_toml_list(self.patch)}",
            f"predicted Δ loss {self.predicted_delta:.4f}",
        ]
        if self.measured_delta is not None:
            lines.append(
                f"measured Δ loss  {self.measured_delta:.4f} (PTQ eval {self.measured_run})"
            )
        if self.trained_val_loss is not None and self.source_val_loss is not None:
            lines.append(
                f"trained in the advised recipe: val loss {self.trained_val_loss:.4f} against "
                f"{self.source_val_loss:.4f} for the source run (run {self.trained_run})"
            )
        return "\n".join(lines)


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _module_rows(scan: Scan) -> dict[str, dict[str, Any]]:
    if scan.by != "module":
        raise AdviceError(
            f"the advisor reads a scan by module; this one is by {scan.by} (run "
            f"`nblab sensitivity RUN --by module`)"
        )
    return {
        r.module: {"delta": r.delta_loss, "bits": r.bits, "params": r.params, "reason": r.reason}
        for r in scan.rows
    }


def advise(
    scan: Scan,
    preset: str,
    *,
    budget: float | None = None,
    bits: float | None = None,
) -> Advice:
    """The advice for `preset` from a module scan in that format (see the module
    docstring). Exactly one of budget (Δ val loss) and bits (bits per element)."""
    if (budget is None) == (bits is None):
        raise AdviceError("give one budget: a Δ val loss (--budget) or bits per element (--bits)")
    if preset not in PRECISION_PRESETS:
        raise AdviceError(
            f"preset {preset!r} is unknown; accepted (the advice is a patch for "
            f"precision.preset): {', '.join(PRECISION_PRESETS)}"
        )
    if scan.precision != preset:
        raise AdviceError(f"the scan is of {scan.precision!r}, not of preset {preset!r}")
    if budget is not None and not (math.isfinite(budget) and budget >= 0):
        raise AdviceError(f"budget {budget!r}: a Δ val loss >= 0")
    rows = _module_rows(scan)
    forced = [m for m, r in rows.items() if r["reason"]]
    candidates = [m for m, r in rows.items() if not r["reason"]]
    gain = {m: max(rows[m]["delta"], 0.0) for m in candidates}
    cost = {m: rows[m]["params"] * (HIGH_BITS - rows[m]["bits"]) for m in candidates}

    def per_bit(m: str) -> float:  # keeping a module that saves no bits is free
        return gain[m] / cost[m] if cost[m] > 0 else (math.inf if gain[m] > 0 else 0.0)

    order = sorted(candidates, key=lambda m: (-per_bit(m), -gain[m], m))

    def bits_of(keep: set[str]) -> float:
        return mean_bits(
            [
                (r["params"], HIGH_BITS if m in keep or r["reason"] else r["bits"])
                for m, r in rows.items()
            ]
        )

    floor_bits, floor_delta = bits_of(set()), sum(gain.values())
    keep: list[str] = []
    if budget is not None:
        for m in order:  # the sum again each time: a gain may be inf (a destroyed module)
            if sum(g for k, g in gain.items() if k not in keep) <= budget:
                break
            keep.append(m)
    else:
        if floor_bits > bits + 1e-12:
            raise AdviceError(
                f"bits {bits:g} is below what {preset} takes with every module it can quantize "
                f"quantized: {floor_bits:.3f} bits per element"
            )
        for m in order:
            if gain[m] > 0 and bits_of({*keep, m}) <= bits + 1e-12:
                keep.append(m)
    advice = Advice(
        preset=preset,
        weights_only=scan.weights_only,
        budget=budget,
        bits_budget=bits,
        keep=keep,
        forced=forced,
        patch=[],
        predicted_delta=sum(gain[m] for m in candidates if m not in keep),
        bits_per_element=bits_of(set(keep)),
        floor_bits=floor_bits,
        floor_delta=floor_delta,
        order=order,
        base_loss=scan.base_loss,
    )
    advice.patch = keep_patch(preset, list(rows), keep, forced, scan.block_prefix, scan.head)
    return advice


def with_kept(advice: Advice, keep: list[str], scan: Scan) -> Advice:
    """`advice` with `keep` as its kept modules (a refinement): patch, bits, prediction."""
    rows = _module_rows(scan)
    gain = {m: max(r["delta"], 0.0) for m, r in rows.items() if not r["reason"]}
    out = Advice.from_dict(advice.to_dict())
    out.keep = list(keep)
    out.predicted_delta = sum(g for m, g in gain.items() if m not in keep)
    out.bits_per_element = mean_bits(
        [
            (r["params"], HIGH_BITS if m in keep or r["reason"] else r["bits"])
            for m, r in rows.items()
        ]
    )
    out.patch = keep_patch(
        advice.preset, list(rows), keep, advice.forced, scan.block_prefix, scan.head
    )
    return out


def keep_patch(
    preset: str,
    modules: list[str],
    keep: list[str],
    forced: list[str],
    block_prefix: str,
    head: str,
) -> list[str]:
    """precision.keep_high_precision entries that make `preset` keep exactly `keep` (and
    the `forced` modules, which it cannot quantize anyway) in high precision."""
    base = PRECISION_PRESETS[preset]
    n_blocks = count_blocks(modules, block_prefix)
    high = set(keep) | set(forced)
    patch, covered = [], set()
    for token in base.keep_high_precision:
        alone = PrecisionPreset(base.name, dict(base.roles), (token,))
        kept = {m for m in modules if keeping_token(m, alone, n_blocks, block_prefix, head)}
        if kept <= high:
            covered |= kept
        else:
            patch.append(f"!{token}")
    patch += [m for m in modules if m in keep and m not in covered]
    resolved = resolve_precision({"preset": preset, "roles": {}, "keep_high_precision": patch})
    quantized = {
        m
        for m in modules
        if m not in forced and not keeping_token(m, resolved, n_blocks, block_prefix, head)
    }
    wanted = set(modules) - high
    if quantized != wanted:  # a module name that is also a glob of others would do it
        raise AdviceError(
            f"the patch {patch} quantizes {sorted(quantized ^ wanted)} differently from the "
            f"advice; keep those modules by hand"
        )
    return patch


def floor_bits(recipe, preset: str) -> float:
    """Bits per element of the linear weights of `recipe`'s model with every module that
    `preset` can quantize quantized (the least a bits budget can ask): from the model built
    on the meta device, nothing trained or loaded."""
    import torch

    from nblab.eval.precision import forward_preset, weight_bits
    from nblab.eval.sensitivity import every_linear
    from nblab.models import build_model
    from nblab.models.protocol import architecture
    from nblab.precision.plan import apply_precision
    from nblab.train.data import build_data, tokenizer_vocab_size

    vocab = tokenizer_vocab_size(recipe.data) or build_data(recipe).vocab_size
    with torch.device("meta"):
        model = build_model(recipe.model, vocab, recipe.train.seq_len, weights=False)
    arch = architecture(model)
    plan = apply_precision(
        model,
        every_linear(forward_preset(preset)),
        block_prefix=arch.block_prefix,
        head=arch.head,
    )
    spec = forward_preset(preset).roles["fwd_w"]
    return mean_bits(
        [
            (
                m.in_features * m.out_features,
                weight_bits(spec, m.out_features, m.in_features) if m.quantized else HIGH_BITS,
            )
            for m in plan.modules
        ]
    )


def advised_recipe(source, advice: Advice):
    """The training recipe the advice patches: the source run's, on the preset with the
    keep list (a recipe to train in the format, or to launch from a RecipeBuilder)."""
    from nblab.recipe import Recipe

    return Recipe.from_toml(source.recipe).with_overrides(
        {
            "name": f"{source.name} advised {advice.preset}",
            "precision.preset": advice.preset,
            "precision.roles": {},
            "precision.keep_high_precision": list(advice.patch),
        }
    )


def measure_and_record(
    advice: Advice,
    scan: Scan,
    source,
    scan_recipe,
    *,
    store,
    evaluator=None,
    refine: bool = True,
    train: bool = False,
) -> Advice:
    """Measure the advice with a PTQ eval run of the advised recipe (on the scan's batches,
    so the Δ is against the scan's high-precision loss) and record it there: advice.json,
    and advised.toml, the training recipe. With a loss budget and `refine`, while the
    measured Δ misses the budget the next module of the greedy order is kept too (each
    measurement is in `advice.rounds`). With `train`, the advised recipe also trains (in
    this process; a recipe of several processes is left for `nblab run advised.toml`)."""
    from nblab.eval.ptq import Evaluator
    from nblab.eval.report import ADVICE_FILE
    from nblab.eval.run import run, write_json
    from nblab.eval.source import eval_name, eval_recipe

    evaluator = evaluator or Evaluator(scan_recipe, source)

    def measured(a: Advice) -> float:
        section = {"preset": a.preset, "roles": {}, "keep_high_precision": a.patch}
        with evaluator.quantized(section, a.weights_only):
            return evaluator.val_loss() - a.base_loss

    delta = measured(advice)
    advice.rounds = [{"kept": len(advice.keep), "module": None, "measured_delta": delta}]
    while refine and advice.budget is not None and delta > advice.budget:
        following = next((m for m in advice.order if m not in advice.keep), None)
        if following is None:
            break
        rounds = advice.rounds
        advice = with_kept(advice, [*advice.keep, following], scan)
        delta = measured(advice)
        advice.rounds = [
            *rounds,
            {"kept": len(advice.keep), "module": following, "measured_delta": delta},
        ]
    limit = (
        f"budget{advice.budget:g}" if advice.budget is not None else f"bits{advice.bits_budget:g}"
    )
    wo = ["weights-only"] if advice.weights_only else []
    recipe = eval_recipe(
        source,
        weights_only=advice.weights_only,
        batches=scan.batches,
        name=eval_name(source, f"advised-{advice.preset}", *wo, limit),
        overrides={
            "precision.preset": advice.preset,
            "precision.roles": {},
            "precision.keep_high_precision": list(advice.patch),
        },
    )
    result = run(recipe, store=store, evaluator=evaluator)
    advice.measured_run = result.run_id
    advice.measured_delta = result.metrics["val_loss"] - advice.base_loss
    run_dir = store.run_dir(result.run_id)
    training = advised_recipe(source, advice)
    (run_dir / "advised.toml").write_text(training.to_toml())
    write_json(run_dir / ADVICE_FILE, advice.to_dict())
    if train and training.parallel.nproc == 1:
        from nblab.train.trainer import train as train_run

        trained = train_run(training, store=store)
        logged = store.metrics(source.run_id, keys=["val_loss"])
        logged = logged[logged.step == source.step]
        advice.trained_run = trained.run_id
        advice.trained_val_loss = trained.metrics.get("val_loss")
        advice.source_val_loss = float(logged.value.iloc[-1]) if len(logged) else None
        write_json(run_dir / ADVICE_FILE, advice.to_dict())
    return advice


__all__ = [
    "Advice",
    "AdviceError",
    "advise",
    "advised_recipe",
    "floor_bits",
    "keep_patch",
    "measure_and_record",
    "with_kept",
]
