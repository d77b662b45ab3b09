"""Optimizer and learning-rate schedule from the recipe's [optimizer] and [schedule]."""

from __future__ import annotations

import math

import torch
from torch import nn


def build_optimizer(model: nn.Module, section) -> torch.optim.Optimizer:
    """AdamW (or Adam / SGD). Weight decay only on matrices: norms, biases and
    embeddings' 1-D parameters are left alone, as nanoGPT does."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": section.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # an empty group (LoRA trains only matrices) would break loading optimizer state by
    # parameter name (torch's flattened state dict names a group by its first parameter)
    groups = [g for g in groups if g["params"]]
    if section.name == "adamw":
        return torch.optim.AdamW(groups, lr=section.lr, betas=tuple(section.betas), eps=section.eps)
    if section.name == "adam":
        return torch.optim.Adam(groups, lr=section.lr, betas=tuple(section.betas), eps=section.eps)
    if section.name == "sgd":
        return torch.optim.SGD(groups, lr=section.lr, momentum=section.betas[0])
    raise ValueError(f"optimizer.name={section.name!r}; accepted: adamw, adam, sgd")


def lr_factor(step: int, steps: int, section) -> float:
    """Multiplier of the peak lr before optimizer step `step` (0-based): linear
    warmup to 1, then cosine / linear decay to min_lr_ratio, or constant."""
    warmup = section.warmup_steps
    if warmup and step < warmup:
        return (step + 1) / warmup
    if section.decay == "constant" or steps <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, steps - warmup - 1))
    floor = section.min_lr_ratio
    if section.decay == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(optimizer, steps: int, section) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, section))
