"""The pruner protocol and the shared hard-mask machinery.

A pruner decides masks; `SparsityCallback` maps Lightning's training events onto it. Pruners are plain
torch (no Lightning import), so they can be driven from any training loop:

    pruner.attach(model, total_steps, example_input)   # before the optimizer is built
    for step in range(total_steps):
        loss.backward()
        pruner.before_optimizer_step(step, optimizer)  # decide masks at update events, mask gradients
        optimizer.step()
        pruner.after_optimizer_step(step, optimizer)   # re-mask weights
    pruner.finalize()                                  # fold masks into weights, remove buffers
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from sparsetrain.allocation import erk_densities, global_keep_counts, keep_counts
from sparsetrain.granularity import (
    ChannelGroup,
    build_channel_groups,
    nm_compatible,
    nm_mask,
    normalize_group_scores,
    topk_mask,
)
from sparsetrain.masking import MaskSet
from sparsetrain.schedules import SparsitySchedule, to_step
from sparsetrain.targets import select_targets

GRANULARITIES = ("unstructured", "channel", "nm")
ALLOCATIONS = ("uniform", "global", "erk")
STATE_VERSION = 1

_REGISTRY: dict[str, type[Pruner]] = {}


def register_pruner(key: str):
    """Class decorator adding a pruner to the registry under `key` (= its `conf/pruner/<key>.yaml`)."""

    def wrap(cls: type[Pruner]) -> type[Pruner]:
        cls.key = key
        _REGISTRY[key] = cls
        return cls

    return wrap


def list_pruners() -> dict[str, type[Pruner]]:
    """Registered pruners by key."""
    return dict(_REGISTRY)


def _check_fraction(value: float, key: str, upper_open: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"pruner.{key} must be a number, got {value!r}")
    if not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
        raise ValueError(f"pruner.{key} must be in [0, {'1)' if upper_open else '1]'}, got {value}")
    return float(value)


class Pruner:
    """Base class: target selection, granularity, allocation, schedule and hard-mask enforcement.

    Subclasses override `scores` (what "important" means), `update` (what happens at an update event),
    and optionally the soft-mask hooks.

    Args:
        sparsity: Final fraction of zeros over the targeted weights, in [0, 1). With `granularity="nm"` it is
            implied (1 − n/m) and may be omitted. With `granularity="channel"` it is the fraction of
            output channels removed over the prunable channel groups (one ranking across groups with
            `allocation="global"`, every group keeping at least one channel; per group with `uniform`).
        granularity: `unstructured`, `channel` (output channels in coupled groups from Torch-Pruning's
            dependency graph) or `nm` (exactly `n` kept in every `m` consecutive weights along the input dim).
        n: N of N:M.
        m: M of N:M.
        allocation: `uniform`, `global` (one magnitude ranking across layers at every event) or `erk`.
        schedule: `oneshot`, `linear` or `cubic`.
        begin: Start of pruning, as a fraction of all optimizer steps.
        end: Step at which the target is reached, as a fraction of all optimizer steps.
        update_every: Optimizer steps between update events.
        include: Regexes on module names to target (default: every Conv/Linear).
        exclude: Regexes on module names never to target.
        keep_first_last: Keep the first conv and the classifier dense.
        seed: Seed of the pruner's own random generator (identical on every DDP rank).
    """

    key: ClassVar[str] = "base"
    regrows: ClassVar[bool] = False

    @property
    def masks_weights(self) -> bool:
        """Whether the masks are enforced on the weights now (False while a soft mask only reports them)."""
        return True

    def __init__(
        self,
        *,
        sparsity: float | None = None,
        granularity: str = "unstructured",
        n: int = 2,
        m: int = 4,
        allocation: str = "global",
        schedule: str = "cubic",
        begin: float = 0.0,
        end: float = 0.5,
        update_every: int = 100,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        keep_first_last: bool = True,
        seed: int = 0,
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"pruner.granularity must be one of {', '.join(GRANULARITIES)}; got {granularity!r}")
        if allocation not in ALLOCATIONS:
            raise ValueError(f"pruner.allocation must be one of {', '.join(ALLOCATIONS)}; got {allocation!r}")
        if granularity == "nm":
            if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
                raise ValueError(f"N:M needs integers 0 < n < m, got n={n}, m={m}")
            implied = 1.0 - n / m
            if sparsity is not None and not math.isclose(sparsity, implied, abs_tol=1e-9):
                raise ValueError(
                    f"pruner.sparsity={sparsity} contradicts granularity=nm with {n}:{m} (implied {implied:g}); "
                    "omit pruner.sparsity or set it to the implied value"
                )
            sparsity = implied
        if sparsity is None:
            raise ValueError("pruner.sparsity is required (final fraction of zero weights, in [0, 1))")
        if granularity == "channel" and allocation == "erk":
            raise ValueError("allocation=erk is defined for weights, not channels; use uniform or global")
        self.sparsity = _check_fraction(sparsity, "sparsity", upper_open=True)
        self.granularity, self.n, self.m, self.allocation = granularity, n, m, allocation
        self.schedule_kind = schedule
        self.begin, self.end = _check_fraction(begin, "begin"), _check_fraction(end, "end")
        if self.end < self.begin:
            raise ValueError(f"pruner.end ({end}) must not be before pruner.begin ({begin})")
        if not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"pruner.update_every must be an integer >= 1 optimizer step, got {update_every!r}")
        SparsitySchedule(schedule, self.sparsity, 0, 1, update_every)  # validates the schedule name early
        self.update_every = update_every
        self.include, self.exclude = list(include or []), list(exclude or [])
        self.keep_first_last = keep_first_last
        self.seed = seed
        self.model: nn.Module | None = None
        self.masks: MaskSet | None = None
        self.events = 0
        self.last_churn = 0.0
        self.last_val_acc: float | None = None
        self.steps_per_epoch: int | None = None  # optimizer steps per epoch, set by the callback at fit start
        self._deferred_step: int | None = None  # an update event the AMP scaler skipped: done at the next step
        self._seen_step = -1  # last step `first_forward_of_step` saw (gradient accumulation)
        self._pending_state: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def attach(self, model: nn.Module, total_steps: int, example_input: torch.Tensor | None = None) -> None:
        """Select targets, create mask buffers and the schedule. Call before the optimizer is built."""
        if total_steps < 1:
            raise ValueError(f"training must have at least one optimizer step, got {total_steps}")
        self.model, self.total_steps = model, int(total_steps)
        targets = select_targets(model, self.include, self.exclude, self.keep_first_last)
        self.skipped: dict[str, str] = {}
        if self.granularity == "nm":
            for name, module in list(targets.items()):
                if not nm_compatible(module.weight, self.m):
                    self.skipped[name] = f"input dim not divisible by {self.m}"
                    del targets[name]
            if not targets:
                raise ValueError(f"N:M {self.n}:{self.m} applies to no targeted layer: {self.skipped}")
        self.targets = targets
        self.weights = {f"{name}.weight": name for name in targets}
        self.groups: list[ChannelGroup] = []
        masked = list(self.weights)
        if self.granularity == "channel":
            if example_input is None:
                raise ValueError("channel granularity needs an example input to trace the model's channel coupling")
            self.groups = build_channel_groups(model, example_input, set(targets))
            if not self.groups:
                raise ValueError("no prunable channel group: every group is coupled to a layer kept dense")
            extra = sorted({p for g in self.groups for p in g.group_params()} - set(masked))
            masked += extra
        self.before_masks(targets)
        self.masks = MaskSet(model, masked)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.schedule = self.build_schedule()
        self.on_attach()
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def before_masks(self, targets: dict[str, nn.Module]) -> None:
        """Hook after targets and channel groups are known, before mask buffers exist (parametrizations)."""

    def build_schedule(self) -> SparsitySchedule:
        """The sparsity schedule in optimizer steps (overridable, e.g. for a non-zero initial sparsity)."""
        begin = to_step(self.begin, self.total_steps, "begin")
        end = max(begin, to_step(self.end, self.total_steps, "end"))
        return SparsitySchedule(self.schedule_kind, self.sparsity, begin, end, self.update_every)

    def on_attach(self) -> None:
        """Hook for subclasses (initial masks, extra state)."""

    def on_fit_start(self, optimizer: torch.optim.Optimizer, schedulers: Sequence[Any] = ()) -> None:
        """Training is about to start: the optimizer (and LR schedulers) exist now."""
        self.optimizer, self.schedulers = optimizer, list(schedulers)

    def before_forward(self, step: int) -> None:
        """Called before each training batch's forward (IMP rewinds here; soft masks refresh thresholds)."""

    def first_forward_of_step(self, step: int) -> bool:
        """True once per optimizer step: with gradient accumulation several forwards share one step."""
        if step == self._seen_step:
            return False
        self._seen_step = step
        return True

    def on_fit_end(self) -> None:
        """Training finished (before `finalize`)."""

    def total_fit_steps(self, round_steps: int) -> int:
        """Optimizer steps the whole fit needs when the configured budget is `round_steps` (IMP: all rounds)."""
        return round_steps

    def report(self) -> dict[str, Any]:
        """Method-specific entries for results.json (e.g. IMP's rounds)."""
        return {}

    def before_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Decide masks at update events, then zero the gradients of inactive weights.

        Args:
            step: Optimizer steps completed so far (Lightning's `global_step`).
            optimizer: The optimizer about to step (its state is cleared where masks change).

        Returns:
            Metrics to log (empty when nothing changed).
        """
        metrics: dict[str, float] = {}
        event = step if self.is_update_step(step) else self._deferred_step
        if event is not None and not self.grads_finite():
            # The AMP scaler skips a step with inf/NaN gradients: masks must not move on it, and the event is
            # carried out at the next finite step (so the target is still reached when the `end` event was skipped).
            self._deferred_step = event
        elif event is not None:
            self._deferred_step = None
            before = {k: v.clone() for k, v in self.masks.masks.items()}
            self.update(event)
            metrics = self._after_update(before, optimizer)
            self.events += 1
        self.masks.apply_to_grads()
        return metrics

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Re-mask the weights after the optimizer moved them."""
        self.masks.apply_to_weights()

    def finalize(self) -> None:
        """Fold masks into the weights and remove every buffer, leaving the plain architecture."""
        self.masks.remove()

    # ----------------------------------------------------------------------------------------- decisions
    def is_update_step(self, step: int) -> bool:
        """Whether masks are updated at this optimizer step."""
        return self.schedule.is_event(step)

    def grads_finite(self) -> bool:
        """False when a gradient holds inf/NaN (the AMP scaler will skip this step: masks must not move)."""
        grads = [p.grad for p in self.masks.param_list() if p.grad is not None]
        if not grads:
            return True
        return bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())

    def scores(self) -> dict[str, torch.Tensor]:
        """Importance of every targeted weight: |w|, with inactive weights ranked below every active one.

        Ranking inactive weights last makes magnitude masks monotone (pruned weights never return) even when
        an active weight is exactly zero.
        """
        out = {}
        for fqn in self.weights:
            w = self.masks.param(fqn).detach()
            out[fqn] = torch.where(self.masks.mask(fqn) != 0, w.abs(), torch.full_like(w, -1.0))
        return out

    def update(self, step: int) -> None:
        """Prune to the schedule's target at this step (magnitude by default)."""
        self.prune_to(self.schedule.sparsity_at(step))

    def prune_to(self, sparsity: float) -> None:
        """Set masks so the targeted weights reach `sparsity` under the configured granularity/allocation."""
        scores = self.scores()
        if self.granularity == "channel":
            self._prune_channels(sparsity)
        elif self.granularity == "nm":
            keep = self.m - round((self.m - self.n) * (sparsity / self.sparsity)) if self.sparsity > 0 else self.m
            for fqn, s in scores.items():
                self.masks.set(fqn, nm_mask(s, keep, self.m))
        else:
            for fqn, k in self.keep_counts(scores, sparsity).items():
                self.masks.set(fqn, topk_mask(scores[fqn], k))

    def keep_counts(self, scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, int]:
        """Active weights per layer for a global sparsity under the configured allocation."""
        numels = {fqn: s.numel() for fqn, s in scores.items()}
        if self.allocation == "global":
            return global_keep_counts(scores, sparsity)
        if self.allocation == "erk":
            densities = erk_densities({f: s.shape for f, s in scores.items()}, sparsity)
        else:
            densities = {f: 1.0 - sparsity for f in numels}
        return keep_counts(densities, numels)

    def _prune_channels(self, sparsity: float) -> None:
        masks = self.masks.masks
        params = {fqn: p.detach() * masks[fqn] for fqn, p in self.masks.params.items()}
        group_scores = []
        for g in self.groups:
            alive = self._group_alive(g)
            s = normalize_group_scores(g.scores(params).float(), alive)
            group_scores.append(torch.where(alive, s, torch.full_like(s, -1.0)))
        if self.allocation == "global":
            flat = torch.cat(group_scores)
            keep_total = max(len(self.groups), round((1.0 - sparsity) * flat.numel()))
            chosen = topk_mask(flat, keep_total)
            keeps = list(torch.split(chosen, [g.size for g in self.groups]))
        else:
            keeps = [
                topk_mask(s, max(1, round((1.0 - sparsity) * g.size)))
                for g, s in zip(self.groups, group_scores, strict=True)
            ]
        new = {fqn: torch.ones_like(m) for fqn, m in self.masks.masks.items()}
        for g, keep in zip(self.groups, keeps, strict=True):
            if not keep.any():  # a group keeps at least its best channel so the network stays connected
                keep = topk_mask(group_scores[self.groups.index(g)], 1)
            g.expand(keep, new)
        for fqn, mask in new.items():
            self.masks.set(fqn, mask)

    def _group_alive(self, group: ChannelGroup) -> torch.Tensor:
        """Channels of a group still active (its first producer's rows not all zero)."""
        first = group.slices[0]
        mask = self.masks.mask(first.param)
        rows = mask.movedim(first.dim, 0)
        index = first.index if first.index.ndim == 1 else first.index[:, 0]
        return rows.reshape(rows.shape[0], -1)[index.to(rows.device)].any(dim=1)

    def churn(self, before: dict[str, torch.Tensor]) -> float:
        """Fraction of the targeted weights active now that were inactive in `before` (newly grown)."""
        grown = active = 0
        for fqn in self.weights:
            new, old = self.masks.mask(fqn), before[fqn]
            grown += int(((new != 0) & (old == 0)).sum())
            active += int(new.count_nonzero())
        return grown / active if active else 0.0

    def _after_update(self, before: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Clear optimizer state where masks changed; report churn and apply the masks to the weights."""
        masks = self.masks.masks
        changed = {fqn: old != masks[fqn] for fqn, old in before.items()}
        self.masks.zero_optimizer_state(optimizer, {fqn: d for fqn, d in changed.items() if d.any()})
        with torch.no_grad():  # regrown weights start at 0 (inactive weights already are; this makes it a guarantee)
            for fqn, old in before.items():
                self.masks.param(fqn).masked_fill_((old == 0) & (masks[fqn] != 0), 0.0)
        self.masks.apply_to_weights()
        self.last_churn = self.churn(before)
        return {"mask/churn": self.last_churn}

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Plain state for exact resume (masks themselves are buffers in the model's state_dict)."""
        return {
            "version": STATE_VERSION,
            "key": self.key,
            "events": self.events,
            "rng": self.generator.get_state(),
            "last_churn": self.last_churn,
            "deferred_step": self._deferred_step,
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state; held until `attach` when the pruner is not attached yet."""
        if state.get("key", self.key) != self.key:
            raise ValueError(f"checkpoint holds state of pruner {state.get('key')!r}, not {self.key!r}")
        if self.masks is None:
            self._pending_state = state
        else:
            self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
        self.events = state.get("events", 0)
        self.last_churn = state.get("last_churn", 0.0)
        self._deferred_step = state.get("deferred_step")
        if "rng" in state:
            self.generator.set_state(state["rng"])
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        """Subclass state to save (plain types and tensors)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` saved."""

    # ----------------------------------------------------------------------------------------- reporting
    def mask_dict(self) -> dict[str, torch.Tensor]:
        """Current hard masks keyed by parameter FQN (`layer1.0.conv1.weight`)."""
        return dict(self.masks.masks)

    def layer_sparsity(self) -> dict[str, float]:
        """Sparsity of each targeted layer, keyed by module FQN."""
        return {name: 1.0 - self.masks.density(fqn) for fqn, name in self.weights.items()}

    def global_sparsity(self) -> float:
        """Fraction of inactive targeted weights, from the masks."""
        masks = [self.masks.mask(f) for f in self.weights]
        total = sum(m.numel() for m in masks)
        active = int(sum(m.count_nonzero() for m in masks)) if masks else 0
        return 1.0 - active / total

    def describe(self) -> dict[str, Any]:
        """Hyper-parameters for results.json."""
        return {
            "key": self.key,
            "sparsity": self.sparsity,
            "granularity": self.granularity,
            "allocation": self.allocation,
            "schedule": self.schedule_kind,
            "begin": self.begin,
            "end": self.end,
            "update_every": self.update_every,
        }
