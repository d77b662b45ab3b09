"""Parallel layouts: ParallelDims (the degrees and the one place that validates them),
the planner (which layouts fit N GPUs, with memory and communication estimates), the
runtime (mesh, TP / FSDP2 / DDP plan) and pipeline stages (pp, nblab.parallel.pipeline).
They know a model through the model protocol only (nblab.models.protocol). torchrun is
started above the trainer, by nblab.launch."""

from nblab.parallel.dims import (
    LayoutContext,
    LayoutError,
    ParallelDims,
    context_from,
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
from nblab.parallel.runtime import ParallelContext, apply_parallelism, init_distributed

__all__ = [
    "Hardware",
    "LayoutContext",
    "LayoutError",
    "LayoutEstimate",
    "ParallelContext",
    "ParallelDims",
    "apply_parallelism",
    "context_from",
    "estimate_layout",
    "format_plan",
    "init_distributed",
    "layouts",
    "parse_bytes",
    "plan",
    "plan_command",
]
