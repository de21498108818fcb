"""Unstructured: single weights, exact top-k per layer or across layers (the allocation)."""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsetrain.granularity.base import Granularity, register_granularity
from sparsetrain.granularity.soft import WeightSoftMasks


@register_granularity("unstructured")
class Unstructured(Granularity):
    """Exact top-k over single weights."""

    @staticmethod
    def swap(active: torch.Tensor, magnitude: torch.Tensor, grow: torch.Tensor, n: int) -> torch.Tensor:
        """Drop the `n` weakest active weights of a layer and regrow the `n` best-growing inactive ones."""
        flat_active = active.reshape(-1)
        drop_scores = torch.where(flat_active, magnitude.reshape(-1), torch.full_like(magnitude.reshape(-1), math.inf))
        dropped = torch.topk(drop_scores, n, largest=False).indices
        after_drop = flat_active.clone()
        after_drop[dropped] = False
        grow_scores = torch.where(after_drop, torch.full_like(drop_scores, -math.inf), grow.reshape(-1))
        grown = torch.topk(grow_scores, n, largest=True).indices
        after_drop[grown] = True
        return after_drop.reshape(active.shape)

    def soft_masks(self, model: nn.Module, targets: dict[str, nn.Module], gain: float) -> WeightSoftMasks:
        """PDP's soft mask on every targeted weight."""
        return WeightSoftMasks(model, targets, gain)
