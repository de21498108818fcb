"""LAPP's FLOPs arithmetic: the network's FLOPs as a function of each coupled channel group's kept fraction,
the per-group density floor that fits the budget, and the projection of keep-masks onto the budget.

Bookkeeping over the groups only (no thresholds, no training), kept apart so the pruner holds what it learns
and this module what the budget allows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sparsetrain.accounting import module_flops
from sparsetrain.targets import candidate_layers

if TYPE_CHECKING:
    from sparsetrain.granularity.channel_groups import ChannelGroup


class GroupFlops:
    """F(kept)/F_dense = (Σ_layers F_l·kept_in·kept_out + F_other)/F_dense over the conv/linear layers.

    kept_in and kept_out are the kept fractions of the groups a layer reads and produces (1 where no group
    touches it); F_other is what no layer term counts (BN, pooling, ...); the bypasses are summed apart.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, groups: list[ChannelGroup], dense_flops: float):
        """Each conv/linear layer's dense FLOPs and the groups of its input and output channels."""
        _, per_module = module_flops(model, example)
        out_group, in_group = {}, {}
        for gi, group in enumerate(groups):
            for piece in group.slices:
                layer, _, pname = piece.param.rpartition(".")
                if pname == "weight":
                    (out_group if piece.dim == 0 else in_group)[layer] = gi
        self.terms: list[tuple[float, int | None, int | None, bool]] = []
        layers_total = 0.0
        for name in candidate_layers(model):
            flops = float(per_module.get(name, 0))
            layers_total += flops
            self.terms.append((flops, in_group.get(name), out_group.get(name), ".bypass_" in name))
        bypass = sum(f for f, *_, is_bypass in self.terms if is_bypass)
        self.dense_flops = dense_flops
        self.other_flops = max(0.0, dense_flops - (layers_total - bypass))
        self.sizes = [g.size for g in groups]

    def ratio(self, kept: list, bypass: bool = False) -> Any:
        """Σ_layers F_l·kept_in·kept_out (+ the layers no group touches) over the dense FLOPs, from the kept
        fraction of every group (floats, or tensors carrying gradients); `bypass`: the bypasses' FLOPs only."""
        total = 0.0 if bypass else self.other_flops
        for flops, gin, gout, is_bypass in self.terms:
            if is_bypass == bypass and flops:
                kept_in = kept[gin] if gin is not None else 1.0
                total = total + flops * kept_in * (kept[gout] if gout is not None else 1.0)
        return total / self.dense_flops

    def floors_for(self, keep: float) -> list[int]:
        """Channels kept per group by a floor of `keep` (at least one: the network stays connected)."""
        return [max(1, math.ceil(keep * size)) for size in self.sizes]

    def floor_ratio(self, floors: list[int]) -> float:
        """The FLOPs ratio of a network keeping exactly `floors` channels per group."""
        return self.ratio([f / size for f, size in zip(floors, self.sizes, strict=True)])

    def fit_floor(self, min_keep: float, max_ratio: float) -> tuple[float, list[int], str | None]:
        """The floor in effect, its channels per group, and a warning when it had to be lowered: the budget is
        the constraint, the floor a preference, so a floor above the budget drops to the highest that fits."""
        floors = self.floors_for(min_keep)
        if self.floor_ratio(self.floors_for(0.0)) > max_ratio + 1e-9:
            return (
                0.0,
                self.floors_for(0.0),
                f"LAPP: one channel per coupled group already keeps {self.floor_ratio(self.floors_for(0.0)):.3f} "
                f"of the dense FLOPs, above max_flops_ratio={max_ratio:g}: the budget cannot be met",
            )
        if min_keep > 0 and self.floor_ratio(floors) > max_ratio + 1e-9:
            low, high = 0.0, min_keep
            for _ in range(30):
                mid = (low + high) / 2
                fits = self.floor_ratio(self.floors_for(mid)) <= max_ratio
                low, high = (mid, high) if fits else (low, mid)
            return (
                low,
                self.floors_for(low),
                f"LAPP: min_keep={min_keep:g} keeps {self.floor_ratio(floors):.3f} of the dense FLOPs, "
                f"above max_flops_ratio={max_ratio:g}; this network's floor is lowered to {low:.3f}",
            )
        return min_keep, floors, None

    @torch.no_grad()
    def project(
        self, keeps: list[torch.Tensor], margins: list[torch.Tensor], floors: list[int], max_ratio: float
    ) -> list[torch.Tensor]:
        """Keep-masks meeting `max_ratio` exactly: drop the lowest-margin channels while over it (never below a
        group's floor), then restore the highest-margin dropped ones while one more still fits."""
        keeps = [k.clone().cpu() for k in keeps]
        order = sorted(
            ((float(m[c]), gi, c) for gi, m in enumerate(margins) for c in range(len(m))), key=lambda x: x[0]
        )

        def ratio() -> float:
            return self.ratio([float(k.sum()) / size for k, size in zip(keeps, self.sizes, strict=True)])

        for _, gi, c in order:  # lowest margin first
            if ratio() <= max_ratio:
                break
            if keeps[gi][c] and keeps[gi].sum() > floors[gi]:
                keeps[gi][c] = False
        for _, gi, c in reversed(order):  # highest margin first
            if keeps[gi][c]:
                continue
            keeps[gi][c] = True
            if ratio() > max_ratio:
                keeps[gi][c] = False
        return keeps


__all__ = ["GroupFlops"]
