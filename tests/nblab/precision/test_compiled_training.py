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


def test_the_plan_says_which_backend_each_layers_quantizers_run_on(monkeypatch):
    """gpt-tiny's layers (2048 tokens x 128 and up) compile under auto on the CPU,
    gpt-debug's (128 x 64) stay on the reference, and NBLAB_AUTO_COMPILED=0 keeps all on it."""
    from torch import nn

    from nblab.precision.plan import apply_precision

    def plan(tokens: int) -> str:
        model = nn.Sequential(nn.Linear(128, 256), nn.Linear(256, 128))
        return str(apply_precision(model, "mxfp8", tokens=tokens)).splitlines()[1]

    monkeypatch.setenv("NBLAB_AUTO_COMPILED", "1")
    assert plan(2048).startswith("quantizers (precision.backend=auto): compiled for 2;")
    assert plan(128) == "quantizers (precision.backend=auto): reference for 2"
    mixed = "quantizers (precision.backend=auto): reference for 1, compiled for 1"
    assert plan(1024).startswith(mixed)  # 1024 x 128 < 2^18 <= 1024 x 256
    monkeypatch.setenv("NBLAB_AUTO_COMPILED", "0")
    assert plan(2048) == "quantizers (precision.backend=auto): reference for 2"
