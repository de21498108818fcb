"""BiP's forward mask: the parametrization w ↦ m ⊙ w whose backward hands the whole ∇_z ℓ to the weight.

On its own because it is the one piece of BiP that lives on the network (installed on the targeted weights,
removed at `finalize`), while the pruner's scores, optimizer and phases live on the pruner.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsetrain.masking import MASK_SUFFIX


class _MaskedPassGrad(torch.autograd.Function):
    """z = θ ⊙ mult in the forward; the backward hands the whole ∇_z ℓ to θ.grad.

    BiP needs ∇_z ℓ at every position, pruned ones included: ∇_m ℓ = ∇_z ℓ ⊙ θ (the straight-through score
    gradient) and ∇_θ ℓ = m ⊙ ∇_z ℓ both follow from it, and the pruner splits it before the optimizer step.
    Keeping it in θ.grad means AMP unscaling, gradient accumulation and DDP's all-reduce treat it like any
    gradient, and the backward costs no extra kernel.
    """

    @staticmethod
    def forward(ctx, theta: torch.Tensor, mult: torch.Tensor) -> torch.Tensor:
        return theta * mult

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class HardMask(nn.Module):
    """Parametrization w ↦ m ⊙ w with the trained top-k mask m (no trainable parameter of its own).

    Unstructured and N:M: m is the parameter's mask buffer (held by its `ParametrizationList`, read live at
    every forward). Channel: `row_keep` (a non-persistent buffer, so it follows the model's moves) scales the
    output-side rows only; consumer columns read an exactly-zero input when a channel is pruned.
    """

    def __init__(self, rows: int | None = None) -> None:
        super().__init__()
        self.enabled = False
        self.home: list[nn.Module] = []  # the ParametrizationList holding the mask buffer (a list: not a child)
        self.register_buffer("row_keep", None if rows is None else torch.ones(rows), persistent=False)

    def multiplier(self) -> torch.Tensor:
        """What multiplies θ in the forward: the output rows' keep vector (broadcast) or the whole mask."""
        mask = self.home[0]._buffers["original" + MASK_SUFFIX]
        if self.row_keep is not None:
            return self.row_keep.view(-1, *([1] * (mask.ndim - 1)))
        return mask

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return theta
        return _MaskedPassGrad.apply(theta, self.multiplier())


def install_hard_masks(model: nn.Module, fqns: list[str], rows: bool) -> dict[str, HardMask]:
    """A `HardMask` on every parameter of `fqns` (one already there is reused), by FQN; `rows`: channel
    granularity, the mask scales the output rows only."""
    out = {}
    for fqn in fqns:
        owner_name, _, pname = fqn.rpartition(".")
        owner = model.get_submodule(owner_name)
        size = getattr(owner, pname).shape[0] if rows else None
        if parametrize.is_parametrized(owner, pname):
            hard = owner.parametrizations[pname][0]
            if not isinstance(hard, HardMask) or len(owner.parametrizations[pname]) != 1:
                raise ValueError(f"{fqn} already carries another parametrization; BiP needs it plain")
            hard.register_buffer("row_keep", None if size is None else torch.ones(size), persistent=False)
        else:
            hard = HardMask(size)
            parametrize.register_parametrization(owner, pname, hard)
        out[fqn] = hard
    return out


def remove_hard_masks(model: nn.Module, fqns: list[str]) -> None:
    """Remove the parametrizations of `fqns`, leaving the plain weights (the masks folded in beforehand)."""
    for fqn in fqns:
        owner_name, _, pname = fqn.rpartition(".")
        parametrize.remove_parametrizations(model.get_submodule(owner_name), pname, leave_parametrized=False)


__all__ = ["HardMask", "install_hard_masks", "remove_hard_masks"]
