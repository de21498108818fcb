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
    count (unstructured, global allocation), within one element per layer (per-layer rounding), and for channels
    the fraction of output channels removed (what a channel `sparsity` targets) within one channel per group.

    Channel masks are not checked by their weight density: a method that also zeroes the consumer columns of a
    pruned channel (BiP from its fine-tune on) keeps about a quarter of the weights at half the channels."""
    weights = {f: masks[f] for f in pruner.weights}
    total = sum(m.numel() for m in weights.values())
    active = sum(int(m.count_nonzero()) for m in weights.values())
    if granularity == "nm":
        for m in weights.values():
            assert torch.all(nm_group_view(m != 0, 4).sum(dim=1) == 2)
    elif granularity == "unstructured" and pruner.allocation == "global":
        assert active == total - round(0.5 * total)
    elif granularity == "channel":
        channels = pruner.granularity_metrics()["channel_sparsity"]
        assert abs(channels - 0.5) < 0.15, channels
        assert active / total < 0.65, active / total  # the masks given (the model's) are pruned ones
    else:  # per-layer rounding (ERK): within one element per layer of the target
        assert abs(active / total - 0.5) < 0.15, active / total
