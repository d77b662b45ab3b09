"""Parallel layouts: ParallelDims (the degrees and the one place that validates them) and
the planner (which layouts fit N GPUs, with memory and communication estimates)."""

from nblab.parallel.dims import (
    TP_STYLES,
    LayoutContext,
    LayoutError,
    ParallelDims,
    context_from,
    linear_shapes,
)
from nblab.parallel.planner import (
    Hardware,
    LayoutEstimate,
    estimate_layout,
    format_plan,
    layouts,
    parse_bytes,
    plan,
    plan_command,
)

__all__ = [
    "TP_STYLES",
    "Hardware",
    "LayoutContext",
    "LayoutError",
    "LayoutEstimate",
    "ParallelDims",
    "context_from",
    "estimate_layout",
    "format_plan",
    "layouts",
    "linear_shapes",
    "parse_bytes",
    "plan",
    "plan_command",
]
