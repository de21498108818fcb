"""Per-layer densities from a global sparsity target: uniform, global magnitude ranking, ERK."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def _check(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


def uniform_densities(numels: Mapping[str, int], sparsity: float) -> dict[str, float]:
    """Every layer at density 1 − sparsity."""
    _check(sparsity)
    return dict.fromkeys(numels, 1.0 - sparsity)


def erk_densities(shapes: Mapping[str, torch.Size], sparsity: float, power_scale: float = 1.0) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities (Evci et al. 2020; RigL `sparse_utils.get_sparsities_erdos_renyi`).

    density_l = ε·(Σ dims_l / Π dims_l)^power_scale, kernel dims included, with ε solved so that
    Σ density_l·N_l = (1 − S)·Σ N_l. A layer whose density would exceed 1 is made dense and ε re-solved,
    until no layer exceeds 1. `power_scale=0` gives uniform densities.
    """
    _check(sparsity)
    numels = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: (sum(s) / math.prod(s)) ** power_scale for k, s in shapes.items()}
    budget = (1.0 - sparsity) * sum(numels.values())
    dense: set[str] = set()
    while True:
        rest = [k for k in shapes if k not in dense]
        remaining = budget - sum(numels[k] for k in dense)
        denom = sum(raw[k] * numels[k] for k in rest)
        eps = remaining / denom if denom > 0 else 0.0
        over = [k for k in rest if eps * raw[k] > 1.0]
        if not over:
            break
        dense.add(max(over, key=lambda k: raw[k]))  # densify the most over-budget layer first, then re-solve
    return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}


def keep_counts(densities: Mapping[str, float], numels: Mapping[str, int]) -> dict[str, int]:
    """Round per-layer densities to counts whose total is exactly round(Σ density·N) (largest remainder)."""
    exact = {k: densities[k] * numels[k] for k in densities}
    total = round(sum(exact.values()))
    counts = {k: min(numels[k], math.floor(v)) for k, v in exact.items()}
    short = total - sum(counts.values())
    for k in sorted(exact, key=lambda k: exact[k] - math.floor(exact[k]), reverse=True):
        if short <= 0:
            break
        if counts[k] < numels[k]:
            counts[k] += 1
            short -= 1
    return counts


def global_keep_counts(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, int]:
    """Per-layer counts of the K = round((1 − S)·N) largest scores across all layers (exact, by index)."""
    _check(sparsity)
    names = list(scores)
    flat = torch.cat([scores[k].detach().reshape(-1).float() for k in names])
    k = round((1.0 - sparsity) * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.int64, device=flat.device)
    if k > 0:
        chosen[torch.topk(flat, k, sorted=False).indices] = 1
    sizes = [scores[n].numel() for n in names]
    counts = torch.stack([part.sum() for part in torch.split(chosen, sizes)]).tolist()  # one read, not one a layer
    return dict(zip(names, counts, strict=True))
