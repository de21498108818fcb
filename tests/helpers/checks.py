"""Assertions and reads shared by the matrix tests: what the model holds and whether the target was reached."""

from __future__ import annotations

import torch
from torch import nn

from sparsetrain.granularity import nm_group_view
from sparsetrain.masking import resolve


def live(module: nn.Module, fqn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainable tensor and the mask buffer `module.net` holds now for `fqn` (what a checkpoint saves)."""
    owner, name = resolve(module.net, fqn)
    return owner._parameters[name], owner._buffers[name + "_mask"]


def assert_target_reached(pruner, masks: dict[str, torch.Tensor], granularity: str) -> None:
    """The masks of the pruner's weights are at the 0.5 target: exactly 2 of every 4 (N:M), exactly the global
    count (unstructured, global allocation), else within 0.15 (per-layer rounding, whole channels)."""
    weights = {f: masks[f] for f in pruner.weights}
    if granularity == "nm":
        for m in weights.values():
            assert torch.all(nm_group_view(m != 0, 4).sum(dim=1) == 2)
    elif granularity == "unstructured" and pruner.allocation == "global":
        total = sum(m.numel() for m in weights.values())
        assert sum(int(m.count_nonzero()) for m in weights.values()) == total - round(0.5 * total)
    else:  # per-layer rounding (ERK) or channels: within one element / one channel per layer of the target
        total = sum(m.numel() for m in weights.values())
        active = sum(int(m.count_nonzero()) for m in weights.values())
        assert abs(active / total - 0.5) < 0.15, active / total
