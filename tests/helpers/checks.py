"""Assertions and reads shared by the matrix tests: what the model holds and whether the target was reached."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from sparsetrain.granularity import nm_group_view
from sparsetrain.masking import resolve


def live(module: nn.Module, fqn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainable tensor and the mask buffer `module.net` holds now for `fqn` (what a checkpoint saves)."""
    owner, name = resolve(module.net, fqn)
    return owner._parameters[name], owner._buffers[name + "_mask"]


def assert_target_reached(pruner, masks: dict[str, torch.Tensor], granularity: str) -> None:
    """The masks given (the pruner's, or the buffers the model holds) are at the 0.5 target: exactly 2 of every 4
    (N:M), exactly the global count (unstructured, global allocation), within 0.15 of the weights (per-layer
    rounding); channels: zeros only in whole channels, and the fraction of output channels they remove (what a
    channel `sparsity` targets) within 0.15.

    Channel masks are not checked by their weight density: a method that also zeroes the consumer columns of a
    pruned channel (BiP from its fine-tune on) keeps about a quarter of the weights at half the channels."""
    weights = {f: masks[f] for f in pruner.weights}
    if granularity == "nm":
        for m in weights.values():
            assert torch.all(nm_group_view(m != 0, 4).sum(dim=1) == 2)
    elif granularity == "channel":
        for fqn, m in weights.items():
            assert torch.equal(m != 0, whole_channels(m != 0)), f"{fqn}: zeros outside whole channels"
        strategy = pruner.granularity_strategy
        given = SimpleNamespace(mask=lambda fqn: masks[fqn])  # the strategy's reading of these masks
        alive = sum(int(strategy.alive(given, g).sum()) for g in strategy.groups)
        removed = 1.0 - alive / sum(g.size for g in strategy.groups)
        assert abs(removed - 0.5) < 0.15, removed
    else:
        total = sum(m.numel() for m in weights.values())
        active = sum(int(m.count_nonzero()) for m in weights.values())
        if granularity == "unstructured" and pruner.allocation == "global":
            assert active == total - round(0.5 * total)
        else:  # per-layer rounding (ERK)
            assert abs(active / total - 0.5) < 0.15, active / total


def whole_channels(keep: torch.Tensor) -> torch.Tensor:
    """The keep-mask a weight has when whole output rows and whole input columns are removed and nothing else:
    the outer product of its rows and columns that keep anything."""
    rows = keep.flatten(1).any(dim=1)
    cols = keep.transpose(0, 1).flatten(1).any(dim=1)
    tail = [1] * (keep.ndim - 2)
    return (rows.view(-1, 1, *tail) & cols.view(1, -1, *tail)).expand_as(keep)
