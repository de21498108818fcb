"""Granularity strategies: how a target sparsity becomes masks (unstructured, N:M, coupled channels).

Every method calls the same strategy, so "prune to sparsity s under the configured granularity and allocation"
is written once: GMP, IMP and GraNet's global prune go through `Granularity.prune`, PDP's hardening uses the
same top-k, and channel scores are `ChannelGroup.scores` everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from sparsetrain.allocation import erk_densities, global_keep_counts, keep_counts
from sparsetrain.granularity import (
    ChannelGroup,
    build_channel_groups,
    nm_compatible,
    nm_mask,
    normalize_group_scores,
    topk_mask,
)

if TYPE_CHECKING:
    from sparsetrain.masking import MaskSet


def layer_list(names: list[str], shown: int = 3) -> str:
    """`a, b, c ... and K more`: a few layer names of a long list, for a one-line message."""
    more = f" ... and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def left_dense_text(skipped: dict[str, str], granularity: str, shown: int = 3) -> str:
    """The warning for layers a granularity leaves dense (name → reason): their count, why, a few names."""
    reasons = sorted(set(skipped.values()))
    why = reasons[0] if len(reasons) == 1 else f"{len(reasons)} reasons, e.g. {reasons[0]}"
    count = f"{len(skipped)} layer{'s' if len(skipped) != 1 else ''}"
    return f"sparsetrain: {count} left dense ({granularity}: {why}): {layer_list(list(skipped), shown)}"


class Granularity:
    """One granularity: which layers it applies to, what else it masks, and how it prunes.

    Args:
        allocation: `uniform`, `global` or `erk` (how a global target is split across layers or groups).
    """

    name = "unstructured"

    def __init__(self, allocation: str) -> None:
        self.allocation = allocation
        self.groups: list[ChannelGroup] = []

    def select(
        self, model: nn.Module, targets: dict[str, nn.Module], example_input: torch.Tensor | None
    ) -> tuple[dict[str, nn.Module], dict[str, str], list[str]]:
        """The targets it keeps, the ones it skips (name → reason), and extra parameters to mask."""
        return targets, {}, []

    def prune(self, masks: MaskSet, weights: dict[str, str], scores: dict[str, torch.Tensor], sparsity: float) -> None:
        """Set the masks of `weights` so they reach `sparsity`, keeping the highest `scores`."""
        for fqn, k in self.keep_counts(scores, sparsity).items():
            masks.set(fqn, topk_mask(scores[fqn], k))

    def keep_counts(self, scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, int]:
        """Active weights per layer for a global sparsity under the allocation."""
        if self.allocation == "global":
            return global_keep_counts(scores, sparsity)
        numels = {fqn: s.numel() for fqn, s in scores.items()}
        if self.allocation == "erk":
            densities = erk_densities({f: s.shape for f, s in scores.items()}, sparsity)
        else:
            densities = dict.fromkeys(numels, 1.0 - sparsity)
        return keep_counts(densities, numels)


class Unstructured(Granularity):
    """Exact top-k over single weights."""


class NM(Granularity):
    """Exactly `keep` of every `m` consecutive weights along the input dimension; `keep` follows the schedule
    from m (dense) to n at the final sparsity 1 − n/m."""

    name = "nm"

    def __init__(self, allocation: str, n: int, m: int) -> None:
        super().__init__(allocation)
        self.n, self.m = n, m

    def select(self, model, targets, example_input):
        kept, skipped = {}, {}
        for name, module in targets.items():
            if nm_compatible(module.weight, self.m):
                kept[name] = module
            else:
                skipped[name] = f"input dim not divisible by {self.m}"
        if not kept:
            raise ValueError(
                f"N:M {self.n}:{self.m} applies to no targeted layer (input dim not divisible by {self.m}): "
                f"{layer_list(list(skipped))}"
            )
        return kept, skipped, []

    def keep_per_group(self, fraction: float) -> int:
        """Weights kept per group of m at `fraction` of the final sparsity (m at 0, n at 1)."""
        return self.m - round((self.m - self.n) * fraction)

    def prune(self, masks, weights, scores, sparsity):
        final = 1.0 - self.n / self.m
        keep = self.keep_per_group(sparsity / final if final > 0 else 1.0)
        for fqn, s in scores.items():
            masks.set(fqn, nm_mask(s, keep, self.m))


class Channel(Granularity):
    """Output channels in coupled groups (Torch-Pruning's dependency graph); `sparsity` = fraction of channels.

    `global` allocation ranks filter scores normalised per group (Torch-Pruning's mean normaliser) across all
    groups, every group keeping at least one channel; `uniform` prunes each group to the same fraction.
    """

    name = "channel"

    def __init__(self, allocation: str) -> None:
        if allocation == "erk":
            raise ValueError("allocation=erk is defined for weights, not channels; use uniform or global")
        super().__init__(allocation)

    def select(self, model, targets, example_input):
        if example_input is None:
            raise ValueError("channel granularity needs an example input to trace the model's channel coupling")
        self.groups = build_channel_groups(model, example_input, set(targets))
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
        """Write the channel keep-masks into every coupled parameter's mask."""
        new = {fqn: torch.ones_like(m) for fqn, m in masks.masks.items()}
        for g, keep in zip(self.groups, keeps, strict=True):
            g.expand(keep, new)
        for fqn, mask in new.items():
            masks.set(fqn, mask)

    def prune(self, masks, weights, scores, sparsity):
        self.expand(masks, self.keep_channels(self.group_scores(masks), sparsity))

    def channel_sparsity(self, masks: MaskSet) -> float:
        """Fraction of output channels removed over the prunable groups."""
        total = sum(g.size for g in self.groups)
        alive = sum(int(self.alive(masks, g).sum()) for g in self.groups)
        return 1.0 - alive / total if total else 0.0


def make_granularity(name: str, allocation: str, n: int, m: int) -> Granularity:
    """The strategy for a `granularity` key."""
    if name == "nm":
        return NM(allocation, n, m)
    if name == "channel":
        return Channel(allocation)
    return Unstructured(allocation)


__all__ = ["NM", "Channel", "Granularity", "Unstructured", "layer_list", "left_dense_text", "make_granularity"]
