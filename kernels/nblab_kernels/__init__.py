"""nblab_kernels: number formats, the plain-torch reference quantizers and the
Triton kernels that match them bit for bit. Imports only torch, triton, numpy."""

from .formats import (
    ELEMENT_FORMATS,
    QUANT_PRESETS,
    SCALE_FORMATS,
    ElementFormat,
    QuantSpec,
    ScaleFormat,
    element_format,
    scale_format,
)
from .matmul import scaled_matmul
from .ops import (
    BACKENDS,
    TritonFallbackWarning,
    auto_backend,
    fake_quantize,
    layer_backend,
    layer_backend_for,
    quant_stats,
    quantize,
)
from .reference import (
    QTensor,
    QuantStats,
    hadamard_matrix,
    hadamard_transform,
    inverse_hadamard_transform,
    merge_quant_stats,
)

__all__ = [
    "BACKENDS",
    "ELEMENT_FORMATS",
    "QUANT_PRESETS",
    "SCALE_FORMATS",
    "ElementFormat",
    "QTensor",
    "QuantSpec",
    "QuantStats",
    "ScaleFormat",
    "TritonFallbackWarning",
    "element_format",
    "fake_quantize",
    "hadamard_matrix",
    "hadamard_transform",
    "inverse_hadamard_transform",
    "auto_backend",
    "layer_backend",
    "layer_backend_for",
    "merge_quant_stats",
    "quant_stats",
    "quantize",
    "scale_format",
    "scaled_matmul",
]
