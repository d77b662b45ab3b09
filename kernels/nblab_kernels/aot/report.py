"""What the AOT compile found: the per-specialization table, its failures, and the
roofline note that goes beside it.

A specialization fails the check when it does not compile for a target, when its
launch leaves fp fusion on (NUMERICS.md needs exact rounding; the launcher passes
enable_fp_fusion=False), when its PTX holds a floating-point fma whose source line
does not say why it is exact (`build.EXACT_FMA`), or when ptxas spills and
ACCEPTED_SPILLS does not say why that is acceptable.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .capture import Specialization
from .cases import DTYPES, SHAPES, Case

TARGET_NAMES = {80: "A100", 89: "L40S, RTX 4090", 90: "H100, H200", 100: "B200"}

# Spills that are acceptable: a pattern (fnmatch) on a specialization's Row.kind
# ("<kernel> <plan> <op>") -> why. Any other spill fails the check.
ACCEPTED_SPILLS: dict[str, str] = {
    "quantize 128x128/1x1 stats": (
        "a 128 x 128 tile group is one program (16 warps, 32 elements a thread), and the "
        "statistics keep x, its dequantized value, the error and the relative error live: "
        "more than the 128 registers a thread can have there (32 warps spill too). "
        "quant_stats runs when QuantLinear records a step, not in its GEMMs"
    ),
    "quantize 1x8192/1x1 stats": (
        "a whole row of up to 8192 elements is one program (16 warps, 16 elements a thread) "
        "whose statistics reduce over the row; sm_100's ptxas holds it in 128 registers and "
        "spills 48 B a thread (fp16 input): statistics steps only"
    ),
}

# A spill of at most this many bytes a thread (two 32-bit registers) is accepted in any
# kernel: ptxas, at the register limit of a 16- or 8-warp program, moves a value or two
# to local memory, which stays in L1; the kernels are bound by HBM traffic
# (kernels-roofline.txt: several bytes an element), which a few L1 accesses a thread
# do not change. Which specializations land there shifts with any edit of the kernel
# (ptxas's choices), so they are not listed one by one; anything larger must be.
SMALL_SPILL_BYTES = 8
SMALL_SPILL_REASON = (
    f"at most {SMALL_SPILL_BYTES} B a thread: one or two registers kept in L1 (local memory) at "
    "the register limit, next to the HBM bytes per element the kernel moves anyway"
)

# Peak HBM bandwidth, bytes/s (NVIDIA data sheets: H100 SXM HBM3, H200 HBM3e).
HBM = {"H100": 3.35e12, "H200": 4.8e12}


def constexprs(spec: Specialization) -> dict[str, object]:
    """The specialization's constexpr arguments by name."""
    fields = spec.fields
    names = list(fields["signature"])
    pairs = zip(fields["constant_keys"], fields["constant_vals"], strict=True)
    return {names[k[0]]: v for k, v in pairs}


def plan_text(spec: Specialization) -> str:
    """The tile as the kernel sees it: BM x BK elements, RM x RK groups, spans."""
    c = constexprs(spec)
    text = f"{c['BM']}x{c['BK']}/{c['RM']}x{c['RK']}"
    span = "m" * bool(c.get("SPAN_M")) + "k" * bool(c.get("SPAN_K"))
    return text + (f" span-{span}" if span else "")


@dataclass
class Row:
    """One distinct specialization (the same on every target), with its records."""

    kernel: str
    label: str  # the first case that reaches it
    cases: int
    plan: str
    consts: dict[str, object]  # the constexprs
    records: dict[int, dict] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    fusion_on: bool = False

    @property
    def op(self) -> str:
        c = self.consts
        return "fake" if c.get("FAKE") else "stats" if c.get("STATS") else "packed"

    @property
    def kind(self) -> str:
        """What ACCEPTED_SPILLS matches: "quantize 128x128/1x1 stats", "amax 32x128/1x1"."""
        name = self.kernel.strip("_").removesuffix("_kernel")
        return f"{name} {self.plan}" + (f" {self.op}" if name == "quantize" else "")

    @property
    def spill_reason(self) -> str | None:
        for pattern, reason in ACCEPTED_SPILLS.items():
            if fnmatch.fnmatchcase(self.kind, pattern):
                return reason
        worst = max(
            (max(r["spill_stores"], r["spill_loads"]) for r in self.records.values()), default=0
        )
        return SMALL_SPILL_REASON if worst <= SMALL_SPILL_BYTES else None

    @property
    def spills(self) -> bool:
        return any(r["spill_stores"] or r["spill_loads"] for r in self.records.values())

    @property
    def inexact_fma(self) -> list[str]:
        return sorted(
            {
                f"sm_{arch} {s['file']}:{s['line']} {s['instr']}"
                for arch, r in self.records.items()
                for s in r["fma"]
                if not s["exact"]
            }
        )


def rows(
    specs: Iterable[Specialization], records: Mapping[str, dict], errors: Mapping[str, str]
) -> list[Row]:
    by_key: dict[str, Row] = {}
    for spec in specs:
        row = by_key.get(spec.key)
        if row is None:
            row = by_key[spec.key] = Row(
                spec.kernel, spec.cases[0].label, len(spec.cases), plan_text(spec), constexprs(spec)
            )
        if spec.data in records:
            row.records[spec.arch] = records[spec.data]
        if spec.data in errors:
            row.errors[spec.arch] = errors[spec.data]
        row.fusion_on |= bool(spec.fields["options"]["enable_fp_fusion"])
    return sorted(by_key.values(), key=lambda r: (r.kernel, r.label))


def problems(table: Iterable[Row], archs: Iterable[int]) -> list[str]:
    """Every failure of the check, one line each (empty: all good)."""
    archs = list(archs)
    out = []
    for row in table:
        where = f"{row.kernel} [{row.label}]"
        for arch, err in sorted(row.errors.items()):
            out.append(f"{where}: does not compile for sm_{arch}: {err.splitlines()[0][:300]}")
        missing = [a for a in archs if a not in row.records and a not in row.errors]
        if missing:
            out.append(f"{where}: no record for sm_{', sm_'.join(map(str, missing))}")
        if row.fusion_on:
            out.append(f"{where}: launched with enable_fp_fusion=True")
        if row.spills and row.spill_reason is None:
            spilled = [
                f"sm_{a} {r['spill_stores']}/{r['spill_loads']} B"
                for a, r in sorted(row.records.items())
                if r["spill_stores"] or r["spill_loads"]
            ]
            out.append(f"{where}: spills ({', '.join(spilled)}) and ACCEPTED_SPILLS has no reason")
        for site in row.inexact_fma:
            out.append(f"{where}: fma without an '{'exact-fma:'}' comment: {site}")
    return out


def _cell(record: dict | None) -> str:
    if record is None:
        return "FAILED"
    return f"{record['registers']}/{record['spill_stores']}/{record['shared']}"


def aot_text(
    table: list[Row], archs: list[int], n_cases: int, triton_version: str, command: str
) -> str:
    per_target = len(table)
    lines = [
        "# Every Triton kernel specialization, compiled ahead of time (no GPU)",
        f"# generated by: {command} --report",
        f"# triton {triton_version}; targets "
        + ", ".join(f"sm_{a} ({TARGET_NAMES.get(a, '?')})" for a in archs),
        f"# {n_cases} API calls (cases) -> {per_target} distinct specializations per target, "
        f"{per_target * len(archs)} compiles",
        "# every launch passes enable_fp_fusion=False; 'fma' counts floating-point fma left "
        "in the PTX on any target",
        "# per target: registers / spill-store bytes / shared-memory bytes (ptxas -v, "
        "triton metadata)",
        "# plan: BM x BK elements / RM x RK groups per program; span-m/k: groups across "
        "programs (two passes)",
        "# case: the first API call reaching it (origin op dtype bits shape[/layout]); "
        "+N: N more calls reach it",
        "",
    ]
    notes = list(dict.fromkeys(r.spill_reason for r in table if r.spills and r.spill_reason))
    lines[-1:-1] = [f"# spill note {i}: {reason}" for i, reason in enumerate(notes, 1)]
    head = ["kernel", "plan", "warps", *(f"sm_{a}" for a in archs), "fma", "case"]
    body = []
    for row in table:
        warps = {r["num_warps"] for r in row.records.values()}
        fma = sum(len(r["fma"]) for r in row.records.values())
        case = row.label + (f" +{row.cases - 1}" if row.cases > 1 else "")
        if row.spills:
            reason = row.spill_reason
            case += f"  [spills: {f'note {notes.index(reason) + 1}' if reason else 'NOT ACCEPTED'}]"
        body.append(
            [
                row.kernel.strip("_").removesuffix("_kernel"),
                row.plan,
                "/".join(map(str, sorted(warps))) or "?",
                *(_cell(row.records.get(a)) for a in archs),
                str(fma),
                case,
            ]
        )
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head) - 1)]
    for r in [head, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return "\n".join(lines) + "\n"


def table_lines(text: str) -> list[str]:
    """The rows of an aot_text (no header comments): what a regenerated report must
    reproduce."""
    return [line.rstrip() for line in text.splitlines() if line and not line.startswith("#")]


# ---------------------------------------------------------------------------
# roofline
# ---------------------------------------------------------------------------


def traffic(case: Case) -> tuple[float, float, int]:
    """(bytes read, bytes written) per element of x, and the passes over x, for one
    call at its shape: every pass reads x; rbits are int64; codes, scales (per group)
    and the statistics rows are written."""
    from ..reference import GroupLayout
    from ..triton.plan import TilePlan
    from ..triton.quantize import N_STATS

    spec = case.spec
    m, k = SHAPES[case.shape]
    itemsize = DTYPES[case.dtype].itemsize
    plan = TilePlan.of(spec, m, k)
    passes = 1 + plan.spans + (spec.scale_format.grid is not None)
    read = passes * itemsize + (8 if case.bits == "rbits" else 0)
    if case.op == "fake":
        return read, itemsize, passes
    fmt, layout = spec.element_format, GroupLayout.of((m, k), m, k, spec)
    code = 0.5 if fmt.packed else 1.0
    scale = spec.scale_format.storage_dtype.itemsize * layout.gm * layout.gk / (m * k)
    stats = 0.0
    if case.op == "stats":
        programs = plan.grid(m, k)[0] * plan.grid(m, k)[1]
        stats = programs * N_STATS * 4 / (m * k)
    return read, code + scale + stats, passes


def roofline_text(cases: Iterable[Case], command: str) -> str:
    """Bytes per element and the bandwidth-bound element rate per spec, op, input
    width and SR bits, at the training shape (bf16 and fp16 share their lines)."""
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        if case.shape != "train" or case.layout != "rows":
            continue
        width = "fp32" if case.dtype == "fp32" else "bf16/fp16"
        groups.setdefault((case.spec.describe(), case.op, width, case.bits), []).append(case)
    m, k = SHAPES["train"]
    lines = [
        "# Roofline of the quantize kernels: bytes moved per element of x, and so the",
        "# best element rate that HBM allows (peak: H100 SXM 3.35 TB/s, H200 4.8 TB/s).",
        f"# generated by: {command} --report (beside kernels-aot.txt)",
        "# read: x once per pass (spanning groups and NVFP4's tensor amax add a pass), plus",
        "# int64 rbits when given (the bit-exact test path); written: fake -> x's dtype;",
        "# packed -> codes (fp4 two a byte; fp6 and int4 one byte) + scales per group;",
        f"# stats -> packed + 32 bytes a program. At the shape {m}x{k}. A GPU run's",
        "# elements/s (nblab_kernels.bench: numel / time) over the row's Gelem/s is the",
        "# fraction of the peak bandwidth it reached.",
        "",
    ]
    head = ["spec", "op", "x", "bits", "passes", "read B", "write B",
            "H100 Gelem/s", "H200 Gelem/s", "origins"]  # fmt: skip
    body = []
    for (desc, op, width, bits), group in sorted(groups.items()):
        read, write, passes = traffic(group[0])
        rate = {name: bw / (read + write) / 1e9 for name, bw in HBM.items()}
        names = dict.fromkeys(
            c.origin.removeprefix("QuantSpec ").removeprefix("preset ") for c in group
        )
        body.append([desc, op, width, bits, str(passes), f"{read:.3g}", f"{write:.4g}",
                     f"{rate['H100']:.0f}", f"{rate['H200']:.0f}", ", ".join(names)])  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head) - 1)]
    for r in [head, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return "\n".join(lines) + "\n"
