"""GraNet and its dynamic-sparse relatives RigL and SET: prune-and-regrow on shared machinery."""

from __future__ import annotations

import math
from typing import Any

import torch

from sparsetrain.allocation import erk_densities, keep_counts
from sparsetrain.granularity import nm_group_view, nm_ungroup
from sparsetrain.pruners.base import Pruner, register_pruner
from sparsetrain.schedules import SparsitySchedule, to_step

GROWTH = ("gradient", "random", "momentum")


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
       event short);
    2. per layer, prune ζ_t·(active weights) of the smallest |w| and regrow as many at the inactive
       positions (a weight just pruned may come back) with the largest |∂L/∂w| of the current batch, so this
       step leaves every layer's density unchanged. ζ_t cosine-decays from `regrow_fraction` to
       `regrow_fraction_min` over all training.

    Regrown weights start at 0 and their optimizer state is zeroed (the official code masks only SGD
    momentum; Adam moments are zeroed here too); a weight dropped and regrown in the same event keeps its
    value and state, as in the official GraNet and RigL code. Random choices (the ERK initial mask, random growth) use
    the pruner's own generator, seeded identically on every DDP rank (the official code seeds per rank).

    Where the paper is silent: `regrow_fraction` uses ceil(ζ·active) per layer as the official code;
    N:M granularity prunes and regrows inside each group of M so exactly N (or the current schedule's
    count) stay active per group; channel granularity is rejected (regrowing whole coupled channels from a
    single batch's gradient is not the method).

    Args:
        sparsity: Final fraction of zeros over the targeted weights.
        init_density: Initial density; 1 = dense-to-sparse, < 1 = random ERK mask (sparse-to-sparse).
        regrow_fraction: ζ at step 0 (0.5).
        regrow_fraction_min: ζ at the end of the decay (0.005).
        regrow_end: Last prune-and-regrow event, as a fraction of all optimizer steps (1.0 = end of training).
        growth: `gradient` (GraNet, RigL), `random` (SET) or `momentum`.
        **common: Shared pruner keys; `update_every` is the paper's ΔT in optimizer steps.
    """

    decay_over_regrow_window = False  # GraNet decays ζ over all training; RigL over its update window

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
        if self.granularity == "channel":
            raise ValueError(
                f"{type(self).__name__} prunes and regrows single weights; granularity=channel is not defined for "
                "it (use unstructured or nm, or gmp/magnitude for channels)"
            )
        if not 0.0 < init_density <= 1.0:
            raise ValueError(f"pruner.init_density must be in (0, 1], got {init_density}")
        if init_density < 1.0 - self.sparsity - 1e-9:
            raise ValueError(f"pruner.init_density={init_density} is below the final density {1 - self.sparsity:g}")
        if self.granularity == "nm" and init_density < 1.0:
            raise ValueError("granularity=nm starts dense (init_density=1); the N:M pattern is reached by the schedule")
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
            self._random_erk_init()

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
    def _random_erk_init(self) -> None:
        """Random mask at `init_density` with ERK per-layer densities (drawn from the pruner's generator)."""
        shapes = {f: self.masks.params[f].shape for f in self.weights}
        counts = keep_counts(
            erk_densities(shapes, 1.0 - self.init_density), {f: math.prod(s) for f, s in shapes.items()}
        )
        for fqn, k in counts.items():
            mask = self.masks.masks[fqn]
            flat = torch.zeros(mask.numel(), dtype=mask.dtype)
            flat[torch.randperm(mask.numel(), generator=self.generator)[:k]] = 1
            self.masks.set(fqn, flat.reshape(mask.shape).to(mask.device))
        self.masks.apply_to_weights()

    @torch.no_grad()
    def update(self, step: int) -> None:
        if self.gradual and self.schedule.is_event(step):
            self.prune_to(self.schedule.sparsity_at(step))
        if self.is_regrow_event(step):
            self.prune_and_regrow(self.zeta(step))

    def growth_scores(self, fqn: str) -> torch.Tensor:
        """Where to regrow: |gradient| of the current batch (dense, read before masking), random, or |momentum|."""
        param = self.masks.params[fqn]
        if self.growth == "random":
            return torch.rand(param.shape, generator=self.generator).to(param.device)
        if self.growth == "momentum":
            state = self.optimizer.state.get(param, {}) if getattr(self, "optimizer", None) else {}
            buf = state.get("momentum_buffer", state.get("exp_avg"))
            if buf is not None:
                return buf.abs()
        if param.grad is None:
            raise ValueError(f"{fqn} has no gradient at a regrowth event; regrowth needs the current batch's gradient")
        return param.grad.detach().abs()

    @torch.no_grad()
    def prune_and_regrow(self, fraction: float) -> None:
        """Per layer: drop ceil(fraction·active) smallest |w|, regrow as many inactive weights by growth score."""
        if fraction <= 0:
            return
        for fqn in self.weights:
            mask = self.masks.masks[fqn]
            active = mask != 0
            n_active = int(active.sum())
            n_swap = min(math.ceil(fraction * n_active), n_active)
            if n_swap == 0 or n_active == 0:
                continue
            weight = self.masks.params[fqn].detach()
            grow = self.growth_scores(fqn).float()
            if self.granularity == "nm":
                new = self._swap_nm(active, weight.abs().float(), grow, n_swap)
            else:
                new = self._swap(active, weight.abs().float(), grow, n_swap)
            self.masks.set(fqn, new)

    @staticmethod
    def _swap(active: torch.Tensor, magnitude: torch.Tensor, grow: torch.Tensor, n: int) -> torch.Tensor:
        flat_active = active.reshape(-1)
        drop_scores = torch.where(flat_active, magnitude.reshape(-1), torch.full_like(magnitude.reshape(-1), math.inf))
        dropped = torch.topk(drop_scores, n, largest=False).indices
        after_drop = flat_active.clone()
        after_drop[dropped] = False
        grow_scores = torch.where(after_drop, torch.full_like(drop_scores, -math.inf), grow.reshape(-1))
        grown = torch.topk(grow_scores, n, largest=True).indices
        after_drop[grown] = True
        return after_drop.reshape(active.shape)

    def _swap_nm(self, active: torch.Tensor, magnitude: torch.Tensor, grow: torch.Tensor, n: int) -> torch.Tensor:
        """Drop the n weakest active weights of the layer, then regrow inside each group as many as it lost."""
        a = nm_group_view(active, self.m)
        mag = nm_group_view(magnitude, self.m)
        g = nm_group_view(grow, self.m)
        drop_scores = torch.where(a, mag, torch.full_like(mag, math.inf)).reshape(-1)
        dropped = torch.zeros_like(drop_scores, dtype=torch.bool)
        dropped[torch.topk(drop_scores, n, largest=False).indices] = True
        dropped = dropped.reshape(a.shape)
        lost = dropped.sum(dim=1, keepdim=True)
        after_drop = a & ~dropped
        candidates = torch.where(after_drop, torch.full_like(g, -math.inf), g)
        order = candidates.argsort(dim=1, descending=True, stable=True)
        rank = order.argsort(dim=1)
        regrown = rank < lost
        return nm_ungroup(after_drop | regrown, active.shape)

    # ------------------------------------------------------------------------------------------- report
    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "init_density": self.init_density,
            "regrow_fraction": self.regrow_fraction,
            "regrow_fraction_min": self.regrow_fraction_min,
            "regrow_end": self.regrow_end,
            "growth": self.growth,
        }


@register_pruner("rigl")
class RigL(GraNet):
    """RigL (Evci et al. 2020, "Rigging the Lottery", arXiv:1911.11134): static sparsity from a random ERK mask;
    every `update_every` (100) steps until `regrow_end` (0.75), drop α_t·active of the smallest |w| and grow as
    many by |gradient|, α_t = α/2·(1 + cos(π t/T_end)), α = `regrow_fraction` = 0.3.

    Same machinery as GraNet with no gradual pruning (`init_density` = 1 − `sparsity`) and ζ decayed to 0
    over the update window.
    """

    decay_over_regrow_window = True

    def __init__(self, *, sparsity: float | None = None, **kw: Any) -> None:
        kw.setdefault("allocation", "erk")
        kw.setdefault("regrow_fraction", 0.3)
        kw.setdefault("regrow_fraction_min", 0.0)
        kw.setdefault("regrow_end", 0.75)
        kw.setdefault("update_every", 100)
        kw.setdefault("schedule", "oneshot")
        kw.setdefault("begin", 0.0)
        kw.setdefault("end", 0.0)
        if sparsity is not None and "init_density" not in kw and kw.get("granularity", "unstructured") != "nm":
            kw["init_density"] = 1.0 - sparsity
        super().__init__(sparsity=sparsity, **kw)


@register_pruner("set")
class SET(RigL):
    """SET (Mocanu et al. 2018, Nature Communications): like RigL but regrowth at random positions, with a
    constant ζ = 0.3 once per epoch-sized period. Follows the RigL codebase's SET (regrown weights start at 0,
    ERK allocation) rather than the paper's small random values and ER allocation, so it shares RigL's
    machinery.
    """

    def __init__(self, *, sparsity: float | None = None, **kw: Any) -> None:
        kw.setdefault("growth", "random")
        kw.setdefault("regrow_fraction_min", kw.get("regrow_fraction", 0.3))
        kw.setdefault("regrow_end", 1.0)
        kw.setdefault("update_every", 400)
        super().__init__(sparsity=sparsity, **kw)
