"""What every granularity does: choose its targets, turn scores into masks at its grain (top-k under an
allocation), and report. A granularity is one file in this package with a `@register_granularity` class."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from sparsetrain.allocation import erk_densities, global_keep_counts, keep_counts

if TYPE_CHECKING:
    from sparsetrain.masking import MaskSet

REGISTRY: dict[str, type[Granularity]] = {}


def register_granularity(name: str):
    """Class decorator adding a granularity under `name` (the `pruner.granularity` value; the file's name)."""

    def wrap(cls: type[Granularity]) -> type[Granularity]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask with exactly `keep` True entries at the largest scores (ties broken by index)."""
    flat = scores.detach().reshape(-1)
    keep = max(0, min(int(keep), flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        mask[torch.topk(flat.float(), keep, sorted=False).indices] = True
    return mask.reshape(scores.shape)


def global_topk(scores: list[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Bool masks of the `keep` largest entries over all `scores` together (exact, by index, no host sync).

    Selects the smaller side: the `keep` largest, or the n − `keep` smallest to drop.
    """
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    n = flat.numel()
    if keep * 2 <= n:
        chosen = torch.zeros(n, dtype=torch.bool, device=flat.device)
        if keep > 0:
            chosen.index_fill_(0, torch.topk(flat, keep, sorted=False).indices, True)
    else:
        chosen = torch.ones(n, dtype=torch.bool, device=flat.device)
        if keep < n:
            chosen.index_fill_(0, torch.topk(flat, n - keep, largest=False, sorted=False).indices, False)
    parts = torch.split(chosen, [s.numel() for s in scores])
    return [part.view(s.shape) for part, s in zip(parts, scores, strict=True)]


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
    """One granularity: which layers it applies to, what else it masks, how scores become masks at its grain.

    Args:
        allocation: `uniform`, `global` or `erk` (how a global target is split across layers or groups).
    """

    name: ClassVar[str] = "base"
    random_start: ClassVar[bool] = True  # a random sparse mask is a valid start (sparse-to-sparse methods)
    row_masked: ClassVar[bool] = False  # a hard mask in the forward multiplies output rows only (channel)

    def __init__(self, allocation: str) -> None:
        self.allocation = allocation
        self.groups: list = []  # coupled channel groups (`channel`); empty for the others

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

    # -------------------------------------------------------- decisions over units (a method's own scores, BiP)
    def unit_keys(self, weights: dict[str, str]) -> list[str]:
        """One score tensor per decision unit, by key: per weight (its FQN) here."""
        return list(weights)

    def unit_scores(self, masks: MaskSet, weights: dict[str, str]) -> list[torch.Tensor]:
        """Each unit's magnitude: |w| per weight here."""
        return [masks.param(fqn).detach().abs().float() for fqn in weights]

    def forward_masked(self, weights: dict[str, str]) -> list[str]:
        """Parameters a hard mask must multiply in the forward for the network to compute what the masks say."""
        return list(weights)

    def to_units(self, per_entry: dict[str, torch.Tensor], weights: dict[str, str]) -> list[torch.Tensor | None]:
        """Per-entry values of `forward_masked` parameters (e.g. a loss's gradient w.r.t. the mask) summed into
        each unit's shape (the chain rule); None for a unit no value reached."""
        return [per_entry.get(fqn) for fqn in weights]

    def decide(self, scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
        """Bool keep per unit: the top-k at this grain under the allocation (exact, by index)."""
        if self.allocation == "global":
            return global_topk(scores, round((1.0 - sparsity) * sum(s.numel() for s in scores)))
        named = {str(i): s for i, s in enumerate(scores)}
        return [topk_mask(named[k], count) for k, count in self.keep_counts(named, sparsity).items()]

    def apply(self, masks: MaskSet, weights: dict[str, str], keeps: list[torch.Tensor]) -> None:
        """Write the units' keeps into the masks."""
        for fqn, keep in zip(weights, keeps, strict=True):
            masks.set(fqn, keep)

    def soft_masks(self, model: nn.Module, targets: dict[str, nn.Module], gain: float) -> Any:
        """PDP's soft mask form at this grain (`soft.WeightSoftMasks`, `channel_soft.ChannelSoftMasks`)."""
        raise NotImplementedError(f"granularity {self.name} has no soft mask form")

    @classmethod
    def build(cls, allocation: str, n: int, m: int) -> Granularity:
        """The strategy for the shared pruner keys (`n`, `m` matter to N:M only)."""
        return cls(allocation)

    def metrics(self, masks: MaskSet) -> dict[str, float]:
        """Values a run logs at every mask event besides the sparsities (e.g. the fraction of channels removed)."""
        return {}
