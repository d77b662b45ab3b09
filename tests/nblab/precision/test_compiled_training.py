"""Training on the compiled quantizers gives the reference's numbers, step for step."""

import pytest

from nblab import Recipe
from nblab.train.trainer import Trainer

DEBUG = Recipe.preset("gpt-debug")


def _curve(preset: str, backend: str, steps: int = 4) -> tuple[list[float], list]:
    recipe = DEBUG.with_overrides(
        [
            f"precision.preset={preset}",
            f"precision.backend={backend}",
            f"train.steps={steps}",
            "metrics.stats_interval=2",  # a stats step: quant_stats on the same backend
        ]
    )
    trainer = Trainer(recipe)
    losses = [trainer.train_step() for _ in range(steps)]
    return losses, [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("preset", ["mxfp8", "fp8_rowwise"])
def test_losses_and_weights_equal_the_references(preset):
    """rne presets: every bit the same (fake_quantize is bit-exact, and so is the
    rest of the step)."""
    ref_losses, ref_weights = _curve(preset, "reference")
    losses, weights = _curve(preset, "compiled")
    assert losses == ref_losses
    assert all((a == b).all() for a, b in zip(ref_weights, weights, strict=True))
