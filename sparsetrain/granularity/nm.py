"""N:M: exactly n of every m consecutive weights along the input dimension (2:4 for sparse tensor cores)."""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsetrain.granularity.base import Granularity, layer_list, register_granularity
from sparsetrain.granularity.soft import WeightSoftMasks, _quantiles, spread


def nm_group_view(weight_like: torch.Tensor, m: int) -> torch.Tensor:
    """(num_groups, m) view of a weight's N:M groups: `m` consecutive entries along the input dimension.

    Linear (out, in): consecutive along `in` within each row, the layout of 2:4 semi-structured kernels
    (`torch.sparse.to_sparse_semi_structured`). Conv (out, in, kh, kw): permuted to (out, kh, kw, in) and
    grouped along `in` at each kernel position, NVIDIA ASP's layout for implicit-GEMM convolutions.
    """
    t = weight_like
    if t.ndim > 2:
        t = t.permute(0, *range(2, t.ndim), 1)
    return t.contiguous().reshape(-1, m)


def nm_ungroup(grouped: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of `nm_group_view`."""
    if len(shape) > 2:
        permuted = (shape[0], *shape[2:], shape[1])
        t = grouped.reshape(permuted)
        return t.permute(0, len(shape) - 1, *range(1, len(shape) - 1)).contiguous()
    return grouped.reshape(shape)


def nm_compatible(weight: torch.Tensor, m: int) -> bool:
    """Whether the input dimension (in_channels/groups for convs) is divisible by m."""
    return weight.ndim >= 2 and weight.shape[1] % m == 0


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask keeping exactly the `n` largest scores in every group of `m` (see `nm_group_view`)."""
    if not nm_compatible(scores, m):
        raise ValueError(f"N:M with m={m} needs an input dimension divisible by {m}, got shape {tuple(scores.shape)}")
    groups = nm_group_view(scores.detach().float(), m)
    n = max(0, min(n, m))
    mask = torch.zeros_like(groups, dtype=torch.bool)
    if n > 0:
        mask.scatter_(1, torch.topk(groups, n, dim=1, sorted=False).indices, True)
    return nm_ungroup(mask, scores.shape)


@register_granularity("nm")
class NM(Granularity):
    """Exactly `keep` of every `m` consecutive weights along the input dimension; `keep` follows the schedule
    from m (dense) to n at the final sparsity 1 − n/m."""

    random_start = False  # a random mask is not N:M: the pattern is reached by the schedule from dense

    def __init__(self, allocation: str, n: int, m: int) -> None:
        super().__init__(allocation)
        self.n, self.m = n, m

    @classmethod
    def build(cls, allocation: str, n: int, m: int) -> NM:
        return cls(allocation, n, m)

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
        self.apply(masks, scores, self.decide(list(scores.values()), sparsity))

    def decide(self, scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
        final = 1.0 - self.n / self.m
        keep = self.keep_per_group(sparsity / final if final > 0 else 1.0)
        return [nm_mask(s, keep, self.m) for s in scores]

    def swap(self, active: torch.Tensor, magnitude: torch.Tensor, grow: torch.Tensor, n: int) -> torch.Tensor:
        """Drop the n weakest active weights of the layer, then regrow inside each group as many as it lost."""
        a = nm_group_view(active, self.m)
        mag = nm_group_view(magnitude, self.m)
        g = nm_group_view(grow, self.m)
        drop_scores = torch.where(a, mag, torch.full_like(mag, math.inf)).reshape(-1)
        dropped = torch.zeros_like(drop_scores, dtype=torch.bool)
        dropped[torch.topk(drop_scores, n, largest=False).indices] = True
        dropped = dropped.reshape(a.shape)
        lost = dropped.sum(dim=1, keepdim=True)
        after_drop = a & ~dropped
        candidates = torch.where(after_drop, torch.full_like(g, -math.inf), g)
        order = candidates.argsort(dim=1, descending=True, stable=True)
        rank = order.argsort(dim=1)
        regrown = rank < lost
        return nm_ungroup(after_drop | regrown, active.shape)

    def soft_masks(self, model: nn.Module, targets: dict[str, nn.Module], gain: float) -> NMSoftMasks:
        return NMSoftMasks(model, targets, gain, self.n, self.m)


class NMSoftMasks(WeightSoftMasks):
    """PDP's soft mask per N:M group: t per group of m between its keep-th and (keep+1)-th largest magnitude,
    τ relative to the median gap between them; every layer prunes the same fraction (the pattern fixes it)."""

    per_entry, allocated = True, False

    def __init__(self, model: nn.Module, targets: dict[str, nn.Module], gain: float, n: int, m: int) -> None:
        super().__init__(model, targets, gain)
        self.n, self.m = n, m

    def keep(self, budget: float, fraction: float, numel: int) -> int:
        return self.m - round((self.m - self.n) * fraction)  # per group of m

    def threshold(self, magnitude: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        groups = nm_group_view(magnitude, self.m)
        if keep >= self.m:
            return torch.full_like(magnitude, -1.0), torch.ones_like(magnitude, dtype=torch.bool)
        values, index = groups.sort(dim=1, descending=True, stable=True)
        t = 0.5 * (values[:, keep - 1] + values[:, keep])
        hard = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, index[:, :keep], True)
        t_full = t.unsqueeze(1).expand_as(groups)
        return nm_ungroup(t_full, magnitude.shape), nm_ungroup(hard, magnitude.shape)

    def scale(self, magnitude: torch.Tensor, keep: int) -> torch.Tensor:
        return nm_gap_spread(magnitude, self.m, keep)


def nm_gap_spread(magnitude: torch.Tensor, m: int, keep: int) -> torch.Tensor:
    """Median over the N:M groups of the gap between the smallest kept and the largest pruned w².

    Each group's t² lies inside its own gap, so this is the scale that separates a group's kept weights from
    its pruned ones; the spread of w² over the whole layer is several times larger.
    """
    if not 0 < keep < m:
        return spread(magnitude**2)
    values = nm_group_view(magnitude.float(), m).sort(dim=1, descending=True).values
    gap = values[:, keep - 1] ** 2 - values[:, keep] ** 2
    median = _quantiles(gap, (0.5,))[0]
    return torch.where(median > 0, median, spread(magnitude**2))
