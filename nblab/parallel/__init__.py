"""Parallel layouts: ParallelDims (the degrees and the one place that validates them),
the planner (which layouts fit N GPUs, with memory and communication estimates), the
runtime (mesh, TP / FSDP2 / DDP plan), pipeline stages (pp, nblab.parallel.pipeline) and
the torchrun launcher."""

from nblab.parallel.dims import (
    TP_STYLES,
    LayoutContext,
    LayoutError,
    ParallelDims,
    context_from,
    linear_shapes,
)
from nblab.parallel.launch import check_layout, launch
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
from nblab.parallel.runtime import ParallelContext, apply_parallelism, init_distributed

__all__ = [
    "TP_STYLES",
    "Hardware",
    "LayoutContext",
    "LayoutError",
    "LayoutEstimate",
    "ParallelContext",
    "ParallelDims",
    "apply_parallelism",
    "check_layout",
    "context_from",
    "estimate_layout",
    "format_plan",
    "init_distributed",
    "launch",
    "layouts",
    "linear_shapes",
    "parse_bytes",
    "plan",
    "plan_command",
]
