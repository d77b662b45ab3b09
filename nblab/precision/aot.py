"""AOT compile of every kernel specialization the precision presets and the API reach.

    python -m nblab.precision.aot --report     # writes benchmarks/results/kernels-aot.txt
                                               # and kernels-roofline.txt
    python -m nblab.precision.aot --check      # compile (cached), fail on errors,
                                               # spills or fma; print the summary

nblab_kernels.aot enumerates the named QuantSpecs and compiles; this module adds each
preset's six roles as QuantLinear quantizes them (on the stored layout: the wgrad and
dgrad_w operands along dim 0), so nblab_kernels never imports nblab.
"""

from __future__ import annotations

import sys

from nblab.precision.linear import on_stored_layout
from nblab.precision.presets import PRECISION_PRESETS, ROLES
from nblab_kernels.aot import cases as aot_cases
from nblab_kernels.aot.cli import main as aot_main

# A transformers Conv1D weight reaches QuantLinear transposed (a "cols" view): its
# two weight roles, with the ops QuantLinear runs (fake, and stats when recording),
# at the training shape.
WEIGHT_ROLES = ("fwd_w", "dgrad_w")
QUANTLINEAR_OPS = ("fake", "stats")


def preset_cases() -> list[aot_cases.Case]:
    """Each preset's roles on their stored layout: every op (QuantLinear's fake and
    stats, the API's packed), dtype and shape; the weight roles also transposed."""
    out = []
    for preset in PRECISION_PRESETS.values():
        for role in ROLES:
            spec = on_stored_layout(preset.roles[role], role)
            if spec is None:
                continue
            origin = f"preset {preset.name} {role}"
            out += aot_cases.spec_cases(origin, spec)
            if role in WEIGHT_ROLES:
                out += aot_cases.spec_cases(
                    origin, spec, ops=QUANTLINEAR_OPS, shapes=("train",), layouts=("cols",)
                )
    return out


def main(argv: list[str] | None = None) -> int:
    return aot_main(argv, extra_cases=preset_cases(), command="python -m nblab.precision.aot")


if __name__ == "__main__":
    sys.exit(main())
