"""Precision presets: which QuantSpec each operand of a Linear gets, as plain data.

A Linear y = x W^T runs three GEMMs, each with two quantizable operands:

    forward  y  = x  W^T    reduction over in_features   roles fwd_x,    fwd_w
    dgrad    dx = dy W      reduction over out_features  roles dgrad_dy, dgrad_w
    wgrad    dW = dy^T x    reduction over tokens        roles wgrad_dy, wgrad_x

Every spec here is written RELATIVE TO THAT GEMM'S REDUCTION DIM, whatever the layout
of the stored tensor: granularity "row" is one scale per reduction vector, "block"
with dim=-1 is 1 x B blocks along the reduction dim, "tile" is B x B. The QuantLinear
maps a role's spec onto the stored tensor (for wgrad the reduction runs over the
leading dims of x and dy, i.e. QuantSpec dim=0). So a role spec must keep dim=-1 and
may not use "col" (a scale that varies along the reduction dim cannot be factored out
of the dot product).

A preset is a name, six role -> QuantSpec | None (None: high precision), the module
globs kept in high precision and a description. `preset_to_dict` turns one into the
[precision] table of a recipe, which a user can copy into TOML and edit;
`resolve_precision` turns such a table (preset + per-role overrides + keep list)
back into specs, naming every bad entry.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nblab_kernels.formats import ELEMENT_FORMATS, QUANT_PRESETS, QuantSpec

ROLES = ("fwd_x", "fwd_w", "dgrad_dy", "dgrad_w", "wgrad_x", "wgrad_dy")

# The two operands of each GEMM. A Hadamard transform only cancels in the product
# when both operands of the same GEMM get the same one (size and seed).
GEMMS = {
    "forward": ("fwd_x", "fwd_w"),
    "dgrad": ("dgrad_dy", "dgrad_w"),
    "wgrad": ("wgrad_x", "wgrad_dy"),
}

HIGH = "high"  # a role override meaning: leave this operand in high precision

# precision.gemm: how the GEMMs multiply quantized operands (nblab.precision.gemm)
GEMM_MODES = ("emulated", "native", "auto")

# A role override table may start from a named QuantSpec with this key; without it
# the table edits the preset's spec for that role (or QuantSpec() defaults when the
# preset keeps the role in high precision).
BASE_KEY = "base"

Problem = tuple[str, Any, str]  # (field path, bad value, what would be accepted)


# ---------------------------------------------------------------------------
# The preset type
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionPreset:
    """One precision recipe: role -> QuantSpec (None = high precision), plus the
    module-name globs / first:N / last:N / last:P% tokens kept in high precision."""

    name: str
    roles: dict[str, QuantSpec | None]
    keep_high_precision: tuple[str, ...] = ("lm_head",)
    description: str = ""

    def __post_init__(self) -> None:
        if tuple(self.roles) != ROLES:
            raise ValueError(
                f"PrecisionPreset {self.name!r}: roles must be exactly {', '.join(ROLES)} "
                f"in that order; got {', '.join(self.roles)}"
            )
        problems = [
            (f"roles.{r}", s, a) for r, s in self.roles.items() for a in _role_spec_problems(s)
        ]
        problems += _hadamard_pair_problems(self.roles, prefix="roles.")
        problems += keep_problems(self.keep_high_precision, prefix="keep_high_precision")
        if problems:
            raise ValueError(f"PrecisionPreset {self.name!r}:\n" + format_problems(problems))

    def spec(self, role: str) -> QuantSpec | None:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is unknown; accepted: {', '.join(ROLES)}")
        return self.roles[role]

    @property
    def is_high_precision(self) -> bool:
        return all(s is None for s in self.roles.values())


# ---------------------------------------------------------------------------
# Plain data in and out
# ---------------------------------------------------------------------------

_SPEC_FIELDS = {f.name: f for f in dataclasses.fields(QuantSpec)}
_SPEC_TYPES = typing.get_type_hints(QuantSpec)
# QuantSpec fills scale=None / rule=None with the defaults for the element / scale.
_DEFAULTS_FOLLOW = _SPEC_FIELDS["rule"].default is None


def spec_to_dict(spec: QuantSpec) -> dict[str, Any]:
    """Every field of the spec, TOML-able (block is left out when it is None)."""
    out = dataclasses.asdict(spec)
    if out["block"] is None:
        del out["block"]
    return out


def spec_from_dict(data: Mapping[str, Any], base: QuantSpec | None = None) -> QuantSpec:
    """A QuantSpec from a table of its fields, on top of `base` (default QuantSpec()).
    A "base" key names a QuantSpec preset to start from instead. Raises ValueError
    naming the bad key or value."""
    problems = _spec_table_problems(data, base, path="spec")
    if problems:
        raise ValueError(format_problems(problems))
    return _spec_from_table(data, base)


def preset_to_dict(preset: PrecisionPreset | str) -> dict[str, Any]:
    """The [precision] table that reproduces `preset` with every role written out,
    for a user to copy into a recipe and edit. High-precision roles read "high"."""
    if isinstance(preset, str):
        preset = get_preset(preset)
    return {
        "preset": preset.name,
        "roles": {
            role: HIGH if spec is None else spec_to_dict(spec)
            for role, spec in preset.roles.items()
        },
        "keep_high_precision": list(preset.keep_high_precision),
    }


def get_preset(name: str) -> PrecisionPreset:
    if name not in PRECISION_PRESETS:
        raise ValueError(
            f"precision preset {name!r} is unknown; accepted: {', '.join(PRECISION_PRESETS)}"
            + _did_you_mean(name, PRECISION_PRESETS)
        )
    return PRECISION_PRESETS[name]


def resolve_precision(section: Any) -> PrecisionPreset:
    """Turn a [precision] table (a PrecisionSection or a mapping with `preset`,
    `roles`, `keep_high_precision`) into a PrecisionPreset: the named preset with the
    per-role overrides applied and the keep lists merged.

    - A role override is a QuantSpec preset name ("mxfp8", "nvfp4", ...), "high" for
      high precision, or a table of QuantSpec fields edited onto the preset's spec for
      that role (or onto the spec named by its "base" key).
    - keep_high_precision entries are added to the preset's; "!entry" removes one.

    Raises ValueError listing every problem."""
    problems = precision_problems(section)
    if problems:
        raise ValueError("invalid precision section:\n" + format_problems(problems))
    preset_name, roles, keep = _section_fields(section)
    base = PRECISION_PRESETS[preset_name]
    resolved = dict(base.roles)
    for role, override in roles.items():
        resolved[role] = _resolve_role(override, base.roles[role])
    keep_list = list(base.keep_high_precision)
    for token in keep:
        if token.startswith("!"):
            keep_list = [k for k in keep_list if k != token[1:]]
        elif token not in keep_list:
            keep_list.append(token)
    overridden = [r for r in ROLES if resolved[r] != base.roles[r]]
    description = base.description
    if overridden:
        description += f" (overridden: {', '.join(overridden)})"
    return PrecisionPreset(preset_name, resolved, tuple(keep_list), description)


# ---------------------------------------------------------------------------
# Validation: every function returns a list of (path, value, allowed) problems
# ---------------------------------------------------------------------------


def precision_problems(section: Any, prefix: str = "") -> list[Problem]:
    """Every problem in a [precision] table; paths are prefixed with `prefix`."""
    preset_name, roles, keep = _section_fields(section)
    problems: list[Problem] = []
    preset = None
    if not isinstance(preset_name, str) or preset_name not in PRECISION_PRESETS:
        problems.append(
            (
                f"{prefix}preset",
                preset_name,
                f"one of {', '.join(PRECISION_PRESETS)}"
                + _did_you_mean(preset_name, PRECISION_PRESETS),
            )
        )
    else:
        preset = PRECISION_PRESETS[preset_name]
    resolved: dict[str, QuantSpec | None] = dict(preset.roles) if preset else {}
    bad_roles: set[str] = set()
    if not isinstance(roles, Mapping):
        problems.append((f"{prefix}roles", roles, "a table of role = override"))
        roles = {}
    for role, override in roles.items():
        path = f"{prefix}roles.{role}"
        if role not in ROLES:
            problems.append(
                (
                    path,
                    override,
                    f"unknown role {role!r}; accepted: {', '.join(ROLES)}"
                    + _did_you_mean(role, ROLES),
                )
            )
            continue
        default = preset.roles[role] if preset else None
        role_problems = _role_override_problems(override, default, path)
        problems += role_problems
        if role_problems:
            bad_roles.add(role)
        else:
            resolved[role] = _resolve_role(override, default)
    if preset:
        problems += _hadamard_pair_problems(resolved, prefix=f"{prefix}roles.", skip=bad_roles)
    if not isinstance(keep, list | tuple):
        problems.append((f"{prefix}keep_high_precision", keep, "a list of strings"))
    else:
        problems += keep_problems(keep, prefix=f"{prefix}keep_high_precision", allow_remove=True)
    return problems


_KEEP_COUNT = re.compile(r"^(first|last):(\d+)$")
_KEEP_PERCENT = re.compile(r"^(first|last):(\d+(?:\.\d+)?)%$")
_GLOB = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]+$")
_KEEP_RULE = (
    'a module-name glob such as "lm_head" or "layers.1.*", or "first:N", "last:N", '
    '"first:P%", "last:P%" (N an integer >= 1, P in (0, 100])'
)


@dataclass(frozen=True)
class KeepToken:
    """One parsed keep_high_precision entry: a glob, or a count/percent of blocks
    taken from the start ("first") or end ("last") of the model."""

    kind: str  # "glob" | "first" | "last"
    pattern: str = ""
    count: int = 0
    percent: float = 0.0


def parse_keep_token(token: str) -> KeepToken:
    """Parse one keep_high_precision entry; ValueError says what is accepted."""
    if not isinstance(token, str):
        raise ValueError(
            f"keep_high_precision entry {token!r} is not a string; accepted: {_KEEP_RULE}"
        )
    if token.startswith(("first:", "last:")):
        if m := _KEEP_COUNT.match(token):
            if int(m.group(2)) >= 1:
                return KeepToken(m.group(1), count=int(m.group(2)))
        elif m := _KEEP_PERCENT.match(token):
            percent = float(m.group(2))
            if 0 < percent <= 100:
                return KeepToken(m.group(1), percent=percent)
        raise ValueError(
            f"keep_high_precision entry {token!r} is malformed; accepted: {_KEEP_RULE}"
        )
    if not _GLOB.match(token):
        raise ValueError(
            f"keep_high_precision entry {token!r} is malformed; accepted: {_KEEP_RULE}"
        )
    return KeepToken("glob", pattern=token)


def keep_blocks(tokens: typing.Iterable[str], n_blocks: int) -> set[int]:
    """The block indices the first/last tokens select in a model of n_blocks blocks.
    A percentage rounds up (last:15% of 4 blocks keeps 1), capped at n_blocks."""
    import math

    kept: set[int] = set()
    for token in tokens:
        t = parse_keep_token(token)
        if t.kind == "glob":
            continue
        n = t.count if t.count else math.ceil(t.percent / 100 * n_blocks - 1e-9)
        n = min(n, n_blocks)
        kept.update(range(n) if t.kind == "first" else range(n_blocks - n, n_blocks))
    return kept


def keep_problems(
    tokens: typing.Iterable[Any], prefix: str = "keep_high_precision", allow_remove: bool = False
) -> list[Problem]:
    problems: list[Problem] = []
    for i, token in enumerate(tokens):
        check = token
        if allow_remove and isinstance(token, str) and token.startswith("!"):
            check = token[1:]
        try:
            parse_keep_token(check)
        except ValueError:
            allowed = _KEEP_RULE + (' (or "!entry" to drop a preset entry)' if allow_remove else "")
            problems.append((f"{prefix}[{i}]", token, allowed))
    return problems


def format_problems(problems: list[Problem]) -> str:
    return "\n".join(
        f"  {path}: {short_repr(value)} -> {allowed}" for path, value, allowed in problems
    )


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _did_you_mean(name: Any, known: typing.Iterable[str]) -> str:
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _section_fields(section: Any) -> tuple[Any, Any, Any]:
    if isinstance(section, Mapping):
        return (
            section.get("preset", "bf16"),
            section.get("roles", {}),
            section.get("keep_high_precision", []),
        )
    return section.preset, section.roles, section.keep_high_precision


def _role_spec_problems(spec: QuantSpec | None) -> list[str]:
    """Rules a role spec obeys beyond QuantSpec's own (see the module docstring)."""
    if spec is None:
        return []
    out = []
    if spec.dim != -1:
        out.append(
            "dim=-1: role specs are written relative to the GEMM's reduction dim; "
            "the QuantLinear maps them onto the stored layout"
        )
    if spec.granularity == "col":
        out.append(
            "granularity tensor, row, block or tile: a per-column scale varies along the "
            "reduction dim and cannot be factored out of the GEMM"
        )
    return out


def _role_override_problems(override: Any, default: QuantSpec | None, path: str) -> list[Problem]:
    if isinstance(override, str):
        if override == HIGH or override in QUANT_PRESETS:
            spec = None if override == HIGH else QUANT_PRESETS[override]
            return [(path, override, a) for a in _role_spec_problems(spec)]
        return [
            (
                path,
                override,
                f'"high" or a QuantSpec preset name: {", ".join(QUANT_PRESETS)}'
                + _did_you_mean(override, QUANT_PRESETS),
            )
        ]
    if isinstance(override, Mapping):
        problems = _spec_table_problems(override, default, path)
        if not problems:
            spec = _spec_from_table(override, default)
            problems = [(path, override, a) for a in _role_spec_problems(spec)]
        return problems
    return [(path, override, '"high", a QuantSpec preset name, or a table of QuantSpec fields')]


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp == (int | None):
        return value is None or (isinstance(value, int) and not isinstance(value, bool))
    if tp == (str | None):
        return value is None or isinstance(value, str)
    return True


def _spec_table_problems(
    table: Mapping[str, Any], default: QuantSpec | None, path: str
) -> list[Problem]:
    problems: list[Problem] = []
    fields_ok = True
    for key, value in table.items():
        if key == BASE_KEY:
            if not isinstance(value, str) or value not in QUANT_PRESETS:
                problems.append(
                    (
                        f"{path}.{key}",
                        value,
                        f"a QuantSpec preset name: {', '.join(QUANT_PRESETS)}"
                        + _did_you_mean(value, QUANT_PRESETS),
                    )
                )
                fields_ok = False
        elif key not in _SPEC_FIELDS:
            known = [BASE_KEY, *_SPEC_FIELDS]
            problems.append(
                (
                    f"{path}.{key}",
                    value,
                    f"unknown QuantSpec field {key!r}; accepted: "
                    f"{', '.join(known)}" + _did_you_mean(key, known),
                )
            )
            fields_ok = False
        elif value is None or not _type_ok(value, _SPEC_TYPES[key]):
            # None is no TOML value: leave the key out to get the default
            kind = "an integer" if _SPEC_TYPES[key] in (int, int | None) else "a string"
            problems.append((f"{path}.{key}", value, kind))
            fields_ok = False
        elif key == "hadamard_seed" and not 0 <= value < 2**63:
            problems.append((f"{path}.{key}", value, "an integer in 0..2**63-1"))
            fields_ok = False
    if fields_ok:
        try:
            _spec_from_table(table, default)
        except (ValueError, TypeError) as err:
            problems.append((path, dict(table), str(err)))
    return problems


def _spec_from_table(table: Mapping[str, Any], default: QuantSpec | None) -> QuantSpec:
    changes = dict(table)
    base_name = changes.pop(BASE_KEY, None)
    if base_name is not None:
        base = QUANT_PRESETS[base_name]
    else:
        base = default if default is not None else QuantSpec()
    # Fields that depend on a changed one go back to their defaults unless given too:
    # block only exists for block/tile; the rule follows the scale format, and a cast
    # element (bf16, ...) takes the "none" scale.
    if changes.get("granularity") in ("tensor", "row", "col") and "block" not in changes:
        changes["block"] = None
    if _DEFAULTS_FOLLOW:
        if "element" in changes and "scale" not in changes:
            fmt = ELEMENT_FORMATS.get(changes["element"])
            if fmt is not None and fmt.kind == "cast":
                changes["scale"] = None
        if "scale" in changes and "rule" not in changes:
            changes["rule"] = None
    return base.replace(**changes) if changes else base


def _resolve_role(override: Any, default: QuantSpec | None) -> QuantSpec | None:
    if isinstance(override, str):
        return None if override == HIGH else QUANT_PRESETS[override]
    return _spec_from_table(override, default)


def _hadamard_pair_problems(
    roles: Mapping[str, QuantSpec | None], prefix: str, skip: set[str] = frozenset()
) -> list[Problem]:
    problems: list[Problem] = []
    for gemm, (a, b) in GEMMS.items():
        if a in skip or b in skip:
            continue
        sa, sb = roles.get(a), roles.get(b)
        ha = (sa.hadamard, sa.hadamard_seed if sa.hadamard else 0) if sa else (0, 0)
        hb = (sb.hadamard, sb.hadamard_seed if sb.hadamard else 0) if sb else (0, 0)
        if ha != hb:
            problems.append(
                (
                    f"{prefix}{b}",
                    f"hadamard={hb[0]}, hadamard_seed={hb[1]}",
                    f"the same hadamard and hadamard_seed as {a} (hadamard={ha[0]}, "
                    f"hadamard_seed={ha[1]}): the {gemm} GEMM's transform cancels only when "
                    f"both operands get the same one",
                )
            )
    return problems


# ---------------------------------------------------------------------------
# The registry: the table of NUMERICS.md "Recipes"
# ---------------------------------------------------------------------------


def _q(name: str, **changes) -> QuantSpec:
    spec = QUANT_PRESETS[name]
    return spec.replace(**changes) if changes else spec


def _roles(
    fwd_x=None, fwd_w=None, dgrad_dy=None, dgrad_w=None, wgrad_x=None, wgrad_dy=None
) -> dict[str, QuantSpec | None]:
    return dict(
        fwd_x=fwd_x,
        fwd_w=fwd_w,
        dgrad_dy=dgrad_dy,
        dgrad_w=dgrad_w,
        wgrad_x=wgrad_x,
        wgrad_dy=wgrad_dy,
    )


def _same(spec: QuantSpec) -> dict[str, QuantSpec | None]:
    return _roles(*([spec] * len(ROLES)))


_E4M3_T = _q("fp8_e4m3_tensor")
_E5M2_T = _q("fp8_e5m2_tensor")
_E4M3_B128 = _q("fp8_e4m3_b128")
_E4M3_T128 = _q("fp8_e4m3_t128")
_NVFP4 = _q("nvfp4")  # e2m1, 1x16 blocks, ue4m3 block scale under an fp32 tensor scale
_NVFP4_W = _q("nvfp4_tile16")  # 16x16 tiles: the same codes serve W and W^T
_QUARTET = _q("mxfp4", hadamard=32)  # hadamard(32) then e2m1 b32 e8m0, rne

PRECISION_PRESETS: dict[str, PrecisionPreset] = {
    p.name: p
    for p in (
        PrecisionPreset(
            "bf16",
            _roles(),
            description="no quantization: every GEMM in the training dtype",
        ),
        PrecisionPreset(
            "fp8_tensorwise",
            _roles(_E4M3_T, _E4M3_T, _E5M2_T, _E4M3_T, _E4M3_T, _E5M2_T),
            description="hybrid fp8: e4m3 tensorwise for x and W, e5m2 tensorwise for dy",
        ),
        PrecisionPreset(
            "fp8_rowwise",
            _same(_q("fp8_e4m3_row")),
            description="e4m3 with one pow2 scale per reduction row, every operand",
        ),
        PrecisionPreset(
            "fp8_blockwise",
            _roles(_E4M3_B128, _E4M3_T128, _E4M3_B128, _E4M3_T128, _E4M3_B128, _E4M3_B128),
            description="e4m3: x and dy in 1x128 blocks, W in 128x128 tiles, fp32 scales",
        ),
        PrecisionPreset(
            "mxfp8",
            _same(_q("mxfp8")),
            description="OCP MXFP8: e4m3 in blocks of 32 with an e8m0 scale (floor rule)",
        ),
        PrecisionPreset(
            "mxfp4",
            _same(_q("mxfp4")),
            description="OCP MXFP4: e2m1 in blocks of 32 with an e8m0 scale (floor rule)",
        ),
        PrecisionPreset(
            "nvfp4",
            _roles(
                fwd_x=_NVFP4,
                fwd_w=_NVFP4_W,
                dgrad_dy=_NVFP4.replace(rounding="sr"),
                dgrad_w=_NVFP4_W,
                wgrad_x=_NVFP4.replace(hadamard=16),
                wgrad_dy=_NVFP4.replace(hadamard=16, rounding="sr"),
            ),
            keep_high_precision=("lm_head", "last:15%"),
            description=(
                "NVFP4 training recipe: e2m1 1x16 blocks (W 16x16 tiles), ue4m3 + fp32 "
                "scales; sr on gradients; hadamard(16) on the wgrad operands; last 15% of "
                "blocks in high precision"
            ),
        ),
        PrecisionPreset(
            "quartet-like",
            _roles(
                _QUARTET,
                _QUARTET,
                *([_QUARTET.replace(rounding="sr")] * 4),
            ),
            description=(
                "hadamard(32) then MXFP4 (e2m1 b32 e8m0) everywhere; rne forward, sr for "
                "the dgrad and wgrad operands"
            ),
        ),
        PrecisionPreset(
            "int8_rowwise",
            _same(_q("int8_row")),
            description="int8 with one fp32 scale per reduction row, every operand",
        ),
    )
}


__all__ = [
    "BASE_KEY",
    "GEMMS",
    "GEMM_MODES",
    "HIGH",
    "PRECISION_PRESETS",
    "ROLES",
    "KeepToken",
    "PrecisionPreset",
    "get_preset",
    "keep_blocks",
    "keep_problems",
    "parse_keep_token",
    "precision_problems",
    "preset_to_dict",
    "resolve_precision",
    "spec_from_dict",
    "spec_to_dict",
]
