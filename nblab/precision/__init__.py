"""Precision recipes: which QuantSpec each operand of a Linear gets (see presets.py)."""

from nblab.precision.presets import (
    GEMM_MODES,
    GEMMS,
    HIGH,
    PRECISION_PRESETS,
    ROLES,
    KeepToken,
    PrecisionPreset,
    get_preset,
    keep_blocks,
    parse_keep_token,
    precision_problems,
    preset_to_dict,
    resolve_precision,
    spec_from_dict,
    spec_to_dict,
)

__all__ = [
    "GEMMS",
    "GEMM_MODES",
    "HIGH",
    "PRECISION_PRESETS",
    "ROLES",
    "KeepToken",
    "PrecisionPreset",
    "get_preset",
    "keep_blocks",
    "parse_keep_token",
    "precision_problems",
    "preset_to_dict",
    "resolve_precision",
    "spec_from_dict",
    "spec_to_dict",
]
