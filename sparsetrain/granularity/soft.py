"""PDP's soft mask m = σ((s² − t²)/τ) as each granularity applies it: the parametrization, the thresholds
between the kept and the pruned scores, and the robust spread τ is relative to.

`WeightSoftMasks` is the per-weight form (unstructured; N:M subclasses it in `nm.py`); channels have theirs in
`channel_soft.py`. Every form offers the same surface to the method: install, enable, anneal (`set_gain`),
per-unit budgets, `refresh` at a fraction of them (thresholds and the hard-equivalent masks), fold at hardening,
remove, and its state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsetrain.allocation import erk_densities, global_keep_counts

if TYPE_CHECKING:
    from sparsetrain.masking import MaskSet

_SORT_MAX = 1 << 22  # spreads of larger layers come from a strided subsample (a sort of 4M entries is cheap)


class SoftMask(nn.Module):
    """Parametrization w ↦ w·σ((w² − t²)/τ): the PDP soft mask, no trainable parameters.

    `t2` is the squared threshold (a scalar, or weight-shaped for N:M where each group has its own), and
    `inv_tau` is 1/τ at the nominal τ, already divided by the spread of the layer's scores when τ is
    normalised; both are buffers, so they are checkpointed, refreshed without autograd by the pruner. `gain`
    is the annealing factor τ/τ(step), a buffer that is not saved: the pruner keeps it in its own state, so
    checkpoints written before annealing existed still load.
    """

    def __init__(self, shape: torch.Size, per_entry: bool = False) -> None:
        super().__init__()
        # N:M keeps one threshold per group, stored per entry: the buffer has its final shape from the start,
        # so a checkpoint loads into a freshly built module (resume)
        self.register_buffer("t2", torch.zeros(shape if per_entry else ()))
        self.register_buffer("inv_tau", torch.ones(()))
        self.register_buffer("gain", torch.ones(()), persistent=False)
        self.enabled = False

    def mask(self, w: torch.Tensor) -> torch.Tensor:
        """m(w) at the current threshold and temperature."""
        # (w² − t²)·inv_tau is O(1) before `gain` multiplies it: inv_tau·gain alone can overflow in fp16
        return torch.sigmoid((w * w - self.t2) * self.inv_tau * self.gain)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        return w * self.mask(w)


class WeightSoftMasks:
    """A `SoftMask` on every targeted weight, one threshold per layer: t halfway between the smallest kept and
    the largest pruned |w| at the layer's current budget, τ relative to the interquartile range of its w²."""

    per_entry = False  # one threshold per layer (N:M: one per group, stored per entry)
    allocated = True  # budgets follow the allocation (N:M: every layer the same, the pattern fixes it)

    def __init__(self, model: nn.Module, targets: dict[str, nn.Module], gain: float) -> None:
        self.soft: dict[str, SoftMask] = {}
        for name, module in targets.items():
            if not parametrize.is_parametrized(module, "weight"):
                parametrize.register_parametrization(module, "weight", SoftMask(module.weight.shape, self.per_entry))
            self.soft[name] = module.parametrizations.weight[0]
            self.soft[name].gain.fill_(gain)  # a reused parametrization holds another run's annealing
        self.model = model

    def set_enabled(self, enabled: bool) -> None:
        for soft in self.soft.values():
            soft.enabled = enabled

    def set_gain(self, gain: float) -> None:
        for soft in self.soft.values():
            soft.gain.fill_(gain)

    def budgets(self, masks: MaskSet, weights: dict[str, str], sparsity: float, allocation: str) -> dict[str, float]:
        """Per-layer target sparsities r_l: the global magnitude ranking's, uniform, or ERK's."""
        magnitudes = {f: masks.params[f].detach().abs() for f in weights}
        if not self.allocated or allocation == "uniform":
            return dict.fromkeys(magnitudes, sparsity)
        if allocation == "erk":
            shapes = {f: w.shape for f, w in magnitudes.items()}
            return {f: 1.0 - d for f, d in erk_densities(shapes, sparsity).items()}
        keep = global_keep_counts(magnitudes, sparsity)
        return {f: 1.0 - keep[f] / magnitudes[f].numel() for f in magnitudes}

    def keep(self, budget: float, fraction: float, numel: int) -> int:
        """Entries kept at `fraction` of the layer's budget."""
        return round((1.0 - budget * fraction) * numel)

    def threshold(self, magnitude: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        return threshold_between(magnitude, keep)

    def scale(self, magnitude: torch.Tensor, keep: int) -> torch.Tensor:
        """The spread τ is relative to (a 0-dim float64 tensor on the weights' device)."""
        return spread(magnitude**2)

    @torch.no_grad()
    def refresh(
        self, masks: MaskSet, weights: dict[str, str], budgets: dict[str, float], fraction: float, tau: float,
        normalize: bool,
    ) -> None:  # fmt: skip
        """Thresholds t² and 1/τ at `fraction` of the budgets, and the hard-equivalent masks (m ≥ 0.5).

        All on the weights' device, nothing read back to the host: a refresh costs its kernels, not a sync per
        layer (on a GPU shared by several trainings, each sync waited for the others' work). The scalars are
        computed in float64, as the host floats they replace were, so the thresholds are the same bits.
        """
        for fqn, name in weights.items():
            w = masks.params[fqn].detach()
            soft = self.soft[name]
            magnitude = w.abs().float()
            keep = self.keep(budgets[fqn], fraction, w.numel())
            t, hard = self.threshold(magnitude, keep)
            t = t.to(w.dtype)
            soft.t2 = torch.where(t < 0, -1.0, t * t)  # t < 0: nothing pruned yet, m = 1
            if normalize:
                soft.inv_tau = (1.0 / (tau * self.scale(magnitude, keep).clamp_min(1e-30))).to(w.dtype)
            else:
                soft.inv_tau = torch.full((), 1.0 / tau, dtype=w.dtype, device=w.device)
            masks.set(fqn, hard)

    def mask(self, masks: MaskSet, name: str) -> torch.Tensor:
        """The current soft mask m(w) of a targeted module."""
        soft = self.soft[name]
        w = masks.params[f"{name}.weight"].detach()
        return soft.mask(w) if soft.enabled else torch.ones_like(w)

    @torch.no_grad()
    def capture_fold(self, masks: MaskSet, weights: dict[str, str]) -> dict[str, torch.Tensor]:
        """w·m(w) of every soft-masked weight (empty outside the soft phase), taken before the hard thresholds."""
        out = {}
        for fqn, name in weights.items():
            soft = self.soft.get(name)
            if soft is not None and soft.enabled:
                w = masks.params[fqn]
                out[fqn] = w * soft.mask(w)
        return out

    @torch.no_grad()
    def fold(self, masks: MaskSet, captured: dict[str, torch.Tensor]) -> None:
        """Write the captured w·m(w) into the weights: kept units do not jump where m < 1."""
        for fqn, value in captured.items():
            masks.params[fqn].copy_(value)

    def remove(self, weights: dict[str, str]) -> None:
        """Remove the parametrizations (the raw weights stay)."""
        for name in weights.values():
            parametrize.remove_parametrizations(self.model.get_submodule(name), "weight", leave_parametrized=False)

    def state_dict(self) -> dict[str, Any] | None:
        return None  # the thresholds are the parametrizations' buffers: in the network's own state_dict

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def threshold_between(magnitude: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """t halfway between the smallest kept and the largest pruned magnitude (-1 when all are kept), a 0-dim
    float64 tensor on the magnitudes' device (no host sync), and the exact top-k mask."""
    n = magnitude.numel()
    flat = magnitude.reshape(-1)
    if keep >= n:
        all_kept = torch.full((), -1.0, dtype=torch.float64, device=flat.device)
        return all_kept, torch.ones_like(magnitude, dtype=torch.bool)
    values, index = torch.topk(flat, keep + 1)
    hard = torch.zeros(n, dtype=torch.bool, device=flat.device)
    hard[index[:keep]] = True
    t = 0.5 * (values[keep - 1] + values[keep]).double() if keep > 0 else values[0].double() * 1.0001
    return t, hard.reshape(magnitude.shape)


def _quantiles(values: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Nearest-rank quantiles by one sort (no `kthvalue`, slow on GPU; no `torch.quantile`, capped at 16M), as
    float64 on the values' device.

    Above `_SORT_MAX` entries a strided subsample is sorted; the stride is odd, so it still visits every
    column of a power-of-two wide layer.
    """
    flat = values.detach().reshape(-1).float()
    if flat.numel() > _SORT_MAX:
        flat = flat[:: -(-flat.numel() // _SORT_MAX) | 1]
    ordered = flat.sort().values
    last = ordered.numel() - 1
    return torch.stack([ordered[round(q * last)] for q in qs]).double()  # int indices: views, no index upload


def spread(scores: torch.Tensor) -> torch.Tensor:
    """Interquartile range of the scores a threshold is compared with; their mean where that is 0. A 0-dim
    float64 tensor on the scores' device.

    Robust: a few very large weights, which set the standard deviation of w², do not set the temperature.
    """
    lo, hi = _quantiles(scores, (0.25, 0.75))
    return torch.where(hi > lo, hi - lo, scores.float().mean().double())


__all__ = ["SoftMask", "WeightSoftMasks", "spread", "threshold_between"]
