"""Channels: coupled output channels from Torch-Pruning's dependency graph, so that masking a group is exactly
equivalent to removing those channels physically (residual adds, BN, depthwise convs, concatenations)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from sparsetrain.granularity.base import Granularity, register_granularity, topk_mask
from sparsetrain.granularity.channel_groups import ChannelGroup, build_channel_groups, normalize_group_scores
from sparsetrain.granularity.channel_soft import ChannelSoftMasks

if TYPE_CHECKING:
    from sparsetrain.masking import MaskSet


@register_granularity("channel")
class Channel(Granularity):
    """Output channels in coupled groups (Torch-Pruning's dependency graph); `sparsity` = fraction of channels.

    `global` allocation ranks filter scores normalised per group (Torch-Pruning's mean normaliser) across all
    groups, every group keeping at least one channel; `uniform` prunes each group to the same fraction.
    """

    row_masked = True  # producer rows (and their biases and norms) carry the mask; consumers read zeros

    def __init__(self, allocation: str) -> None:
        if allocation == "erk":
            raise ValueError("allocation=erk is defined for weights, not channels; use uniform or global")
        super().__init__(allocation)
        self._slice_cache: dict = {}

    def select(self, model, targets, example_input):
        if example_input is None:
            raise ValueError("channel granularity needs an example input to trace the model's channel coupling")
        self.groups = build_channel_groups(model, example_input, set(targets))
        self._slice_cache = {}
        if not self.groups:
            raise ValueError("no prunable channel group: every group is coupled to a layer kept dense")
        extra = sorted({p for g in self.groups for p in g.group_params()} - {f"{n}.weight" for n in targets})
        return targets, {}, extra

    def alive(self, masks: MaskSet, group: ChannelGroup) -> torch.Tensor:
        """Channels of a group still active (its first producer's rows not all zero)."""
        first = group.slices[0]
        rows = masks.mask(first.param).movedim(first.dim, 0)
        index = first.index if first.index.ndim == 1 else first.index[:, 0]
        return rows.reshape(rows.shape[0], -1)[index.to(rows.device)].any(dim=1)

    def group_scores(self, masks: MaskSet) -> list[torch.Tensor]:
        """Per group, normalised channel scores of the masked weights, pruned channels ranked last."""
        live = masks.masks
        params = {fqn: p.detach() * live[fqn] for fqn, p in masks.params.items()}
        out = []
        for g in self.groups:
            alive = self.alive(masks, g)
            s = normalize_group_scores(g.scores(params).detach().float(), alive)
            out.append(torch.where(alive, s, torch.full_like(s, -1.0)))
        return out

    def keep_channels(self, scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
        """Bool keep-masks per group for a fraction `sparsity` of channels removed."""
        if self.allocation == "global":
            flat = torch.cat(scores)
            chosen = topk_mask(flat, max(len(self.groups), round((1.0 - sparsity) * flat.numel())))
            keeps = list(torch.split(chosen, [g.size for g in self.groups]))
        else:
            keeps = [
                topk_mask(s, max(1, round((1.0 - sparsity) * g.size))) for g, s in zip(self.groups, scores, strict=True)
            ]
        return [k if k.any() else topk_mask(s, 1) for k, s in zip(keeps, scores, strict=True)]  # stay connected

    def expand(self, masks: MaskSet, keeps: list[torch.Tensor]) -> None:
        """Write the channel keep-masks into every coupled parameter's mask (no host sync: a keep vector per
        parameter and dimension, multiplied out)."""
        device = keeps[0].device if keeps else None
        vectors: dict[tuple[str, int], torch.Tensor] = {}
        for fqn, pieces in self._slices(device).items():
            mask = masks.mask(fqn)
            for gi, dim, index, root in pieces:
                v = vectors.get((fqn, dim))
                if v is None:
                    v = vectors[(fqn, dim)] = torch.ones(mask.shape[dim], dtype=mask.dtype, device=device)
                v[index] = keeps[gi][root].to(v.dtype)
        for fqn in masks.fqns:
            mask = masks.mask(fqn)
            new = torch.ones_like(mask)
            for (name, dim), v in vectors.items():
                if name == fqn:
                    shape = [1] * mask.ndim
                    shape[dim] = -1
                    new = new * v.to(mask.device).view(shape)
            mask.copy_(new)

    def _slices(self, device: torch.device | None) -> dict[str, list[tuple[int, int, torch.Tensor, torch.Tensor]]]:
        """Channel slices by parameter, index tensors on `device` (built once per device: no copy per step)."""
        cache = self._slice_cache
        if device not in cache:
            out: dict[str, list] = {}
            for gi, g in enumerate(self.groups):
                for piece in g.slices:
                    out.setdefault(piece.param, []).append(
                        (gi, piece.dim, piece.index.to(device), piece.root.to(device))
                    )
            cache[device] = out
        return cache[device]

    # -------------------------------------------------------- decisions over units: one score per channel
    def unit_keys(self, weights: dict[str, str]) -> list[str]:
        return [f"{i}:{g.name}" for i, g in enumerate(self.groups)]

    def unit_scores(self, masks: MaskSet, weights: dict[str, str]) -> list[torch.Tensor]:
        """Each channel's producer-filter L2 norm over its group's mean (comparable across groups)."""
        return [normalize_group_scores(g.scores(masks.params).sqrt()) for g in self.groups]

    def forward_masked(self, weights: dict[str, str]) -> list[str]:
        """The output side of every group (producer rows, their biases and norms): a consumer's columns of a
        pruned channel then read exact zeros."""
        return sorted({piece.param for g in self.groups for piece in g.slices if piece.dim == 0})

    def to_units(self, per_entry: dict[str, torch.Tensor], weights: dict[str, str]) -> list[torch.Tensor | None]:
        """Per channel: the sum of the values over its output-side entries; None for a group nothing reached."""
        units: list[torch.Tensor | None] = [None] * len(self.groups)
        for fqn, value in per_entry.items():
            rows = value.reshape(value.shape[0], -1).sum(1)
            for gi, dim, index, root in self._slices(value.device).get(fqn, ()):
                if dim == 0:
                    if units[gi] is None:
                        units[gi] = torch.zeros(self.groups[gi].size, dtype=rows.dtype, device=rows.device)
                    units[gi].index_add_(0, root, rows[index])
        return units

    def decide(self, scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
        return self.keep_channels(scores, sparsity)

    def apply(self, masks: MaskSet, weights: dict[str, str], keeps: list[torch.Tensor]) -> None:
        self.expand(masks, keeps)

    def prune(self, masks, weights, scores, sparsity):
        self.expand(masks, self.keep_channels(self.group_scores(masks), sparsity))

    def channel_sparsity(self, masks: MaskSet) -> float:
        """Fraction of output channels removed over the prunable groups."""
        total = sum(g.size for g in self.groups)
        alive = sum(int(self.alive(masks, g).sum()) for g in self.groups)
        return 1.0 - alive / total if total else 0.0

    def metrics(self, masks: MaskSet) -> dict[str, float]:
        return {"channel_sparsity": self.channel_sparsity(masks)}

    def soft_masks(self, model: nn.Module, targets: dict[str, nn.Module], gain: float) -> ChannelSoftMasks:
        """PDP's soft mask per channel, on every output-side slice of each group."""
        return ChannelSoftMasks(model, self.groups, gain)
