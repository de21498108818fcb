"""Optimizers and step-based learning-rate schedules built from the config.

Schedules are defined per optimizer step (not per epoch) so that pruning schedules, which are also
counted in optimizer steps, line up with them whatever the epoch length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

_NO_DECAY_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """Split parameters into decayed and undecayed groups.

    Norm-layer parameters and biases are commonly exempt from weight decay (Goyal et al. 2017); they are
    never pruned either, so the split is also where a pruner's masks do not apply.
    """
    if not no_decay_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if isinstance(module, _NO_DECAY_TYPES) or name == "bias" or p.ndim <= 1:
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    params: Iterable,
    name: str,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: Sequence[float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Build `sgd` or `adamw` on the given parameter groups (weight decay is set per group)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas))
    raise ValueError(f"optim.name must be one of sgd, adamw; got {name!r}")


def lr_factor(
    step: int,
    total_steps: int,
    schedule: str,
    warmup_steps: int = 0,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
    min_factor: float = 0.0,
) -> float:
    """Learning-rate multiplier at an optimizer step.

    Args:
        step: Optimizer steps taken so far.
        total_steps: All optimizer steps of the run.
        schedule: `cosine` (after a linear warm-up), `multistep` (×gamma at each milestone, given as fractions
            of all steps) or `constant`.
        warmup_steps: Linear warm-up length in steps (all schedules).
        milestones: Multistep milestones as fractions of all steps.
        gamma: Multistep factor.
        min_factor: Cosine floor as a fraction of the base LR.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "multistep":
        passed = sum(step >= round(m * total_steps) for m in milestones)
        return gamma**passed
    raise ValueError(f"optim.schedule must be one of cosine, multistep, constant; got {schedule!r}")
