"""What a training step costs: throughput, FLOP/s, MFU, memory; weight histograms."""

from __future__ import annotations

import resource
import sys

import torch
from torch import nn

from nblab.precision.linear import linear_shape

# Dense bf16 tensor-core peaks in TFLOP/s, by a substring of the device name.
PEAK_TFLOPS_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None where it is unknown (CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS_BF16.items() if k in name), None)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


class WeightHistograms:
    """Histograms of each Linear weight with edges fixed at the first call (+-3x the
    initial max |w|, `bins` bins), so steps compare bin by bin. Values outside the
    edges are counted in the outermost bins."""

    def __init__(self, bins: int = 64):
        self.bins = bins
        self.edges: dict[str, torch.Tensor] = {}

    def __call__(self, model: nn.Module):
        for name, module in model.named_modules():
            if linear_shape(module) is None:  # an nn.Linear or Conv1D
                continue
            w = module.weight.detach().float().flatten().cpu()
            if name not in self.edges:
                bound = 3 * float(w.abs().max()) or 1.0
                self.edges[name] = torch.linspace(-bound, bound, self.bins + 1)
            edges = self.edges[name]
            clipped = w.clamp(float(edges[0]), float(edges[-1]))
            counts = torch.histc(clipped, self.bins, float(edges[0]), float(edges[-1]))
            yield name, edges.tolist(), counts.to(torch.int64).tolist()
