"""Points and their seeds: which runs are the same configuration run again, what their
spread is, and one colour per point.

Runs whose recipes differ only in `train.seed` (and their names) are replicates of one
point: a sweep with a seed axis, or the same recipe run twice. The report, RunMonitor
and `nblab.compare` group them the same way, by `replicate_key`, and name the group by
the run's point name without its seed part (`preset=bf16,seed=1` -> `preset=bf16`).

A gap between two points is the difference of their mean final val losses. Its
standard error comes from the seed-to-seed spread: paired by seed when both points ran
the same seeds (a seed fixes the initial weights and every batch, so the pair shares
that noise and the difference cancels it), else from the two spreads apart.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from nblab.recipe import dotted_fields

SEED_FIELD = "train.seed"
DEFAULT_SEED = 0  # TrainSection.seed
# matplotlib's tab10 and tab20 (bokeh's Category10 and Category20): the same hex
# strings for the static and the interactive figures
TAB10 = (
    *("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"),
    *("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"),
)
TAB20 = (
    *("#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728"),
    *("#ff9896", "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2"),
    *("#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5"),
)
_SEED_PART = re.compile(r"(?:^|(?<=,))(?:train\.)?seed=[^,]*")


def replicate_key(recipe: Mapping[str, Any]) -> str:
    """What a recipe (its parsed TOML) says apart from its name and its seed."""
    fields = dotted_fields(recipe)
    fields.pop("name", None)
    fields.pop(SEED_FIELD, None)
    return json.dumps(fields, sort_keys=True, default=str)


def seed_of(recipe: Mapping[str, Any]) -> int:
    return recipe.get("train", {}).get("seed", DEFAULT_SEED)


def group_label(name: str) -> str:
    """A point (or run) name without its seed part: "preset=bf16,seed=1" ->
    "preset=bf16", "sweep/seed=1" -> "sweep", "seed=1" -> "seeds"."""
    head, slash, point = name.rpartition("/")
    point = re.sub(r",+", ",", _SEED_PART.sub("", point)).strip(",")
    if point:
        return f"{head}{slash}{point}"
    return head or "seeds"


def group(
    names: Iterable[str],
    recipes: Iterable[Mapping[str, Any]],
    kinds: Iterable[str] | None = None,
) -> list[str]:
    """The group label of each run (names, parsed recipes and run kinds in the same
    order): runs of one kind with one replicate_key share the label of the first of
    them (a merge, whose recipe is its first member's, is never that member's seed). Two
    configurations whose names differ only in the seed part keep their full names apart."""
    names, recipes = list(names), list(recipes)
    kinds = ["train"] * len(names) if kinds is None else list(kinds)
    keys = [f"{kind} {replicate_key(r)}" for kind, r in zip(kinds, recipes, strict=True)]
    labels: dict[str, str] = {}  # replicate key -> label
    for name, key in zip(names, keys, strict=True):
        if key not in labels:
            label = group_label(name)
            while label in labels.values():
                label = name if label != name else f"{name} ({len(labels) + 1})"
            labels[key] = label
    return [labels[k] for k in keys]


def colors(labels: Iterable[str]) -> dict[str, str]:
    """One colour per distinct label, in first-seen order: tab10 up to 10, else tab20
    (which repeats past 20)."""
    distinct = list(dict.fromkeys(labels))
    palette = TAB10 if len(distinct) <= len(TAB10) else TAB20
    return {label: palette[i % len(palette)] for i, label in enumerate(distinct)}


def mean_sd(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, count) of the finite values; sd is NaN for
    fewer than two, mean NaN for none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def gap(point: Mapping[int, float], reference: Mapping[int, float]) -> tuple[float, float, bool]:
    """(gap, its standard error, paired) between two points' values by seed: the mean
    of `point` minus the mean of `reference`. Paired (the mean and spread of the per-seed
    differences) when both have the same seeds, at least two; else unpaired,
    sqrt(sd_a^2 / n_a + sd_b^2 / n_b), NaN when either has fewer than two values."""
    a = {s: v for s, v in point.items() if v is not None and math.isfinite(v)}
    b = {s: v for s, v in reference.items() if v is not None and math.isfinite(v)}
    if not a or not b:
        return math.nan, math.nan, False
    if set(a) == set(b) and len(a) >= 2:
        diffs = [a[s] - b[s] for s in sorted(a)]
        mean, sd, n = mean_sd(diffs)
        return mean, sd / math.sqrt(n), True
    mean_a, sd_a, n_a = mean_sd(a.values())
    mean_b, sd_b, n_b = mean_sd(b.values())
    se = math.sqrt(sd_a**2 / n_a + sd_b**2 / n_b) if n_a > 1 and n_b > 1 else math.nan
    return mean_a - mean_b, se, False
