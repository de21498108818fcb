"""The network LAPP slims, as bookkeeping: the entries slimming removes (for the optimizer state), and the
slimmed network measured against the dense one (FLOPs, parameters, per-layer channel pruning rates, the
sparsities and accounting `results.json` reports).

Apart from the pruner because none of it changes the network: the record (`final`, a plain dict) is written
once when the network is slimmed and read back from checkpoints, and everything else derives from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import sparsetrain.pruners.lapp_bypass as lapp_bypass
from sparsetrain.accounting import module_flops
from sparsetrain.targets import candidate_layers

if TYPE_CHECKING:
    from sparsetrain.granularity.channel_groups import ChannelGroup


def removed_entries(
    groups: list[ChannelGroup], keeps: list[torch.Tensor], wrapped: set[str]
) -> dict[str, dict[int, set[int]]]:
    """Per parameter (plain FQN, as before the bypasses wrapped it) and dimension, the indices slimming removes."""
    out = {}
    for group, keep in zip(groups, keeps, strict=True):
        for piece in group.slices:
            fqn = lapp_bypass.plain_name(piece.param, wrapped)
            if fqn is None:
                continue
            gone = piece.index[~keep[piece.root]].tolist()
            out.setdefault(fqn, {}).setdefault(piece.dim, set()).update(gone)
    return out


def measure(
    model: nn.Module, example: torch.Tensor, dense_shapes: dict[str, list[int]], targets: list[str]
) -> dict[str, Any]:
    """Measured FLOPs and parameters of the slimmed network, and per-layer channel pruning rates."""
    flops, per_module = module_flops(model, example)
    layers = candidate_layers(model)
    rates = {}
    for name, shape in dense_shapes.items():
        module = layers.get(name)
        if module is not None and name in targets:
            rates[name] = 1.0 - module.weight.shape[0] / shape[0]
    return {
        "flops": flops,
        "per_module": {n: per_module.get(n, 0) for n in layers},
        "shapes": {n: list(m.weight.shape) for n, m in layers.items()},
        "params": sum(p.numel() for p in model.parameters()),
        "rates": rates,
        "channels_dense": sum(s[0] for n, s in dense_shapes.items() if n in rates),
        "channels_kept": sum(layers[n].weight.shape[0] for n in rates),
    }


def weight_sparsity(final: dict[str, Any], dense_shapes: dict[str, list[int]]) -> float:
    """Fraction of the targeted layers' dense weights the slimming removed."""
    dense = sum(_numel(dense_shapes[n]) for n in final["rates"])
    kept = sum(_numel(final["shapes"][n]) for n in final["rates"])
    return 1.0 - kept / dense


def layer_sparsity(final: dict[str, Any], dense_shapes: dict[str, list[int]]) -> dict[str, float]:
    """Per targeted layer, the fraction of its dense weights removed."""
    return {n: 1.0 - _numel(final["shapes"][n]) / _numel(dense_shapes[n]) for n in final["rates"]}


def channel_sparsity(final: dict[str, Any]) -> float:
    """Fraction of the targeted layers' output channels removed."""
    return 1.0 - final["channels_kept"] / max(1, final["channels_dense"])


def layer_accounting(
    final: dict[str, Any], dense_shapes: dict[str, list[int]], dense_layer_flops: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """`results.json`'s per-layer accounting: dense shape, kept density, dense and slimmed FLOPs."""
    layers = {}
    for name in final["rates"]:
        layers[name] = {
            "shape": dense_shapes[name],
            "density": _numel(final["shapes"][name]) / _numel(dense_shapes[name]),
            "flops_dense": dense_layer_flops.get(name, 0),
            "flops_sparse": final["per_module"].get(name, 0),
        }
    return layers


def _numel(shape: list[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


__all__ = ["channel_sparsity", "layer_accounting", "layer_sparsity", "measure", "removed_entries", "weight_sparsity"]
