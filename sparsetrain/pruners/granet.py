"""GraNet and its dynamic-sparse relatives RigL and SET: prune-and-regrow on shared machinery."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from sparsetrain.allocation import erk_densities, keep_counts, uniform_densities
from sparsetrain.granularity import REGISTRY as GRANULARITY_REGISTRY
from sparsetrain.granularity import Granularity
from sparsetrain.masking import active_counts
from sparsetrain.pruners.base import Pruner, register_pruner
from sparsetrain.schedules import SparsitySchedule, to_step

GROWTH = ("gradient", "random", "momentum")
START_ALLOCATIONS = ("uniform", "erk")  # per-layer densities a random sparse start can be drawn with


def cosine_fraction(step: int, horizon: int, start: float, floor: float) -> float:
    """ζ_t = floor + (start − floor)·½(1 + cos(π·t/T)), held at `floor` after T."""
    if horizon <= 0:
        return floor
    progress = min(1.0, step / horizon)
    return floor + (start - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@register_pruner("granet")
class GraNet(Pruner):
    """GraNet: gradual magnitude pruning with zero-cost neuroregeneration.

    Liu et al., NeurIPS 2021, "Sparse Training via Boosting Pruning Plasticity with Neuroregeneration"
    (arXiv:2106.10404). Every `update_every` optimizer steps from `begin` to `regrow_end`:

    1. while inside [`begin`, `end`]: global magnitude pruning along the cubic schedule from the initial
       sparsity (1 − `init_density`) to `sparsity`, reached exactly at `end` (the official code stops one
       event short). The prune is applied to the weights and their optimizer state at once, before step 2,
       as the official code does (`pruning()` ends with `apply_mask()`): a weight removed here and regrown
       in step 2 of the same event restarts at 0 with zeroed state, like any other regrown weight;
    2. per layer, drop ζ_t·(active weights) of the smallest |w| and regrow as many at the inactive positions
       (a weight just pruned or dropped may come back) with the largest |∂L/∂w| of the current batch, so this
       step leaves every layer's density unchanged. ζ_t cosine-decays from `regrow_fraction` to
       `regrow_fraction_min` over all training.

    Regrown weights start at 0 and their optimizer state is zeroed (the official code masks only SGD
    momentum; Adam moments are zeroed here too). A weight dropped in step 2 and regrown in the same step keeps
    its value and state: step 2 is one swap decided on one set of scores, and the official GraNet
    (`truncate_weights` applies the mask only after growth) and RigL (`reinit_when_same=False`) code both
    treat that weight as never having left. Random choices (the initial mask, random growth) use the pruner's
    own generator, seeded identically on every DDP rank (the official code seeds per rank).

    `mask/churn` at an event is the fraction of the active weights after it that restart from 0: inactive
    before the event, or removed by this event's global prune (step 1) and regrown. "Before" is thus the mask
    that carried a weight's value through the event; the official code, which applies the prune before
    regrowing, counts a weight pruned and regrown as regrown, and so does this.

    Allocation: `allocation` is the per-layer allocation of the gradual prune (`global` by default, as the
    paper). A sparse start (`init_density` < 1) draws a random mask with `uniform` or `erk` per-layer
    densities; with `global` it is ERK, as the official code's sparse-to-sparse runs (`--sparse-init ERK`,
    then global pruning), since a global ranking of a random initialisation is not a defined allocation.

    Where the paper is silent: the drop count is ceil(ζ·active) per layer, as the official GraNet code
    (`magnitude_death`); N:M granularity prunes and regrows inside each group of M so exactly N (or the
    current schedule's count) stay active per group; channel granularity is rejected (regrowing whole coupled
    channels from a single batch's gradient is not the method).

    `growth="momentum"` ranks candidates by |an exponential moving average of the dense gradient| (decay 0.9),
    updated at every optimizer step from the gradient before masking: RigL's `SparseMomentumOptimizer`
    (Dettmers & Zettlemoyer's sparse momentum without redistribution). The optimizer's own momentum, which the
    official GraNet code reads, cannot serve: inactive weights get zero gradients (GraNet's code masks their
    momentum), so it is 0 there and growth re-picks the weights just dropped. The average costs one copy of the
    targeted weights and a finiteness check per step, only with this option, and is saved for exact resume.

    Args:
        sparsity: Final fraction of zeros over the targeted weights.
        init_density: Initial density; 1 = dense-to-sparse, < 1 = random mask at this density with the
            `allocation`'s per-layer densities (ERK for `global`), sparse-to-sparse.
        regrow_fraction: ζ at step 0 (0.5).
        regrow_fraction_min: ζ at the end of the decay (0.005).
        regrow_end: Last prune-and-regrow event, as a fraction of all optimizer steps (1.0 = end of training).
        growth: `gradient` (GraNet, RigL), `random` (SET) or `momentum` (EMA of the dense gradient).
        **common: Shared pruner keys; `update_every` is the paper's ΔT in optimizer steps.
    """

    granularities = ("unstructured", "nm")  # regrowth is per weight: no channel granularity
    decay_over_regrow_window = False  # GraNet decays ζ over all training; RigL over its update window
    drop_rounding: ClassVar[str] = "ceil"  # ceil(ζ·active): GraNet's `magnitude_death`; RigL truncates
    global_start: ClassVar[str | None] = "erk"  # the sparse start under allocation=global (None: rejected)
    momentum_decay: ClassVar[float] = 0.9  # RigL's `SparseMomentumOptimizer(momentum=0.9)` EMA decay

    def __init__(
        self,
        *,
        sparsity: float | None = None,
        init_density: float = 1.0,
        regrow_fraction: float = 0.5,
        regrow_fraction_min: float = 0.005,
        regrow_end: float = 1.0,
        growth: str = "gradient",
        **common: Any,
    ) -> None:
        common.setdefault("schedule", "cubic")
        super().__init__(sparsity=sparsity, **common)
        if not 0.0 < init_density <= 1.0:
            raise ValueError(f"pruner.init_density must be in (0, 1], got {init_density}")
        if init_density < 1.0 - self.sparsity - 1e-9:
            raise ValueError(f"pruner.init_density={init_density} is below the final density {1 - self.sparsity:g}")
        if init_density < 1.0 and not self.granularity_strategy.random_start:
            raise ValueError(
                f"granularity={self.granularity} starts dense (init_density=1); its pattern is reached by the schedule"
            )
        if init_density < 1.0 and self.allocation == "global" and self.global_start is None:
            raise ValueError(
                f"{type(self).__name__} starts from a random sparse mask, so pruner.allocation must be one of "
                f"{', '.join(START_ALLOCATIONS)}; got 'global' (a global magnitude ranking of a random "
                "initialisation is not a defined allocation)"
            )
        for key, value in (("regrow_fraction", regrow_fraction), ("regrow_fraction_min", regrow_fraction_min)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"pruner.{key} must be in [0, 1), got {value}")
        if regrow_fraction_min > regrow_fraction:
            raise ValueError(
                f"pruner.regrow_fraction_min ({regrow_fraction_min}) exceeds regrow_fraction ({regrow_fraction})"
            )
        if not 0.0 <= regrow_end <= 1.0:
            raise ValueError(f"pruner.regrow_end is a fraction of all optimizer steps in [0, 1], got {regrow_end}")
        if growth not in GROWTH:
            raise ValueError(f"pruner.growth must be one of {', '.join(GROWTH)}; got {growth!r}")
        self.init_density, self.growth = init_density, growth
        self.regrow_fraction, self.regrow_fraction_min = regrow_fraction, regrow_fraction_min
        self.regrow_end = regrow_end
        self.grad_ema: dict[str, torch.Tensor] = {}  # growth="momentum": EMA of the dense gradient per weight
        self._carried: dict[str, torch.Tensor] | None = None  # positions whose value survived this event's prune
        self._step_optimizer: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------------------------------- schedule
    def build_schedule(self) -> SparsitySchedule:
        begin = to_step(self.begin, self.total_steps, "begin")
        end = max(begin, to_step(self.end, self.total_steps, "end"))
        return SparsitySchedule(
            self.schedule_kind, self.sparsity, begin, end, self.update_every, initial=1.0 - self.init_density
        )

    def on_attach(self) -> None:
        self.regrow_end_step = max(self.schedule.begin_step, to_step(self.regrow_end, self.total_steps, "regrow_end"))
        if self.init_density < 1.0 and self._pending_state is None:
            self._random_init()

    def zeta(self, step: int) -> float:
        """The prune-and-regrow fraction at an optimizer step."""
        horizon = self.regrow_end_step if self.decay_over_regrow_window else self.total_steps
        return cosine_fraction(step, horizon, self.regrow_fraction, self.regrow_fraction_min)

    @property
    def gradual(self) -> bool:
        """Whether global magnitude pruning moves the sparsity (False for RigL/SET: static sparsity)."""
        return self.init_density > 1.0 - self.sparsity + 1e-12

    def is_regrow_event(self, step: int) -> bool:
        """Prune-and-regrow every `update_every` steps after `begin`, up to `regrow_end`."""
        begin = self.schedule.begin_step
        return begin < step <= self.regrow_end_step and (step - begin) % self.update_every == 0

    def is_update_step(self, step: int) -> bool:
        return (self.gradual and self.schedule.is_event(step)) or self.is_regrow_event(step)

    # ------------------------------------------------------------------------------------------- masks
    @torch.no_grad()
    def _random_init(self) -> None:
        """Random mask at `init_density` with the allocation's per-layer densities (the pruner's generator)."""
        params, masks = self.masks.params, self.masks.masks
        shapes = {f: params[f].shape for f in self.weights}
        numels = {f: math.prod(s) for f, s in shapes.items()}
        start = self.global_start if self.allocation == "global" else self.allocation
        if start == "uniform":
            densities = uniform_densities(numels, 1.0 - self.init_density)
        else:
            densities = erk_densities(shapes, 1.0 - self.init_density)
        for fqn, k in keep_counts(densities, numels).items():
            mask = masks[fqn]
            flat = torch.zeros(mask.numel(), dtype=mask.dtype)
            flat[torch.randperm(mask.numel(), generator=self.generator)[:k]] = 1
            self.masks.set(fqn, flat.reshape(mask.shape).to(mask.device))
        self.masks.apply_to_weights()

    def before_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Update the dense-gradient EMA (growth="momentum") while gradients are still dense, then decide."""
        self._step_optimizer = optimizer
        if self.growth == "momentum":
            self._update_grad_ema()
        return super().before_optimizer_step(step, optimizer)

    @torch.no_grad()
    def _update_grad_ema(self) -> None:
        """ema ← β·ema + (1 − β)·g for every targeted weight, from the dense gradient (one fused lerp).

        Skipped on a step whose gradients hold inf/NaN (the AMP scaler skips it): one overflow would poison
        the average for the rest of training. The average starts at 0; TF's zero-debiasing in RigL scales
        every entry alike, so it does not change the ranking and is left out.
        """
        params = self.masks.params
        pairs = [(fqn, params[fqn].grad) for fqn in self.weights if params[fqn].grad is not None]
        if not pairs or not self.grads_finite():
            return
        emas = []
        for fqn, grad in pairs:
            ema = self.grad_ema.get(fqn)
            if ema is None:
                ema = torch.zeros_like(grad, memory_format=torch.preserve_format)
            elif ema.device != grad.device or ema.dtype != grad.dtype:  # restored from a checkpoint, or moved
                ema = ema.to(device=grad.device, dtype=grad.dtype)
            self.grad_ema[fqn] = ema
            emas.append(ema)
        torch._foreach_lerp_(emas, [g for _, g in pairs], 1.0 - self.momentum_decay)

    @torch.no_grad()
    def update(self, step: int) -> None:
        self._carried = None
        if self.gradual and self.schedule.is_event(step):
            masks = self.masks.masks
            before = {fqn: masks[fqn] != 0 for fqn in self.weights}
            self.prune_to(self.schedule.sparsity_at(step))
            self._apply_prune(before)
        if self.is_regrow_event(step):
            self.prune_and_regrow(self.zeta(step))

    @torch.no_grad()
    def _apply_prune(self, before: dict[str, torch.Tensor]) -> None:
        """Zero the weights and optimizer state the global prune just removed, before regrowth looks at them.

        The base class clears state only where the mask differs from before the event, so without this a
        weight pruned and regrown in one event would keep its value and momentum. The positions still active
        are remembered for `churn`. Without an optimizer (a pruner driven by hand) only the weights are zeroed.
        """
        masks = self.masks.masks
        self._carried = {fqn: before[fqn] & (masks[fqn] != 0) for fqn in self.weights}
        self.masks.apply_to_weights()
        optimizer = self._step_optimizer if self._step_optimizer is not None else getattr(self, "optimizer", None)
        if optimizer is not None:
            removed = {fqn: before[fqn] & ~self._carried[fqn] for fqn in self.weights}
            self.masks.zero_optimizer_state(optimizer, removed)  # every layer: no host sync per layer

    def churn(self, before: dict[str, torch.Tensor]) -> float:
        """Fraction of the active weights that restart from 0 at this event (see the class docstring).

        A weight removed by this event's global prune and regrown counts as newly grown, as in the official
        code, which applies the prune before regrowing: "before" is active before the event *and* after its prune.
        """
        if self._carried is None:
            return super().churn(before)
        return super().churn({fqn: (before[fqn] != 0) & self._carried[fqn] for fqn in self.weights})

    def growth_scores(self, fqn: str) -> torch.Tensor:
        """Where to regrow: |gradient| of the current batch (dense, read before masking), random, or |EMA of
        the dense gradient| (momentum)."""
        param = self.masks.params[fqn]
        if self.growth == "random":
            return torch.rand(param.shape, generator=self.generator).to(param.device)
        if self.growth == "momentum" and fqn in self.grad_ema:
            return self.grad_ema[fqn].abs()
        if param.grad is None:
            raise ValueError(f"{fqn} has no gradient at a regrowth event; regrowth needs the current batch's gradient")
        return param.grad.detach().abs()

    def drop_count(self, fraction: float, n_active: int) -> int:
        """Weights to swap in a layer: ceil(ζ·active) for GraNet, floor for RigL/SET (their official codes).

        The floor tolerates a float64 product landing a hair under an integer (0.57·100 = 56.999…), which
        RigL's float32 product rounds to the integer.
        """
        exact = fraction * n_active
        n = math.ceil(exact) if self.drop_rounding == "ceil" else math.floor(exact + 1e-9)
        return min(n, n_active)

    @torch.no_grad()
    def prune_and_regrow(self, fraction: float) -> None:
        """Per layer: drop `drop_count` smallest |w| among the active weights, regrow as many by growth score."""
        if fraction <= 0:
            return
        params, masks = self.masks.params, self.masks.masks
        # every layer's active count in one read (a layer's swap leaves the others' counts as they are)
        counts = active_counts({fqn: masks[fqn] for fqn in self.weights})
        for fqn, n_active in counts.items():
            mask = masks[fqn]
            active = mask != 0
            n_swap = self.drop_count(fraction, n_active)
            if n_swap == 0 or n_active == 0:
                continue
            weight = params[fqn].detach()
            grow = self.growth_scores(fqn).float()
            new = self.granularity_strategy.swap(active, weight.abs().float(), grow, n_swap)
            self.masks.set(fqn, new)

    # ------------------------------------------------------------------------------------------- state
    def extra_state(self) -> dict[str, Any]:
        """The dense-gradient EMA (growth="momentum"): without it a resumed run would regrow from a cold average."""
        return {"grad_ema": {fqn: t.detach().clone() for fqn, t in self.grad_ema.items()}} if self.grad_ema else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.grad_ema = {fqn: t.clone() for fqn, t in state.get("grad_ema", {}).items()}

    # ------------------------------------------------------------------------------------------- report


@register_pruner("rigl")
class RigL(GraNet):
    """RigL (Evci et al. 2020, "Rigging the Lottery", arXiv:1911.11134): static sparsity from a random mask
    (ERK by default, or `allocation="uniform"`); every `update_every` (100) steps until `regrow_end` (0.75),
    drop floor(α_t·active) of the smallest |w| and grow as many by |gradient|, α_t = α/2·(1 + cos(π t/T_end)),
    α = `regrow_fraction` = 0.3.

    Same machinery as GraNet with no gradual pruning (`init_density` = 1 − `sparsity`) and ζ decayed to 0
    over the update window. The drop count truncates as the official code
    (`rigl/sparse_optimizers.py::_get_update_op`: `n_prune = cast(n_ones * drop_fraction, int32)`), where
    GraNet's rounds up. `allocation="global"` is rejected: the only allocation RigL makes is its random start,
    and a global magnitude ranking of a random initialisation is not one.
    """

    unused_keys = ("schedule", "begin", "end", "init_density")  # static sparsity: init_density = 1 − sparsity
    decay_over_regrow_window = True
    drop_rounding = "floor"
    global_start = None

    def __init__(self, *, sparsity: float | None = None, **kw: Any) -> None:
        kw.setdefault("allocation", "erk")
        kw.setdefault("regrow_fraction", 0.3)
        kw.setdefault("regrow_fraction_min", 0.0)
        kw.setdefault("regrow_end", 0.75)
        kw.setdefault("update_every", 100)
        kw.setdefault("schedule", "oneshot")
        kw.setdefault("begin", 0.0)
        kw.setdefault("end", 0.0)
        random_start = GRANULARITY_REGISTRY.get(kw.get("granularity", "unstructured"), Granularity).random_start
        if sparsity is not None and "init_density" not in kw and random_start:
            kw["init_density"] = 1.0 - sparsity
        super().__init__(sparsity=sparsity, **kw)


@register_pruner("set")
class SET(RigL):
    """SET (Mocanu et al. 2018, Nature Communications): like RigL but regrowth at random positions, with a
    constant ζ = 0.3 once per epoch-sized period. Follows the RigL codebase's SET (`SparseSETOptimizer`:
    regrown weights start at 0, drop count truncated, ERK allocation by default) rather than the paper's small
    random values and ER allocation, so it shares RigL's machinery (`allocation` uniform or erk).
    """

    def __init__(self, *, sparsity: float | None = None, **kw: Any) -> None:
        kw.setdefault("growth", "random")
        kw.setdefault("regrow_fraction_min", kw.get("regrow_fraction", 0.3))
        kw.setdefault("regrow_end", 1.0)
        kw.setdefault("update_every", 400)
        super().__init__(sparsity=sparsity, **kw)
