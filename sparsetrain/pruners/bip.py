"""BiP: bi-level pruning, a mask (scores in their own optimizer) above a weight retraining step."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsetrain.masking import resolve
from sparsetrain.pruners.base import Pruner, check_fraction, register_pruner
from sparsetrain.pruners.bip_mask import HardMask, install_hard_masks, remove_hard_masks
from sparsetrain.schedules import to_step

DENSE, BILEVEL, FINETUNE, DONE = "dense", "bilevel", "finetune", "done"
SCORE_INITS = ("magnitude", "normalized")
SCORE_LR_SCHEDULES = ("step", "constant")
CHURN_EVERY = 50  # bi-level steps between `mask/churn` reports (and one at the end of the phase)


def step_decay(progress: float) -> float:
    """The released code's step schedule (`get_lr_policy("step")`, used for its mask optimizer): ×1 until half
    of the phase, ×0.1 until three quarters, ×0.01 after."""
    return 1.0 if progress < 0.5 else 0.1 if progress < 0.75 else 0.01


@register_pruner("bip")
class BiP(Pruner):
    """BiP (Zhang et al., NeurIPS 2022, "Advancing Model Pruning via Bi-level Optimization", arXiv:2210.04092).

    min_{m ∈ S} ℓ(m⊙θ*(m)) s.t. θ*(m) = argmin_θ ℓ(m⊙θ) + (γ/2)‖θ‖², S = {m ∈ {0,1}ⁿ, 1ᵀm = k}. Scores s are
    the relaxation of m, separate parameters (never the weights' storage) stepped by their own SGD (lr β =
    `score_lr`, nothing but the scores in it; momentum, weight decay and β's step decay as the released code's
    mask optimizer); the mask is the hard top-k of s (global by
    default, or per the allocation; N:M within each group; coupled output channels for `channel`), applied
    through a parametrization w ↦ m⊙w, so the module's own `training_step` gives every gradient in one
    backward. Each iteration, from that one forward/backward on the training batch:
      - lower level: the user's optimizer steps θ with ∇_θ ℓ(m⊙θ) = m ⊙ ∇_z ℓ (z = m⊙θ);
      - upper level: the score optimizer steps s with ∇_m ℓ(m⊙θ) − (1/γ)·∇_z ℓ(z) ⊙ ∇_θ ℓ(m⊙θ), the
        straight-through gradient ∇_z ℓ ⊙ θ plus the paper's implicit term (Hessian-free, bi-linear);
      - projection: m ← top-k(s), used by the next forward.
    Training is dense until `warmup` (the paper prunes a pretrained model; warmup = 0 prunes the weights the
    fit starts from, e.g. `init_from=<dense run>`), bi-level until 1 − `finetune`, then the mask is fixed and only the
    weights train. The exported mask (`finalize`) is the last top-k of the trained scores, exactly.

    What the released code (OPTML-Group/BiP) does instead, not reproduced: its implicit term uses the score
    gradient twice (−lr2·(∂ℓ/∂s)², numerically inert: BiP#3), its scores alias the weights
    (`popup_scores.data = weight.data`), both optimizers hold every parameter (the mask optimizer moves
    BatchNorm; the weight optimizer decays the scores), it crashes on PyTorch 2 (`None` grads), it spends two
    batches and four forwards per iteration, and its dense export re-ranks each layer on its own (a mask that
    was never trained).

    Where the paper is silent:
    - Batches: one batch for both levels, the module's training batch. The released code takes the θ-step on one batch
      (a reshuffled copy of the training set) and the m-step on another; the paper's (θ-step) and (m-step) equations, as
      our notes record them, name no batch. Both gradients come from one backward at (m_t, θ_t): the m-step uses the
      gradient at θ_t, not at the θ_{t+1} the paper's m-step is written at, which is what fits the 2×-dense step budget
      (a second forward/backward: ~2.6× on ResNet-50/H100).
    - Scores are initialised when the bi-level phase starts, from the weights then, at the weights' own scale as the
      released code does (`score_init=magnitude`: s = |w|; the code copies w itself): the first mask is exactly the
      global magnitude top-k, and a score step of β·g moves s as far as a weight step of the same size moves w.
      `score_init=normalized` divides by max|w| over all targeted weights (s in [0, 1], the relaxation's range;
      HYDRA's scale): with max|w| ≈ 0.65 on ResNet-20 the same step then moves the ranking less. Channel scores are
      the L2 norms of each channel's coupled producer filters divided by their group's mean (the Channel strategy's
      normaliser; over their global max for `normalized`). The top-k ranks s itself
      (the code ranks |s|, which would keep a score driven strongly negative). The un-projected s is kept between steps,
      as in the code and HYDRA (projecting m to {0,1} every step would freeze it).
    - The lower level's (γ/2)‖θ‖² is the user's weight decay, applied to every θ, pruned ones included (they keep their
      values and can return when the mask changes); γ only scales the implicit term. Default γ = 1: the implicit term is
      then ≈ 12 % of the direct one in norm (ResNet-20 at init; ≈ 16 % on the tests' MLP). The code's lr2 = 1e-4 plays
      1/γ, on a term that is not the paper's.
    - Channel: the mask scales every output-side slice of a coupled group (producer rows and biases, BN weight and
      bias), so a pruned channel is exactly zero during training; consumer columns are masked in the weights from the
      fine-tune or the end of fit on (exact physical removal) but not in the forward, so the gradient at their input
      still reaches a pruned channel's BN shift β and its score. After a ReLU (relu'(0) = 0) that gradient is zero: a
      pruned channel's score then stays put and the channel returns only when a kept channel's score falls below it
      (unstructured scores always get ∇_z ℓ ⊙ θ, pruned weights included). An activation with f(0) ≠ 0 between producer
      and consumer would make the export differ from the trained network.
    - The score optimizer follows the released code's mask optimizer: SGD with momentum 0.9 and weight decay 1e-4, β
      decayed ×0.1 at 50 % and ×0.01 at 75 % (its `step` policy), here of the bi-level phase whatever the weights' own
      schedule (`score_lr_schedule=constant` keeps β fixed). The paper states only β = 0.1. With plain SGD (momentum 0)
      and normalised scores, 40 bi-level steps on ResNet-20 moved the median score by 6e-5 a step and changed 0.19 % of
      the mask: BiP degenerated to one-shot magnitude pruning plus fine-tuning.
    - Ranking: the global top-k over every Conv and Linear, the first conv and the classifier included
      (`keep_first_last=False` by default, as the released code ranks every layer's scores).
    - `mask/churn` (fraction of the active weights that were inactive at the previous report) is logged every 50
      bi-level steps and at the end of the phase.

    Args:
        sparsity: Final fraction of zeros over the targeted weights (of channels for `channel`).
        gamma: γ of the lower-level problem; the implicit term is scaled by 1/γ.
        score_lr: β, the score optimizer's learning rate (paper: 0.1).
        score_momentum: Momentum of the score optimizer's SGD (released code: 0.9; 0: a plain step).
        score_weight_decay: Weight decay of the score optimizer (released code: 1e-4).
        score_lr_schedule: `step` (×0.1 at 50 %, ×0.01 at 75 % of the bi-level phase) or `constant`.
        score_init: `magnitude` (s = |w|, the weights' scale) or `normalized` (|w| / max|w|).
        warmup: Dense training before the bi-level phase, fraction of all optimizer steps (default 0.3).
        finetune: Final phase with the mask fixed (weights only), fraction of all optimizer steps (default 0.2:
            in one 3-epoch run on the shared protocol, dense 30 % / bi-level 50 % / fine-tune 20 % reached val
            acc 0.9143 / 0.9062 at 90 / 95 % against 0.9125 / 0.9038 for dense 50 % / bi-level 50 %, seed 0;
            `experiments/bip`).
        **common: Shared pruner keys (granularity, n, m, allocation, include, exclude, keep_first_last, seed).
    """

    unused_keys = ("schedule", "begin", "end", "update_every")  # one target from `warmup`, a mask step every step

    def __init__(
        self,
        *,
        sparsity: float | None = None,
        gamma: float = 1.0,
        score_lr: float = 0.1,
        score_momentum: float = 0.9,
        score_weight_decay: float = 1e-4,
        score_lr_schedule: str = "step",
        score_init: str = "magnitude",
        warmup: float = 0.3,
        finetune: float = 0.2,
        **common: Any,
    ) -> None:
        common.setdefault("keep_first_last", False)  # the released code ranks every layer
        warmup, finetune = check_fraction(warmup, "warmup", True), check_fraction(finetune, "finetune", True)
        if warmup >= 1.0 - finetune:
            raise ValueError(f"BiP needs warmup < 1 - finetune (a bi-level phase), got {warmup=}, {finetune=}")
        super().__init__(sparsity=sparsity, schedule="oneshot", begin=warmup, end=warmup, **common)
        for key, value in (("gamma", gamma), ("score_lr", score_lr)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"pruner.{key} must be a number > 0, got {value!r}")
        if not 0.0 <= score_momentum < 1.0:
            raise ValueError(f"pruner.score_momentum must be in [0, 1), got {score_momentum}")
        if not isinstance(score_weight_decay, (int, float)) or score_weight_decay < 0:
            raise ValueError(f"pruner.score_weight_decay must be a number >= 0, got {score_weight_decay!r}")
        if score_lr_schedule not in SCORE_LR_SCHEDULES:
            raise ValueError(
                f"pruner.score_lr_schedule must be one of {', '.join(SCORE_LR_SCHEDULES)}, got {score_lr_schedule!r}"
            )
        if score_init not in SCORE_INITS:
            raise ValueError(f"pruner.score_init must be one of {', '.join(SCORE_INITS)}, got {score_init!r}")
        self.gamma, self.score_lr, self.score_momentum = float(gamma), float(score_lr), float(score_momentum)
        self.score_weight_decay, self.score_lr_schedule = float(score_weight_decay), score_lr_schedule
        self.score_init = score_init
        self.warmup, self.finetune = warmup, finetune
        self.phase = DENSE
        self.score_steps = 0
        self._hard: dict[str, HardMask] = {}
        self._scores: list[nn.Parameter] = []
        self._grads_ready = False
        self._reference: dict[str, torch.Tensor] | None = None  # masks at the last churn report

    # ------------------------------------------------------------------------------------------- setup
    def before_masks(self, targets: dict[str, nn.Module]) -> None:
        strategy = self.granularity_strategy  # channel: the output rows only (consumers read zeros)
        self._hard = install_hard_masks(self.model, strategy.forward_masked(self.weights), strategy.row_masked)

    def on_attach(self) -> None:
        for fqn, hard in self._hard.items():
            hard.home = [resolve(self.model, fqn)[0]]
            hard.enabled = False
        device = self.masks.param_list()[0].device
        self.score_keys = self.granularity_strategy.unit_keys(self.weights)
        shapes = [s.shape for s in self.granularity_strategy.unit_scores(self.masks, self.weights)]
        self._scores = [nn.Parameter(torch.zeros(shape, device=device)) for shape in shapes]
        self.score_optimizer = torch.optim.SGD(
            self._scores, lr=self.score_lr, momentum=self.score_momentum, weight_decay=self.score_weight_decay
        )
        self.warmup_step = to_step(self.warmup, self.total_steps, "warmup")
        end = self.total_steps if self.finetune == 0 else to_step(1.0 - self.finetune, self.total_steps, "finetune")
        self.finetune_step = max(end, self.warmup_step + 1)
        self.phase, self.score_steps, self._reference = DENSE, 0, None

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self._scores)

    def trained_scores(self) -> dict[str, torch.Tensor]:
        """The scores by key: weight FQN (unstructured, N:M) or `<group index>:<group name>` (channel)."""
        return {k: s.detach() for k, s in zip(self.score_keys, self._scores, strict=True)}

    @property
    def masks_weights(self) -> bool:
        return self.phase != BILEVEL  # bi-level: pruned weights keep their values (a mask step may revive them)

    # ------------------------------------------------------------------------------------------- phases
    def before_forward(self, step: int) -> None:
        if not self.first_forward_of_step(step):
            return
        if self.phase == DENSE and step >= self.warmup_step:
            self._start()
        if self.phase == BILEVEL and step >= self.finetune_step:
            self._fix()

    def _start(self) -> None:
        """Scores from the current weights, the first top-k, the parametrizations on."""
        self.masks.follow_device(self._scores, self.score_optimizer)
        self._init_scores()
        self._project()
        self._set_enabled(True)
        self.phase = BILEVEL
        self._reference = self._mask_snapshot()
        self._pending_metrics = {"mask/churn": 0.0}
        self.events += 1

    def _fix(self) -> None:
        """Fine-tune: the mask stays the last top-k, pruned weights and their optimizer state are zeroed."""
        self._set_enabled(False)
        self.masks.apply_to_weights()
        if getattr(self, "optimizer", None) is not None:
            self.masks.zero_optimizer_state(self.optimizer, {k: m == 0 for k, m in self.masks.masks.items()})
        self.phase = FINETUNE
        self._pending_metrics = self._churn_report()
        self.events += 1

    def _set_enabled(self, enabled: bool) -> None:
        for hard in self._hard.values():
            hard.enabled = enabled

    # ------------------------------------------------------------------------------------------- the two levels
    def before_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Upper level's gradient from this step's (dense) ∇_z ℓ, then the lower level's: m ⊙ ∇_z ℓ."""
        metrics, self._pending_metrics = self._pending_metrics, {}
        if self.phase == BILEVEL and self.grads_finite():  # inf/NaN: no score step (scores would turn NaN)
            self.masks.follow_device(self._scores, self.score_optimizer)
            self._score_gradients()
            self._grads_ready = any(s.grad is not None for s in self._scores)  # no gradient at all: no step
            into = step - self.warmup_step
            if (into > 0 and into % CHURN_EVERY == 0) or step == self.finetune_step - 1:
                metrics.update(self._churn_report())  # before this step's projection: the mask since the last report
        if self.phase != DENSE:
            self.masks.apply_to_grads()
        return metrics

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """After the weight step: the score step and the projection to top-k (fine-tune: re-mask weights)."""
        if self.phase == BILEVEL and self._grads_ready:
            self._set_score_lr(step)
            self.score_optimizer.step()
            self.score_optimizer.zero_grad(set_to_none=True)
            self._project()
            self.score_steps += 1
            self._grads_ready = False
        elif self.phase in (FINETUNE, DONE):
            self.masks.apply_to_weights()

    def score_lr_at(self, step: int) -> float:
        """β at optimizer step `step` of the fit (the step decay runs over the bi-level phase)."""
        if self.score_lr_schedule == "constant":
            return self.score_lr
        progress = (step - self.warmup_step) / max(1, self.finetune_step - self.warmup_step)
        return self.score_lr * step_decay(progress)

    def _set_score_lr(self, step: int) -> None:
        for group in self.score_optimizer.param_groups:
            group["lr"] = self.score_lr_at(step)

    @torch.no_grad()
    def _score_gradients(self) -> None:
        """s.grad = ∇_z ℓ ⊙ θ − (1/γ)·∇_z ℓ ⊙ (m ⊙ ∇_z ℓ) per masked entry, from θ.grad = ∇_z ℓ (see
        `bip_mask._MaskedPassGrad`), summed into the scores' units by the granularity (channels: over each channel's
        output-side entries). A unit no gradient reached this step (PyTorch 2's `set_to_none`, a branch not
        taken) gets none either: no score step, momentum included.
        """
        found = [(fqn, self.masks.param(fqn)) for fqn in self._hard if self.masks.param(fqn).grad is not None]
        for s in self._scores:
            s.grad = None
        if not found:
            return
        fqns, params = zip(*found, strict=True)
        # float32 products: in half precision g⊙g underflows (the implicit term vanishes) or overflows to inf
        grads = [p.grad.float() for p in params]
        upper = torch._foreach_mul(grads, [p.detach().float() for p in params])  # ∇_m ℓ(m⊙θ) = ∇_z ℓ ⊙ θ
        lower = torch._foreach_mul(grads, [self._hard[f].multiplier().float() for f in fqns])  # ∇_θ ℓ(m⊙θ)
        torch._foreach_addcmul_(upper, grads, lower, value=-1.0 / self.gamma)  # the implicit term
        units = self.granularity_strategy.to_units(dict(zip(fqns, upper, strict=True)), self.weights)
        for s, g in zip(self._scores, units, strict=True):
            if g is not None:
                s.grad = g.to(dtype=s.dtype, memory_format=torch.contiguous_format).view(s.shape)

    # ------------------------------------------------------------------------------------------- masks
    @torch.no_grad()
    def _init_scores(self) -> None:
        raw = self.granularity_strategy.unit_scores(self.masks, self.weights)
        top = torch.ones(())
        if self.score_init == "normalized":
            top = torch.stack([r.max() for r in raw]).max().clamp_min(torch.finfo(torch.float32).tiny)
        for s, r in zip(self._scores, raw, strict=True):
            s.copy_(r / top)

    @torch.no_grad()
    def _project(self) -> None:
        """m ← top-k(s) under the granularity and allocation; the hard masks' row vectors follow (channel)."""
        strategy = self.granularity_strategy
        strategy.apply(self.masks, self.weights, strategy.decide([s.detach() for s in self._scores], self.sparsity))
        if strategy.row_masked:
            for fqn, hard in self._hard.items():
                mask = self.masks.mask(fqn)
                hard.row_keep.copy_(mask.reshape(mask.shape[0], -1).amax(1))

    def _mask_snapshot(self) -> dict[str, torch.Tensor]:
        return {fqn: self.masks.mask(fqn) != 0 for fqn in self.weights}

    def _churn_report(self) -> dict[str, float]:
        """`mask/churn` since the last report: fraction of active weights that were inactive then."""
        if self._reference is None:
            return {}
        ref = {k: v.to(self.masks.mask(k).device) for k, v in self._reference.items()}
        self.last_churn = self.churn(ref)
        self._reference = self._mask_snapshot()
        return {"mask/churn": self.last_churn}

    # ------------------------------------------------------------------------------------------- end of fit
    def on_fit_end(self) -> None:
        if self.phase == DENSE:  # the fit stopped before `warmup`: the mask is the scores' first top-k
            self._start()
        self._set_enabled(False)
        self.masks.apply_to_weights()
        self.phase = DONE

    def finalize(self) -> None:
        """Fold the last top-k of the trained scores into the weights; remove buffers and parametrizations."""
        if self.phase != DONE:
            self.on_fit_end()
        self.masks.remove_with(self._remove_hard_masks)
        self._hard = {}

    def _remove_hard_masks(self) -> None:
        remove_hard_masks(self.model, list(self._hard))

    def report(self) -> dict[str, Any]:
        return {"score_steps": self.score_steps, "warmup_step": self.warmup_step, "finetune_step": self.finetune_step}

    # ------------------------------------------------------------------------------------------- state
    def extra_state(self) -> dict[str, Any]:
        optimizer = self.score_optimizer.state_dict()
        return {
            "phase": self.phase,
            "score_steps": self.score_steps,
            "scores": {k: s.detach().cpu().clone() for k, s in zip(self.score_keys, self._scores, strict=True)},
            "score_optimizer": {
                "state": {i: {k: _cpu(v) for k, v in st.items()} for i, st in optimizer["state"].items()},
                "param_groups": optimizer["param_groups"],
            },
            "reference": None if self._reference is None else {k: v.cpu() for k, v in self._reference.items()},
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.phase = state.get("phase", DENSE)
        self.score_steps = state.get("score_steps", 0)
        scores = state.get("scores", {})
        with torch.no_grad():
            for key, s in zip(self.score_keys, self._scores, strict=True):
                if key in scores:
                    s.copy_(scores[key].to(s.device, s.dtype))
        if "score_optimizer" in state:
            self.score_optimizer.load_state_dict(state["score_optimizer"])
        reference = state.get("reference")
        self._reference = None if reference is None else dict(reference)
        self._set_enabled(self.phase == BILEVEL)
        if self.phase == BILEVEL:
            self._project()  # channel `row_keep` is not saved; the masks equal the saved ones (same scores)


def _cpu(value: Any) -> Any:
    return value.detach().cpu().clone() if torch.is_tensor(value) else value


__all__ = ["BiP", "HardMask"]
