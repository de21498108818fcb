"""Hard masks stored on the model and enforced around the optimizer step.

A mask is a buffer named `<param>_mask` on the module owning the parameter (`layer1.0.conv1.weight_mask`),
so it travels with `state_dict`, checkpoints and DDP buffer broadcasts. Masks hold 0/1 in the parameter's
dtype rather than `bool`: `torch._foreach_mul_` with float masks is about 4× faster on CPU than with bool
ones, and enforcement runs on every step, so speed wins over the 4× smaller bool buffer.

Enforcement per optimizer step: gradients of inactive weights are zeroed before the step and weights are
re-masked after it, so momentum, weight decay and Adam moments can never revive a pruned weight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

MASK_SUFFIX = "_mask"


def _split(fqn: str) -> tuple[str, str]:
    owner, _, name = fqn.rpartition(".")
    return owner, name


def resolve(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    """The module and attribute that hold the trainable tensor of parameter `fqn`.

    For a parameter under `torch.nn.utils.parametrize` (PDP's soft masks), the trainable tensor is
    `<owner>.parametrizations.<name>.original`; masks keep the plain FQN as their key either way.
    """
    owner_name, pname = _split(fqn)
    owner = model.get_submodule(owner_name)
    if parametrize.is_parametrized(owner, pname):
        return owner.parametrizations[pname], "original"
    return owner, pname


def active_counts(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    """Active entries of every mask, read back to the host at once (one sync on a GPU, not one per layer)."""
    if not masks:
        return {}
    return dict(zip(masks, torch.stack([m.count_nonzero() for m in masks.values()]).tolist(), strict=True))


class MaskSet:
    """The hard masks of one model, keyed by parameter FQN (`"layer1.0.conv1.weight"`).

    No tensor is cached: moving the model (`.to(device)`, `.cpu()`, a dtype change, or Lightning's teardown,
    which moves the module back to the CPU before `on_fit_end`) replaces every buffer object, so a cached mask
    would be a stale copy on the old device. The set holds only *where* each tensor lives (its owning module
    and attribute names) and reads the live tensors at every call. Reading a few dozen dict entries costs
    microseconds, well below one kernel launch, so the per-step path stays one fused `_foreach_mul_`.

    Args:
        model: The network to mask.
        params: FQNs of the parameters that get a mask (targeted weights, plus coupled parameters for
            channel pruning). Existing mask buffers are reused, so attaching after a checkpoint restore
            keeps the restored masks.
    """

    def __init__(self, model: nn.Module, params: Iterable[str]) -> None:
        self.model = model
        self.fqns: list[str] = []
        for fqn in params:
            owner, pname = resolve(model, fqn)
            if pname + MASK_SUFFIX not in owner._buffers:
                param = getattr(owner, pname)
                mask = torch.ones_like(param, memory_format=torch.preserve_format).detach()
                owner.register_buffer(pname + MASK_SUFFIX, mask)
            self.fqns.append(fqn)
        self.refresh()

    def refresh(self) -> None:
        """Re-resolve where each parameter lives (after a parametrization was added or removed).

        A device or dtype move needs no refresh: tensors are read from their owners at every call.
        """
        self._slots: list[tuple[nn.Module, str, str]] = []
        for fqn in self.fqns:
            owner, pname = resolve(self.model, fqn)
            self._slots.append((owner, pname, pname + MASK_SUFFIX))
        self._index = {fqn: i for i, fqn in enumerate(self.fqns)}

    def param_list(self) -> list[nn.Parameter]:
        """The masked parameters in `fqns` order, as the model holds them now."""
        return [owner._parameters[p] for owner, p, _ in self._slots]

    def mask_list(self) -> list[torch.Tensor]:
        """The mask buffers in `fqns` order, as the model holds them now."""
        return [owner._buffers[b] for owner, _, b in self._slots]

    @property
    def params(self) -> dict[str, nn.Parameter]:
        """Masked parameters by FQN (read live from the model)."""
        return dict(zip(self.fqns, self.param_list(), strict=True))

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Mask buffers by FQN (read live from the model)."""
        return dict(zip(self.fqns, self.mask_list(), strict=True))

    def param(self, fqn: str) -> nn.Parameter:
        """One masked parameter (live)."""
        owner, pname, _ = self._slots[self._index[fqn]]
        return owner._parameters[pname]

    def mask(self, fqn: str) -> torch.Tensor:
        """One mask buffer (live)."""
        owner, _, bname = self._slots[self._index[fqn]]
        return owner._buffers[bname]

    @torch.no_grad()
    def set(self, fqn: str, mask: torch.Tensor) -> None:
        """Overwrite one mask in place (keeps the buffer object, its dtype and device)."""
        self.mask(fqn).copy_(mask)

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        """Zero every inactive weight."""
        torch._foreach_mul_(self.param_list(), self.mask_list())

    @torch.no_grad()
    def apply_to_grads(self) -> None:
        """Zero the gradients of inactive weights (call before the optimizer step)."""
        grads, masks = [], []
        for owner, pname, bname in self._slots:
            grad = owner._parameters[pname].grad
            if grad is not None:
                grads.append(grad)
                masks.append(owner._buffers[bname])
        if grads:
            torch._foreach_mul_(grads, masks)

    @torch.no_grad()
    def follow_device(self, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Move a method's own parameters (scores, thresholds), their gradients and their optimizer's state to the
        weights' device: after a model `.to()`, which moves only what the network holds."""
        device = self.param_list()[0].device
        if all(p.device == device for p in params):
            return
        for p in params:
            p.data = p.data.to(device)
            if p.grad is not None:
                p.grad = p.grad.to(device)
        for state in optimizer.state.values() if optimizer is not None else ():
            for key, value in state.items():
                if torch.is_tensor(value) and value.ndim > 0:
                    state[key] = value.to(device)

    def grads_finite(self) -> bool:
        """False when a gradient holds inf/NaN (one fused norm; an AMP scaler skips such a step)."""
        grads = [p.grad for p in self.param_list() if p.grad is not None]
        return not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer, positions: dict[str, torch.Tensor]) -> None:
        """Zero every per-element optimizer state (momentum, Adam moments) at the given positions.

        Args:
            optimizer: The optimizer holding the state.
            positions: Per parameter FQN, a tensor that is nonzero where the state must be cleared (e.g.
                weights just pruned or just regrown).
        """
        for fqn, where in positions.items():
            state = optimizer.state.get(self.param(fqn))
            if not state:
                continue
            keep = where == 0
            for value in state.values():
                if torch.is_tensor(value) and value.shape == keep.shape:
                    value.mul_(keep)

    @torch.no_grad()
    def settle(
        self, before: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None, enforce: bool = True
    ) -> None:
        """After masks changed from `before`: zero optimizer state where they changed, start regrown weights at 0,
        and (when `enforce`) re-mask the weights."""
        masks = self.masks
        changed = {fqn: old != masks[fqn] for fqn, old in before.items()}
        if optimizer is not None:  # every layer, changed or not: asking which changed is a host sync per layer
            self.zero_optimizer_state(optimizer, changed)
        for fqn, old in before.items():
            self.param(fqn).masked_fill_((old == 0) & (masks[fqn] != 0), 0.0)
        if enforce:
            self.apply_to_weights()

    def density(self, *fqns: str) -> float:
        """Fraction of active entries over the given masks (one sync, however many masks)."""
        masks = [self.mask(f) for f in fqns]
        return int(sum(m.count_nonzero() for m in masks)) / sum(m.numel() for m in masks)

    def grown_fraction(self, before: dict[str, torch.Tensor], fqns: Iterable[str]) -> float:
        """Fraction of the active entries of `fqns` that were inactive in `before` (the churn of an event); one
        read back to the host, however many layers."""
        fqns = list(fqns)
        if not fqns:
            return 0.0
        grown = torch.stack([((self.mask(f) != 0) & (before[f] == 0)).sum() for f in fqns]).sum()
        active = torch.stack([self.mask(f).count_nonzero() for f in fqns]).sum()
        grown, active = torch.stack([grown, active]).tolist()
        return grown / active if active else 0.0

    @torch.no_grad()
    def remove(self) -> None:
        """Fold masks into the weights and delete the buffers, so the model loads into the plain architecture."""
        self.apply_to_weights()
        for owner, _, bname in self._slots:
            del owner._buffers[bname]
        self.fqns, self._slots, self._index = [], [], {}

    @torch.no_grad()
    def remove_with(self, unparametrize: Callable[[], None]) -> None:
        """`remove` where a method's parametrizations sit on the masked parameters: the masks are folded into
        the raw weights again once `unparametrize` has taken the parametrizations off (keeping the originals)."""
        masks = {fqn: m.clone() for fqn, m in self.masks.items()}
        self.remove()
        unparametrize()
        for fqn, mask in masks.items():
            self.model.get_parameter(fqn).mul_(mask)


def find_mask_buffers(model: nn.Module) -> list[str]:
    """FQNs of the parameters that currently carry a mask buffer."""
    found = []
    for owner_name, owner in model.named_modules():
        for buffer_name in owner._buffers:
            if buffer_name.endswith(MASK_SUFFIX) and buffer_name[: -len(MASK_SUFFIX)] in owner._parameters:
                found.append(f"{owner_name}.{buffer_name[: -len(MASK_SUFFIX)]}" if owner_name else buffer_name[:-5])
    return found
