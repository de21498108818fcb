"""PDP: parameter-free differentiable pruning with soft masks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsetrain.allocation import erk_densities, global_keep_counts
from sparsetrain.granularity import nm_group_view, nm_ungroup, normalize_group_scores, topk_mask
from sparsetrain.pruners import pdp_channel
from sparsetrain.pruners.base import Pruner, register_pruner
from sparsetrain.schedules import SparsitySchedule, to_step

RAMPS = ("progress", "epsilon")
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


@register_pruner("pdp")
class PDP(Pruner):
    """PDP (Cho, Adya, Naik, NeurIPS 2023, arXiv:2305.11203): soft masks m(w) = σ((w² − t²)/τ).

    Per targeted layer with current target r_l, t lies halfway between the smallest kept and the largest
    pruned magnitude, and the forward uses w·m(w): gradients reach every weight, "pruned" ones included,
    through both m and w. No parameter is added.

    Schedule: dense warm-up until `warmup`; there, per-layer budgets r_l are set from the global magnitude
    threshold at `sparsity` (the paper's rule; `allocation=uniform|erk` overrides); then r_l ramps with
    training progress (`schedule`, linear by default) so the target is reached at `end` whatever the budget
    (`ramp=epsilon` gives the paper's fixed increment ε per mask refresh instead, which may never finish on
    short budgets). From `end` to the hardening step at 1 − `finetune`, τ anneals geometrically to
    `tau·tau_final`, so the mask reaches 0/1 by itself, as the paper's does with its small absolute τ. Then
    the mask hardens (m ≥ 0.5, i.e. exactly the top-k) and training continues with the hard mask; at the end
    of fit the mask is folded into the weights and the parametrization removed.

    Where the paper is silent:
    - t is computed under `no_grad` with `torch.topk` (never `kthvalue`, which is slow on GPU) and refreshed
      every `threshold_every` steps; the soft mask itself is recomputed in every forward.
    - τ is relative to the spread of the scores the threshold is compared with (`tau_normalize`), so one τ
      means the same in every layer and every granularity (the paper's absolute τ ≈ 1e-5 assumes
      w² ≈ 1e-4..1e-3, and its channel and N:M variants give no τ at all). The spread is robust (no single
      large weight sets it): unstructured, the interquartile range of the layer's w²; channel, the
      interquartile range of the group's channel scores s_c² (mean squared filter weights, which differ
      little from channel to channel: normalised by their mean, as before, every channel had m ≈ 0.45–0.6);
      N:M, the median over the groups of the gap between the smallest kept and the largest pruned w² (the
      threshold sits inside that gap, so the layer's mean w² left the two middle ranks at m ≈ 0.58 | 0.44).
      At τ = 1 a near-threshold unit (a quartile channel at 50 %, the middle pair of a median N:M group)
      then sits about τ/2 from t²: m ≈ 0.62 | 0.38, soft enough for real gradient to reach pruned weights.
      For Gaussian weights the interquartile range of w² is 1.22·mean(w²) (0.92 for Laplace-shaped trained
      weights), so unstructured τ = 1 stays within the range where the old mean-relative τ = 1 was tuned
      (best of 0.05..4 on ResNet-20 / Fashion-MNIST at 98 %, with 0.5..2 within 1.3 points;
      `experiments/pdp_investigation`). A spread of 0 (e.g. a layer mostly exact zeros) falls back to the
      mean score.
    - Annealing and hardening: the paper's mask reaches 0/1 by itself because its absolute τ is small
      (1e-5 against w² ≈ 1e-4..1e-3). τ = 1 relative to the spread keeps real gradient on pruned weights but
      never gets there, so the mask used to harden with kept m ≈ 0.6–0.8 and pruned m ≈ 0.3–0.45, and the
      switch changed the logits of the tests' small nets by 6 % (unstructured), 7 % (2:4) and 38 %
      (channel). Now τ stays nominal until `end`, then decays geometrically to `tau·tau_final` at the last
      step before hardening (`tau_final = 0.01` ends near the paper's sharpness); at hardening the soft mask
      of the last forward is folded into the kept weights (w ← w·m), so kept units do not jump even where
      m < 1 (a short window between `end` and hardening, or `tau_final = 1`), and the pruned units' w·m,
      which annealing made ≈ 0, is all that is removed. With `ramp=epsilon` the budget may not be complete
      at hardening, which then prunes the rest at once.
    - The defaults τ = 1, `tau_final = 0.01` serve all three granularities (`tests/test_pdp.py`: kept and
      pruned masks separate at the nominal τ, reach ≥ 0.99 | ≤ 0.01 before hardening, and the logits change
      by < 0.2 % at the switch).
    - `ramp=epsilon` counts threshold refreshes, not epochs: every period is in optimizer steps, so the
      ramp does not depend on how the data is cut into epochs.
    - N:M puts t per group of M between the N-th and (N+1)-th largest magnitudes; channel granularity uses
      the coupled groups' filter norms as magnitudes (see `pdp_channel`), with budgets per group.

    Args:
        sparsity: Final fraction of zeros over the targeted weights.
        tau: Temperature; relative to the spread of the thresholded scores when `tau_normalize`, else absolute.
        tau_normalize: Divide τ by the spread of each layer's (channel group's) scores (see above).
        tau_final: τ at the hardening step as a fraction of `tau`, reached geometrically from `end`
            (1 = no annealing).
        warmup: Dense warm-up, fraction of all optimizer steps.
        finetune: Final hard-mask fine-tune, fraction of all optimizer steps (0 = harden at the end).
        threshold_every: Optimizer steps between threshold refreshes.
        ramp: `progress` (reach the target at `end`) or `epsilon` (the paper's ramp: r_l·min(1, ε·(k+1)) at
            the k-th threshold refresh after warm-up).
        epsilon: Increment of the budget fraction per threshold refresh (every `threshold_every` optimizer
            steps) for `ramp=epsilon`. The paper's 0.015 per epoch, with PQuantML's once-per-epoch mask
            refresh, is `threshold_every` = one epoch's optimizer steps and `epsilon=0.015`.
        **common: Shared pruner keys (`schedule` shapes the progress ramp: linear or cubic).
    """

    unused_keys = ("begin", "update_every")  # PDP starts at `warmup` and refreshes every `threshold_every`

    def __init__(
        self,
        *,
        sparsity: float | None = None,
        tau: float = 1.0,
        tau_normalize: bool = True,
        warmup: float = 0.1,
        finetune: float = 0.2,
        threshold_every: int = 10,
        ramp: str = "progress",
        epsilon: float = 0.015,
        tau_final: float = 0.01,
        **common: Any,
    ) -> None:
        end = common.get("end", 0.5)
        if isinstance(end, (int, float)) and not warmup <= end <= 1.0 - finetune:
            raise ValueError(
                f"PDP needs warmup <= end <= 1 - finetune, got warmup={warmup}, end={end}, finetune={finetune}"
            )
        if not isinstance(threshold_every, int) or threshold_every < 1:
            raise ValueError(f"pruner.threshold_every must be an integer >= 1 optimizer step, got {threshold_every!r}")
        common.setdefault("schedule", "linear")
        common.setdefault("end", 0.5)
        common.update(begin=warmup, update_every=threshold_every)  # PDP's own names for them
        super().__init__(sparsity=sparsity, **common)
        if not tau > 0:
            raise ValueError(f"pruner.tau must be > 0, got {tau}")
        for key, value in (("warmup", warmup), ("finetune", finetune)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"pruner.{key} is a fraction of all optimizer steps in [0, 1), got {value}")
        if not warmup <= self.end <= 1.0 - finetune:
            raise ValueError(
                f"PDP needs warmup <= end <= 1 - finetune, got warmup={warmup}, end={self.end}, finetune={finetune}"
            )
        if ramp not in RAMPS:
            raise ValueError(f"pruner.ramp must be one of {', '.join(RAMPS)}; got {ramp!r}")
        if not 0 < epsilon <= 1:
            raise ValueError(f"pruner.epsilon must be in (0, 1], got {epsilon}")
        self.tau, self.tau_normalize, self.warmup, self.finetune = tau, tau_normalize, warmup, finetune
        self.threshold_every, self.ramp, self.epsilon = threshold_every, ramp, epsilon
        if not 0 < tau_final <= 1:
            raise ValueError(f"pruner.tau_final must be in (0, 1], got {tau_final}")
        self.tau_final = tau_final
        self.budgets: dict[str, float] | None = None
        self.hardened = False
        self._gain: float | None = 1.0  # the annealing factor the soft masks' `gain` buffers hold (they start at 1)
        self._soft: dict[str, SoftMask] = {}
        self._report: dict[str, float] = {}  # metrics of this step's threshold refresh, logged by the callback

    # ------------------------------------------------------------------------------------------- setup
    def before_masks(self, targets: dict[str, nn.Module]) -> None:
        if self.granularity == "channel":
            self._channel_state = pdp_channel.install(self.model, self.groups)
            self._channel_state.gain = self._gain
            return
        for name, module in targets.items():
            if not parametrize.is_parametrized(module, "weight"):
                soft = SoftMask(module.weight.shape, per_entry=self.granularity == "nm")
                parametrize.register_parametrization(module, "weight", soft)
            self._soft[name] = module.parametrizations.weight[0]
            self._soft[name].gain.fill_(self._gain)  # a reused parametrization holds another run's annealing

    def _set_soft(self, enabled: bool) -> None:
        for soft in self._soft.values():
            soft.enabled = enabled
        if self.granularity == "channel":
            self._channel_state.enabled = enabled

    def build_schedule(self) -> SparsitySchedule:
        self.warmup_step = to_step(self.warmup, self.total_steps, "warmup")
        end = max(self.warmup_step, to_step(self.end, self.total_steps, "end"))
        self.harden_step = (
            self.total_steps if self.finetune == 0 else to_step(1.0 - self.finetune, self.total_steps, "finetune")
        )
        kind = "linear" if self.schedule_kind == "oneshot" else self.schedule_kind
        return SparsitySchedule(kind, self.sparsity, self.warmup_step, end, 1)

    # ------------------------------------------------------------------------------------------- phases
    def progress(self, step: int) -> float:
        """Fraction of each layer's budget r_l applied at this step."""
        if step < self.warmup_step:
            return 0.0
        if self.ramp == "epsilon":
            refresh = (step - self.warmup_step) // self.threshold_every
            return min(1.0, self.epsilon * (refresh + 1))
        return self.schedule.sparsity_at(step) / self.sparsity if self.sparsity > 0 else 0.0

    def tau_at(self, step: int) -> float:
        """τ at this step: `tau` until `end`, then geometric down to `tau·tau_final` at the last soft step.

        The last soft step is the one before hardening, so the fold at hardening uses the τ of the last
        forward (and a run resumed at the hardening step folds with the same τ as an uninterrupted one).
        """
        end, last = self.schedule.end_step, self.harden_step - 1
        if step <= end or self.tau_final == 1.0:
            return self.tau
        fraction = 1.0 if last <= end else min(1.0, (step - end) / (last - end))
        return self.tau * self.tau_final**fraction

    def _set_gain(self, step: int) -> None:
        """Set the annealing factor τ/τ(step) of every soft mask (only when it changes: one launch per layer)."""
        self._fill_gain(self.tau / self.tau_at(step))

    def _fill_gain(self, gain: float) -> None:
        if gain == self._gain:
            return
        self._gain = gain
        for soft in self._soft.values():
            soft.gain.fill_(gain)
        if self.granularity == "channel":
            self._channel_state.gain = gain

    @property
    def masks_weights(self) -> bool:
        return self.hardened

    def before_forward(self, step: int) -> None:
        if self.hardened or step < self.warmup_step or not self.first_forward_of_step(step):
            return
        if self.budgets is None:
            self.budgets = self._layer_budgets()
            self._set_soft(True)
        self._set_gain(step)
        harden = step >= self.harden_step
        if not harden and (step - self.warmup_step) % self.threshold_every != 0:
            return
        before = {fqn: self.masks.masks[fqn].clone() for fqn in self.weights}
        if harden:
            self.harden()
        else:
            self.refresh_thresholds(self.progress(step))
        self.last_churn = self.churn(before)
        self._report = {"mask/churn": self.last_churn}

    def is_update_step(self, step: int) -> bool:
        return False  # soft phase: thresholds refresh in before_forward; no hard-mask decisions

    def before_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Mask gradients once hard; report the hard-equivalent masks of this step's threshold refresh."""
        if self.hardened:
            self.masks.apply_to_grads()
        report, self._report = self._report, {}
        return report

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        if self.hardened:
            self.masks.apply_to_weights()

    @torch.no_grad()
    def _layer_budgets(self) -> dict[str, float]:
        """Per-layer target sparsities r_l, fixed at the end of warm-up."""
        if self.granularity == "channel":
            scores = [
                normalize_group_scores(pdp_channel.group_scores(self.model, g).detach().float()) for g in self.groups
            ]
            if self.allocation == "uniform":
                return {str(i): self.sparsity for i in range(len(self.groups))}
            flat = torch.cat(scores)
            chosen = topk_mask(flat, max(len(scores), round((1.0 - self.sparsity) * flat.numel())))
            keep = [int(c.sum()) for c in torch.split(chosen, [g.size for g in self.groups])]
            return {str(i): 1.0 - max(1, k) / g.size for i, (k, g) in enumerate(zip(keep, self.groups, strict=True))}
        weights = {f: self.masks.params[f].detach().abs() for f in self.weights}
        if self.granularity == "nm" or self.allocation == "uniform":
            return dict.fromkeys(weights, self.sparsity)
        if self.allocation == "erk":
            return {
                f: 1.0 - d for f, d in erk_densities({f: w.shape for f, w in weights.items()}, self.sparsity).items()
            }
        keep = global_keep_counts(weights, self.sparsity)
        return {f: 1.0 - keep[f] / weights[f].numel() for f in weights}

    @torch.no_grad()
    def refresh_thresholds(self, fraction: float) -> None:
        """Recompute t² (and the hard-equivalent masks used for reporting) at `fraction` of the budgets."""
        if self.granularity == "channel":
            self._refresh_channel_thresholds(fraction)
            return
        for fqn, name in self.weights.items():
            w = self.masks.params[fqn].detach()
            soft = self._soft[name]
            magnitude = w.abs().float()
            if self.granularity == "nm":
                keep = self.m - round((self.m - self.n) * fraction)
                t, hard = self._nm_threshold(magnitude, keep)
            else:
                keep = round((1.0 - self.budgets[fqn] * fraction) * w.numel())
                t, hard = self._threshold(magnitude, keep)
            t = torch.as_tensor(t, dtype=w.dtype, device=w.device)
            soft.t2 = torch.where(t < 0, torch.full_like(t, -1.0), t * t)  # t < 0: nothing pruned yet, m = 1
            scale = 1.0
            if self.tau_normalize:
                scale = nm_gap_spread(magnitude, self.m, keep) if self.granularity == "nm" else spread(magnitude**2)
            soft.inv_tau = torch.tensor(1.0 / (self.tau * max(scale, 1e-30)), dtype=w.dtype, device=w.device)
            self.masks.set(fqn, hard)

    @torch.no_grad()
    def _refresh_channel_thresholds(self, fraction: float) -> None:
        state = self._channel_state
        new = {fqn: torch.ones_like(m) for fqn, m in self.masks.masks.items()}
        for i, group in enumerate(self.groups):
            s2 = pdp_channel.group_scores(self.model, group).detach().float()
            keep = max(1, round((1.0 - self.budgets[str(i)] * fraction) * group.size))
            t, hard = self._threshold(s2.sqrt(), keep)
            # rounded to float32 as the scores are: the same values the thresholds had as float32 buffers
            state.t2[i] = _f32(t * t if t > 0 else -1.0)
            scale = spread(s2) if self.tau_normalize else 1.0
            state.inv_tau[i] = _f32(1.0 / (self.tau * max(scale, 1e-30)))
            group.expand(hard, new)
        for fqn, mask in new.items():
            self.masks.set(fqn, mask)

    @staticmethod
    def _threshold(magnitude: torch.Tensor, keep: int) -> tuple[float, torch.Tensor]:
        """t halfway between the smallest kept and the largest pruned magnitude, and the exact top-k mask."""
        n = magnitude.numel()
        flat = magnitude.reshape(-1)
        if keep >= n:
            return -1.0, torch.ones_like(magnitude, dtype=torch.bool)
        values, index = torch.topk(flat, keep + 1)
        hard = torch.zeros(n, dtype=torch.bool, device=flat.device)
        hard[index[:keep]] = True
        t = 0.5 * float(values[keep - 1] + values[keep]) if keep > 0 else float(values[0]) * 1.0001
        return t, hard.reshape(magnitude.shape)

    def _nm_threshold(self, magnitude: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        groups = nm_group_view(magnitude, self.m)
        if keep >= self.m:
            return torch.full_like(magnitude, -1.0), torch.ones_like(magnitude, dtype=torch.bool)
        values, index = groups.sort(dim=1, descending=True, stable=True)
        t = 0.5 * (values[:, keep - 1] + values[:, keep])
        hard = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, index[:, :keep], True)
        t_full = t.unsqueeze(1).expand_as(groups)
        return nm_ungroup(t_full, magnitude.shape), nm_ungroup(hard, magnitude.shape)

    def soft_mask(self, name: str) -> torch.Tensor:
        """The current soft mask m(w) of a targeted module (for tests and plots)."""
        soft = self._soft[name]
        w = self.masks.params[f"{name}.weight"].detach()
        return soft.mask(w) if soft.enabled else torch.ones_like(w)

    @torch.no_grad()
    def harden(self) -> None:
        """Switch to the hard mask m ≥ 0.5 at the full budgets: exactly the top-k per layer (per group for N:M).

        The soft mask the next forward would apply is folded into the kept weights first (w ← w·m), so the
        network computes the same function except for the pruned weights' w·m, which annealing made ≈ 0.
        """
        if self.budgets is None:
            self.budgets = self._layer_budgets()
        folded = self._soft_values()  # from the current thresholds, before they move to the full budget
        channel = None
        if self.granularity == "channel" and self._channel_state.enabled:
            channel = pdp_channel.channel_masks(self.model, self.groups, self._channel_state)
        self.refresh_thresholds(1.0)  # the hard masks, ranked on the raw weights
        for fqn, value in folded.items():
            self.masks.params[fqn].copy_(value)
        if channel is not None:
            pdp_channel.fold(self.model, self._channel_state, channel)
        self._set_soft(False)
        self.hardened = True
        self.masks.apply_to_weights()
        if getattr(self, "optimizer", None) is not None:
            self.masks.zero_optimizer_state(self.optimizer, {k: m == 0 for k, m in self.masks.masks.items()})
        self.events += 1

    @torch.no_grad()
    def _soft_values(self) -> dict[str, torch.Tensor]:
        """w·m(w) of every soft-masked weight (empty outside the soft phase)."""
        out = {}
        for fqn, name in self.weights.items():
            soft = self._soft.get(name)
            if soft is not None and soft.enabled:
                w = self.masks.params[fqn]
                out[fqn] = w * soft.mask(w)
        return out

    def on_fit_end(self) -> None:
        if not self.hardened:
            self.harden()

    def finalize(self) -> None:
        if not self.hardened:
            self.harden()
        self.masks.apply_to_weights()
        masks = {fqn: m.clone() for fqn, m in self.masks.masks.items()}
        self.masks.remove()
        if self.granularity == "channel":
            pdp_channel.uninstall(self.model, self.groups, self._channel_state)
        else:
            for name in self.weights.values():
                parametrize.remove_parametrizations(self.model.get_submodule(name), "weight", leave_parametrized=False)
        with torch.no_grad():
            for fqn, mask in masks.items():
                self.model.get_parameter(fqn).mul_(mask)

    # ------------------------------------------------------------------------------------------- state
    def extra_state(self) -> dict[str, Any]:
        # the annealing factor too: a run resumed after its last step hardens (folds) without another forward
        state = {"budgets": self.budgets, "hardened": self.hardened, "gain": self._gain}
        if self.granularity == "channel":
            state["channel"] = self._channel_state.state_dict()  # the groups' thresholds (not in the network)
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.budgets = state.get("budgets")
        if self.granularity == "channel" and "channel" in state:
            # (older checkpoints hold them in the network's state_dict, read by `pdp_channel`'s load hook)
            self._channel_state.load_state_dict(state["channel"])
        self.hardened = state.get("hardened", False)
        self._set_soft(self.budgets is not None and not self.hardened)
        self._gain = None  # the buffers of a fresh model hold 1: fill them whatever the cache says
        self._fill_gain(state.get("gain", 1.0))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "tau": self.tau,
            "tau_normalize": self.tau_normalize,
            "warmup": self.warmup,
            "finetune": self.finetune,
            "threshold_every": self.threshold_every,
            "ramp": self.ramp,
        }


def _f32(value: float) -> float:
    """`value` rounded to float32."""
    return float(torch.tensor(value, dtype=torch.float32))


def _quantiles(values: torch.Tensor, qs: tuple[float, ...]) -> list[float]:
    """Nearest-rank quantiles by one sort (no `kthvalue`, slow on GPU; no `torch.quantile`, capped at 16M).

    Above `_SORT_MAX` entries a strided subsample is sorted; the stride is odd, so it still visits every
    column of a power-of-two wide layer.
    """
    flat = values.detach().reshape(-1).float()
    if flat.numel() > _SORT_MAX:
        flat = flat[:: -(-flat.numel() // _SORT_MAX) | 1]
    ordered = flat.sort().values
    last = ordered.numel() - 1
    return ordered[[round(q * last) for q in qs]].tolist()


def spread(scores: torch.Tensor) -> float:
    """Interquartile range of the scores a threshold is compared with; their mean where that is 0.

    Robust: a few very large weights, which set the standard deviation of w², do not set the temperature.
    """
    lo, hi = _quantiles(scores, (0.25, 0.75))
    return hi - lo if hi > lo else float(scores.float().mean())


def nm_gap_spread(magnitude: torch.Tensor, m: int, keep: int) -> float:
    """Median over the N:M groups of the gap between the smallest kept and the largest pruned w².

    Each group's t² lies inside its own gap, so this is the scale that separates a group's kept weights from
    its pruned ones; the spread of w² over the whole layer is several times larger.
    """
    if not 0 < keep < m:
        return spread(magnitude**2)
    values = nm_group_view(magnitude.float(), m).sort(dim=1, descending=True).values
    gap = values[:, keep - 1] ** 2 - values[:, keep] ** 2
    median = _quantiles(gap, (0.5,))[0]
    return median if median > 0 else spread(magnitude**2)


__all__ = ["PDP", "SoftMask"]
