"""The foundation demo: every element format, and what each preset costs on N(0,1).

Printed by `nblab demo` until sweeps land (then the demo becomes a sweep + report).
"""

from __future__ import annotations

import math

import torch

from nblab_kernels import ELEMENT_FORMATS, QUANT_PRESETS, QuantSpec, quant_stats, quantize


def format_rows() -> list[dict]:
    rows = []
    for name, fmt in ELEMENT_FORMATS.items():
        layout = f"1/{fmt.ebits}/{fmt.mbits}" if fmt.kind == "float" else fmt.kind
        rows.append(
            {
                "format": name,
                "bits": fmt.bits,
                "s/e/m": layout,
                "bias": fmt.bias if fmt.kind == "float" else "-",
                "max": f"{fmt.max:g}",
                "min normal": f"{fmt.min_normal:g}",
                "min subnormal": f"{fmt.min_subnormal:g}",
                "values": "-" if fmt.values is None else 2 * len(fmt.values) - 1,
            }
        )
    return rows


def bits_per_element(x: torch.Tensor, spec: QuantSpec) -> float:
    """Storage cost: element bits plus the scales' bits spread over the elements."""
    q = quantize(x, spec)
    scale_bits = 0 if q.scale is None else q.scale.numel() * q.scale.element_size() * 8
    if q.tensor_scale is not None:
        scale_bits += 32
    return spec.element_format.bits + scale_bits / x.numel()


def preset_rows(x: torch.Tensor) -> list[dict]:
    rows = []
    for name, spec in QUANT_PRESETS.items():
        stats = quant_stats(x, spec)
        rows.append(
            {
                "preset": name,
                "spec": spec.describe(),
                "bits/elem": f"{bits_per_element(x, spec):.2f}",
                "SQNR dB": "inf" if math.isinf(stats.sqnr_db) else f"{stats.sqnr_db:.2f}",
                "saturated %": f"{100 * stats.saturation:.3f}",
                "underflow %": f"{100 * stats.underflow:.3f}",
            }
        )
    return rows


def render(rows: list[dict]) -> str:
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = [
        "  ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths, strict=True)) for r in rows
    ]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def main(size: int = 1024, seed: int = 0) -> None:
    x = torch.randn(size, size, generator=torch.Generator().manual_seed(seed))
    print("Element formats\n")
    print(render(format_rows()))
    print(f"\nPresets on N(0,1), {size}x{size}, seed {seed}\n")
    print(render(preset_rows(x)))
