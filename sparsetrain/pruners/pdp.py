"""PDP: parameter-free differentiable pruning with soft masks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsetrain.pruners.base import Pruner, register_pruner
from sparsetrain.schedules import SparsitySchedule, to_step

RAMPS = ("progress", "epsilon")


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
      the coupled groups' filter norms as magnitudes (see `granularity.channel_soft`), with budgets per group.

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
        self.soft: Any = None  # the granularity's soft mask form (`soft_masks`), installed at attach
        self._report: dict[str, float] = {}  # metrics of this step's threshold refresh, logged by the callback

    # ------------------------------------------------------------------------------------------- setup
    def before_masks(self, targets: dict[str, nn.Module]) -> None:
        self.soft = self.granularity_strategy.soft_masks(self.model, targets, self._gain)

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
        self.soft.set_gain(gain)

    @property
    def masks_weights(self) -> bool:
        return self.hardened

    def before_forward(self, step: int) -> None:
        if self.hardened or step < self.warmup_step or not self.first_forward_of_step(step):
            return
        if self.budgets is None:
            self.budgets = self._layer_budgets()
            self.soft.set_enabled(True)
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

    def _layer_budgets(self) -> dict[str, float]:
        """Per-unit target sparsities r_l (layers; channel groups), fixed at the end of warm-up."""
        return self.soft.budgets(self.masks, self.weights, self.sparsity, self.allocation)

    def refresh_thresholds(self, fraction: float) -> None:
        """Recompute t² (and the hard-equivalent masks used for reporting) at `fraction` of the budgets."""
        self.soft.refresh(self.masks, self.weights, self.budgets, fraction, self.tau, self.tau_normalize)

    def soft_mask(self, name: str) -> torch.Tensor:
        """The current soft mask m(w) of a targeted module (per-weight granularities; for tests and plots)."""
        return self.soft.mask(self.masks, name)

    @torch.no_grad()
    def harden(self) -> None:
        """Switch to the hard mask m ≥ 0.5 at the full budgets: exactly the top-k per layer (per group for N:M).

        The soft mask the next forward would apply is folded into the kept weights first (w ← w·m), so the
        network computes the same function except for the pruned weights' w·m, which annealing made ≈ 0.
        """
        if self.budgets is None:
            self.budgets = self._layer_budgets()
        folded = self.soft.capture_fold(self.masks, self.weights)  # the current masks, before the full budget
        self.refresh_thresholds(1.0)  # the hard masks, ranked on the raw weights
        self.soft.fold(self.masks, folded)
        self.soft.set_enabled(False)
        self.hardened = True
        self.masks.apply_to_weights()
        if getattr(self, "optimizer", None) is not None:
            self.masks.zero_optimizer_state(self.optimizer, {k: m == 0 for k, m in self.masks.masks.items()})
        self.events += 1

    def on_fit_end(self) -> None:
        if not self.hardened:
            self.harden()

    def finalize(self) -> None:
        if not self.hardened:
            self.harden()
        self.masks.remove_with(lambda: self.soft.remove(self.weights))

    # ------------------------------------------------------------------------------------------- state
    def extra_state(self) -> dict[str, Any]:
        # the annealing factor too: a run resumed after its last step hardens (folds) without another forward
        state = {"budgets": self.budgets, "hardened": self.hardened, "gain": self._gain}
        own = self.soft.state_dict()  # channel groups' thresholds (the per-weight ones are network buffers)
        if own is not None:
            state["channel"] = own
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.budgets = state.get("budgets")
        own = state.get("channel")
        if own is not None:  # (older checkpoints hold them in the network's state_dict: `channel_soft`'s load hook)
            self.soft.load_state_dict(own)
        self.hardened = state.get("hardened", False)
        self.soft.set_enabled(self.budgets is not None and not self.hardened)
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


__all__ = ["PDP"]
