"""Keep training after a network was physically slimmed: the optimizer follows the new, smaller parameters.

Torch-Pruning replaces every parameter it shrinks by a new `nn.Parameter`, so the optimizer (which holds
the old objects) would keep stepping tensors the model no longer uses. `carry_optimizer_state` points each
parameter group at the new parameters and slices every per-parameter state tensor (momentum, Adam moments)
to the kept entries, so the kept channels continue with their optimizer state as if nothing was removed.
"""

from __future__ import annotations

import torch
from torch import nn


def kept_indices(shape: torch.Size, removed: dict[int, set[int]]) -> dict[int, torch.Tensor]:
    """Per dimension with removals, the sorted indices that remain."""
    out = {}
    for dim, gone in removed.items():
        keep = [i for i in range(shape[dim]) if i not in gone]
        out[dim] = torch.tensor(keep, dtype=torch.long)
    return out


def _slice(value: object, old_shape: torch.Size, kept: dict[int, torch.Tensor]) -> object:
    if not torch.is_tensor(value) or value.shape != old_shape:
        return value  # scalars such as Adam's step count
    for dim, index in kept.items():
        value = value.index_select(dim, index.to(value.device))
    return value


def carry_optimizer_state(
    optimizer: torch.optim.Optimizer,
    before: dict[str, nn.Parameter],
    after: dict[str, nn.Parameter],
    removed: dict[str, dict[int, set[int]]],
) -> list[str]:
    """Replace slimmed parameters in `optimizer` (in place), carrying their state over to the kept entries.

    Args:
        optimizer: The training optimizer, holding the parameters of `before`.
        before: The parameters before slimming, keyed by the FQN they have after it (parameters that no
            longer exist, such as folded branches, keyed by a name missing from `after`: they are dropped).
        after: The network's parameters after slimming, by FQN.
        removed: Per FQN, per dimension, the indices that were removed.

    Returns:
        FQNs whose state could not be carried (a shape that does not match the removal): their state restarts.
    """
    new_of = {id(p): (fqn, after.get(fqn)) for fqn, p in before.items()}
    reset = []
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            if id(p) not in new_of:
                params.append(p)  # not part of the slimmed network (e.g. a head outside it)
                continue
            fqn, q = new_of[id(p)]
            state = optimizer.state.pop(p, None)
            if q is None:
                continue
            params.append(q)
            if not state:
                continue
            kept = kept_indices(p.shape, removed.get(fqn, {}))
            carried = {k: _slice(v, p.shape, kept) for k, v in state.items()}
            if any(torch.is_tensor(v) and v.ndim and v.shape != q.shape for v in carried.values()):
                reset.append(fqn)
                continue
            optimizer.state[q] = carried
        group["params"] = params
    return reset


__all__ = ["carry_optimizer_state", "kept_indices"]
