"""Merging methods on state dicts ({parameter name: tensor}), one function per paper.

Every function takes the members' weights (and the base they were fine-tuned from, where
the method works on task vectors tau_i = theta_i - theta_base) and returns the merged
weights in fp32. Non-float entries (integer buffers) are taken from the first member.
The methods that need the members' val loss or their Fisher (greedy, fisher) take them as
arguments: nblab.merge.run measures both on the same val batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

State = dict[str, torch.Tensor]


def _float(t: torch.Tensor) -> bool:
    return t.is_floating_point()


def uniform(states: Sequence[State]) -> State:
    """The uniform soup: the mean of the members' weights (Wortsman et al. 2022, "Model
    soups: averaging weights of multiple fine-tuned models improves accuracy without
    increasing inference time", Recipe "uniform soup")."""
    first = states[0]
    out = {}
    for key, value in first.items():
        if not _float(value):
            out[key] = value.clone()
            continue
        # summed in fp64: n equal fp32 values sum exactly, so their mean is that value
        total = torch.zeros_like(value, dtype=torch.float64)
        for s in states:
            total += s[key].double()
        out[key] = (total / len(states)).float()
    return out


def greedy(
    states: Sequence[State], val_loss: Sequence[float], evaluate: Callable[[State], float]
) -> tuple[State, list[int], float]:
    """The greedy soup (Wortsman et al. 2022, Algorithm 1 "GreedySoup"): order the members
    by held-out val loss, best first; start the soup with the best; add each next member if
    the uniform soup with it is no worse on held-out val than the soup without it (the
    paper's ValAcc(soup + i) >= ValAcc(soup), in loss). Returns (soup, indices of the
    members taken, the soup's val loss). By construction its val loss is at most the best
    member's."""
    order = sorted(range(len(states)), key=lambda i: val_loss[i])
    taken = [order[0]]
    best = float(val_loss[order[0]])
    soup = uniform([states[order[0]]])
    for i in order[1:]:
        candidate = uniform([states[j] for j in [*taken, i]])
        loss = evaluate(candidate)
        if loss <= best:
            taken, best, soup = [*taken, i], loss, candidate
    return soup, taken, best


def task_vectors(base: State, states: Sequence[State]) -> list[State]:
    """tau_i = theta_i - theta_base over the float entries (Ilharco et al. 2023)."""
    return [{k: s[k].float() - base[k].float() for k in base if _float(base[k])} for s in states]


def _apply(base: State, first: State, delta: State, lam: float) -> State:
    out = {}
    for key, value in first.items():
        if key in delta:
            out[key] = base[key].float() + lam * delta[key]
        else:
            out[key] = value.clone()
    return out


def task_arithmetic(base: State, states: Sequence[State], lam: float) -> State:
    """Task arithmetic (Ilharco et al. 2023, "Editing models with task arithmetic", §2):
    theta = theta_base + lam * sum_i tau_i, lam chosen in [0, 1] in the paper. With lam = 1/n
    it is the uniform soup of the members."""
    taus = task_vectors(base, states)
    total = {k: torch.stack([t[k] for t in taus]).sum(0) for k in taus[0]}
    return _apply(base, states[0], total, lam)


def ties_vectors(taus: Sequence[State], density: float) -> State:
    """TIES-merging's three steps on task vectors (Yadav et al. 2023, "TIES-Merging:
    Resolving interference when merging models", Algorithm 1):
      1. trim: keep the top `density` fraction of each task vector's entries by magnitude
         (over the whole flattened vector, as the paper's code does), zero the rest;
      2. elect: the sign of each entry is the sign of the trimmed vectors' sum
         (the direction with the most total mass);
      3. disjoint merge: the mean of the trimmed entries that agree with that sign
         (entries trimmed to zero do not count; no agreeing entry gives 0).
    Returns the merged task vector tau_m (theta = theta_base + lam * tau_m)."""
    keys = list(taus[0])
    trimmed = []
    for tau in taus:
        flat = torch.cat([tau[k].flatten() for k in keys])
        keep = max(1, round(density * flat.numel()))
        # the keep-th largest magnitude; entries at least as large stay (ties stay too)
        threshold = flat.abs().kthvalue(flat.numel() - keep + 1).values
        trimmed.append({k: torch.where(tau[k].abs() >= threshold, tau[k], 0.0) for k in keys})
    out = {}
    for k in keys:
        stacked = torch.stack([t[k] for t in trimmed])  # (n, ...)
        sign = torch.sign(stacked.sum(0))
        agree = (torch.sign(stacked) == sign) & (stacked != 0)
        count = agree.sum(0)
        total = torch.where(agree, stacked, 0.0).sum(0)
        out[k] = torch.where(count > 0, total / count.clamp(min=1), 0.0)
    return out


def ties(base: State, states: Sequence[State], *, density: float, lam: float) -> State:
    """TIES-merging (Yadav et al. 2023): theta_base + lam * ties_vectors(tau, density); the
    paper's defaults are density 0.2 (top 20%) and lam 1."""
    return _apply(base, states[0], ties_vectors(task_vectors(base, states), density), lam)


def dare_vectors(taus: Sequence[State], p: float, seed: int) -> list[State]:
    """DARE (Yu et al. 2024, "Language models are Super Mario: absorbing abilities from
    homologous models as a free lunch", §3): drop each entry of each task vector with
    probability p and rescale the kept ones by 1 / (1 - p), so each entry keeps its
    expectation. A seeded generator draws the masks (p = 0 keeps every entry)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for tau in taus:
        kept = {}
        for k, v in tau.items():
            keep = torch.rand(v.shape, generator=generator) >= p
            kept[k] = torch.where(keep.to(v.device), v / (1 - p), 0.0)
        out.append(kept)
    return out


def dare(
    base: State,
    states: Sequence[State],
    *,
    p: float,
    then: str,
    lam: float,
    density: float,
    seed: int,
) -> State:
    """DARE then task arithmetic (then="task-arithmetic") or TIES (then="ties"), as Yu et al.
    2024 combine them: the dropped and rescaled task vectors are merged by that method."""
    taus = dare_vectors(task_vectors(base, states), p, seed)
    if then == "ties":
        return _apply(base, states[0], ties_vectors(taus, density), lam)
    total = {k: torch.stack([t[k] for t in taus]).sum(0) for k in taus[0]}
    return _apply(base, states[0], total, lam)


def fisher(states: Sequence[State], fishers: Sequence[State], *, floor: float = 1e-8) -> State:
    """Fisher-weighted averaging (Matena & Raffel 2022, "Merging models with Fisher-weighted
    averaging", eq. 3 with diagonal Fishers): theta_j = sum_i F_ij theta_ij / sum_i F_ij.
    `fishers` are the members' diagonal Fishers (squared gradients); each gets `floor`
    times the mean Fisher of all members added, so an entry no member's Fisher weighs
    falls back to the uniform mean (the paper's code floors the Fisher likewise)."""
    scale = float(
        torch.stack([torch.cat([f.flatten() for f in F.values()]).mean() for F in fishers]).mean()
    )
    eps = floor * scale if scale > 0 else floor
    out = {}
    for key, value in states[0].items():
        if key not in fishers[0]:
            out[key] = value.clone()
            continue
        weights = [F[key].float() + eps for F in fishers]
        total = sum(w * s[key].float() for w, s in zip(weights, states, strict=True))
        out[key] = total / sum(weights)
    return out


__all__ = [
    "State",
    "dare",
    "dare_vectors",
    "fisher",
    "greedy",
    "task_arithmetic",
    "task_vectors",
    "ties",
    "ties_vectors",
    "uniform",
]
