"""Downsampling for plots: min-max buckets, so spikes survive; and EMA smoothing."""

from __future__ import annotations

import numpy as np
import pandas as pd


def downsample_indices(y: np.ndarray, n: int) -> np.ndarray:
    """Sorted indices of at most `n` points of `y` (n >= 4): the first and the last,
    and the minimum and maximum of each of (n - 2) // 2 equal-count buckets of the
    points between them (NaN ignored; the first of equal extremes). All indices when
    len(y) <= n."""
    y = np.asarray(y, dtype=np.float64)
    count = len(y)
    if count <= max(n, 2):
        return np.arange(count)
    if n < 4:
        raise ValueError(f"downsample to n={n} points; accepted: n >= 4")
    inner = y[1:-1]  # (count - 2,)
    buckets = min((n - 2) // 2, len(inner))
    bounds = np.linspace(0, len(inner), buckets + 1).astype(np.int64)  # strictly increasing
    starts = bounds[:-1]
    bucket = np.repeat(np.arange(buckets), np.diff(bounds))  # bucket of each inner point
    with np.errstate(invalid="ignore"):
        lows = np.fmin.reduceat(inner, starts)
        highs = np.fmax.reduceat(inner, starts)
    keep = [np.array([0, count - 1])]
    for extreme in (lows, highs):
        hit = np.flatnonzero(inner == extreme[bucket])  # NaN equals nothing; ascending
        owner = bucket[hit]
        first = np.ones(len(hit), dtype=bool)
        first[1:] = owner[1:] != owner[:-1]  # the first hit of each bucket
        keep.append(hit[first] + 1)
    out = np.sort(np.concatenate(keep))
    return out[np.concatenate([[True], out[1:] != out[:-1]])]


def downsample(x, y, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) reduced to at most `n` points by min-max buckets (see downsample_indices):
    the first and last points and every bucket's extremes are kept exactly."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} and {len(y)}")
    keep = downsample_indices(y, n)
    return x[keep], y[keep]


def smooth(y, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing): weight 0 leaves
    `y` as it is, 0.99 smooths hard. NaN points stay NaN and do not poison the rest."""
    y = np.asarray(y, dtype=np.float64)
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight {weight!r}; accepted: a number in [0, 1)")
    if weight == 0 or len(y) == 0:
        return y
    out = pd.Series(y).ewm(alpha=1 - weight, adjust=True, ignore_na=True).mean().to_numpy(copy=True)
    out[np.isnan(y)] = np.nan
    return out
