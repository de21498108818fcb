"""Dense and effective parameters and FLOPs, per layer and for the whole model.

FLOPs come from `torch.utils.flop_counter` (one forward pass of one example, multiply-adds counted as 2),
never from a hand-written table, so any timm/torchvision architecture is covered. The effective FLOPs of a
layer are its dense FLOPs times the density of its weight mask: for channel pruning the masks also zero the
input columns of consumer layers, so removed input and output channels are both counted.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sparsetrain.masking import active_counts


@torch.no_grad()
def module_flops(model: nn.Module, example_input: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Forward FLOPs of one example: the model total and each module's own total, keyed by FQN."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, depth=None) as counter:
            model(example_input[:1])
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    total = int(sum(counts.get("Global", {}).values()))
    root = type(model).__name__ + "."
    per_module = {k[len(root) :]: int(sum(v.values())) for k, v in counts.items() if k.startswith(root)}
    return total, per_module


def account(
    model: nn.Module,
    flops: tuple[int, dict[str, int]],
    masks: dict[str, torch.Tensor],
    layers: Iterable[str],
) -> dict:
    """Summarise sparsity, parameters and FLOPs from the current masks.

    Args:
        model: The (masked) network.
        flops: Output of `module_flops` for the dense model (computed once; masks do not change it).
        masks: Per parameter FQN, the hard mask (0/1) of every masked parameter.
        layers: FQNs of the targeted modules, reported one by one.

    Returns:
        A dict with `sparsity` (over the targeted weights, from the masks), `params_total`, `params_nonzero`,
        `flops_dense`, `flops_sparse` and `layers` (per targeted module: `shape`, `density`, `flops_dense`,
        `flops_sparse`).
    """
    total_flops, per_module = flops
    params_total = sum(p.numel() for p in model.parameters())
    nonzero = active_counts(masks)
    density = {fqn: float(nonzero[fqn]) / m.numel() for fqn, m in masks.items()}
    inactive = {fqn: m.numel() - nonzero[fqn] for fqn, m in masks.items()}
    removed_flops = 0.0
    for fqn in masks:
        owner, _, pname = fqn.rpartition(".")
        if pname == "weight" and owner in per_module:
            removed_flops += per_module[owner] * (1.0 - density[fqn])
    report_layers, targeted, active = {}, 0, 0
    for name in layers:
        weight = model.get_submodule(name).weight
        numel = weight.numel()
        targeted += numel
        active += nonzero.get(f"{name}.weight", numel)
        dense = per_module.get(name, 0)
        layer_density = density.get(f"{name}.weight", 1.0)
        report_layers[name] = {
            "shape": list(weight.shape),
            "density": layer_density,
            "flops_dense": dense,
            "flops_sparse": round(dense * layer_density),
        }
    return {
        "sparsity": 1.0 - active / targeted if targeted else 0.0,
        "params_total": params_total,
        "params_nonzero": params_total - sum(inactive.values()),
        "flops_dense": total_flops,
        "flops_sparse": round(total_flops - removed_flops),
        "layers": report_layers,
    }
