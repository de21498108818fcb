"""The pruner protocol: what `SparsityCallback` (or any training loop) calls, the same for every method.

    pruner.attach(model, total_steps, example_input)   # before the optimizer exists: masks, parametrizations
    pruner.on_fit_start(optimizer, schedulers, steps_per_epoch); run pruner.fit_steps(total_steps) steps of:
        pruner.before_forward(step); task_loss.backward(); pruner.penalty() (if any) backward, scaled likewise
        metrics = pruner.before_optimizer_step(step, optimizer)   # decide masks at events, mask gradients
        optimizer.step(); pruner.after_optimizer_step(step, optimizer)   # re-mask; a method's own optimizer
        pruner.on_validation({"val/acc": ...})        # whenever a validation ran
    pruner.on_fit_end(); pruner.finalize()             # hard masks folded in: the plain architecture

A method is one file: a `Pruner` subclass with `@register_pruner("key")`, overriding what it needs (trainable
parameters of its own come from `extra_parameters()` and are stepped by the method). What depends on the grain
(top-k, expansion, mask forms, regrowth) belongs to the granularity (`sparsetrain.granularity`): `prune_to`, or
its `decide`/`apply`, `soft_masks`, `swap` for methods holding their own scores, soft masks or regrowth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sparsetrain.granularity import make_granularity
from sparsetrain.masking import MaskSet, active_counts
from sparsetrain.pruner_keys import ConfiguredPruner, check_fraction, register_pruner, shared_key_doc
from sparsetrain.schedules import SparsitySchedule, to_step
from sparsetrain.slim import ChannelRemoval
from sparsetrain.targets import select_targets

STATE_VERSION = 1


class Pruner(ConfiguredPruner):
    __doc__ = (
        "Base class of every method: the shared keys, the lifecycle and hard-mask enforcement.\n\n" + shared_key_doc
    )

    def __init__(self, **shared: Any) -> None:
        super().__init__(**shared)
        self.granularity_strategy = make_granularity(self.granularity, self.allocation, self.n, self.m)
        self.model: nn.Module | None = None
        self.masks: MaskSet | None = None
        self.events = 0
        self.last_churn = 0.0
        self.steps_per_epoch: int | None = None
        self._pending_metrics: dict[str, float] = {}  # an event outside before_optimizer_step, logged at the next one
        self._deferred_step: int | None = None  # an update event the AMP scaler skipped: done at the next step
        self._seen_step = -1  # last step `first_forward_of_step` saw (gradient accumulation)
        self._pending_state: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def attach(self, model: nn.Module, total_steps: int, example_input: torch.Tensor | None = None) -> None:
        """Select targets, create mask buffers and the schedule. Call before the optimizer is built."""
        if total_steps < 1:
            raise ValueError(f"training must have at least one optimizer step, got {total_steps}")
        self.model, self.total_steps = model, int(total_steps)
        candidates = self.candidates(model)
        self.targets, self.skipped, extra = self.granularity_strategy.select(model, candidates, example_input)
        self.groups = self.granularity_strategy.groups
        self.weights = {f"{name}.weight": name for name in self.targets}
        self.before_masks(self.targets)
        self.masks = MaskSet(model, [*self.weights, *extra])
        self.generator = torch.Generator().manual_seed(self.seed)
        self.schedule = self.build_schedule()
        self.on_attach()
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def candidates(self, model: nn.Module) -> dict[str, nn.Module]:
        """Layers the granularity may target: the shared include/exclude/keep_first_last selection."""
        return select_targets(model, self.include, self.exclude, self.keep_first_last)

    def before_masks(self, targets: dict[str, nn.Module]) -> None:
        """Hook after targets and channel groups are known, before mask buffers exist (parametrizations)."""

    def build_schedule(self) -> SparsitySchedule:
        """The sparsity schedule in optimizer steps (overridable, e.g. for a non-zero initial sparsity)."""
        begin = to_step(self.begin, self.total_steps, "begin")
        end = max(begin, to_step(self.end, self.total_steps, "end"))
        return SparsitySchedule(self.schedule_kind, self.sparsity, begin, end, self.update_every)

    def on_attach(self) -> None:
        """Hook for subclasses (initial masks, extra state)."""

    def fit_steps(self, budget: int) -> int:
        """Optimizer steps the whole fit needs when the configured budget is `budget` (IMP: all rounds)."""
        return budget

    def on_fit_start(
        self, optimizer: torch.optim.Optimizer, schedulers: Sequence[Any] = (), steps_per_epoch: int | None = None
    ) -> None:
        """Training is about to start: the optimizer, LR schedulers and the epoch length exist now."""
        self.optimizer, self.schedulers = optimizer, list(schedulers)
        self.steps_per_epoch = steps_per_epoch or self.steps_per_epoch

    def extra_parameters(self) -> list[nn.Parameter]:
        return []  # trainable parameters the method owns (thresholds, scores); never in the user's optimizer

    def penalty(self) -> torch.Tensor | None:
        return None  # a loss term whose gradient joins the task loss's after each backward (None: there is none)

    def on_validation(self, metrics: dict[str, float]) -> None:
        """Validation results of the latest epoch (e.g. IMP records each round's accuracy)."""

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

    def report(self) -> dict[str, Any]:
        return {}  # method-specific entries for results.json (e.g. IMP's rounds)

    def removed_channels(self) -> list[ChannelRemoval]:
        return []  # channels the method removed physically during training (LAPP's slimming), for the export

    def accounting(self, example_input: torch.Tensor | None) -> dict[str, Any] | None:
        return None  # the final model's params/FLOPs when masks do not describe it (LAPP: the slimmed network)

    def before_model_load(self, state: dict[str, Any]) -> None:
        """A checkpoint's pruner state, before its weights load (LAPP replays its slimming so shapes match)."""

    @property
    def masks_weights(self) -> bool:
        """Whether the masks are enforced on the weights now (False while a soft mask only reports them)."""
        return True

    def before_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Decide masks at update events, then zero the gradients of inactive weights.

        Returns the metrics of a mask change to log at this step (empty when nothing changed). An update event
        on a step whose gradients hold inf/NaN (the AMP scaler skips it) is carried out at the next finite step.
        """
        metrics, self._pending_metrics = self._pending_metrics, {}
        event = step if self.is_update_step(step) else self._deferred_step
        if event is not None and not self.grads_finite():
            self._deferred_step = event
        elif event is not None:
            self._deferred_step = None
            before = {k: v.clone() for k, v in self.masks.masks.items()}
            self.update(event)
            metrics = self._after_update(before, optimizer)
            self.events += 1
        if self.masks_weights:
            self.masks.apply_to_grads()
        return metrics

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Re-mask the weights after the optimizer moved them."""
        if self.masks_weights:
            self.masks.apply_to_weights()

    def finalize(self) -> None:
        """Fold masks into the weights and remove every buffer, leaving the plain architecture."""
        self.masks.remove()

    # ----------------------------------------------------------------------------------------- decisions
    def is_update_step(self, step: int) -> bool:
        return self.schedule.is_event(step)  # whether masks are updated at this optimizer step

    def grads_finite(self) -> bool:
        return self.masks.grads_finite()  # False on inf/NaN (the AMP scaler skips this step: masks must not move)

    def scores(self) -> dict[str, torch.Tensor]:
        """Importance of every targeted weight: |w|, inactive weights ranked below every active one (so
        magnitude masks are monotone even when an active weight is exactly zero)."""
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
        self.granularity_strategy.prune(self.masks, self.weights, self.scores(), sparsity)

    def record_event(self, before: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None) -> None:
        """Masks changed outside `before_optimizer_step` (a round, a hardening): clean up and log at the next step."""
        self._pending_metrics = self._after_update(before, optimizer)
        self.events += 1

    def churn(self, before: dict[str, torch.Tensor]) -> float:
        """Fraction of the targeted weights active now that were inactive in `before` (newly grown)."""
        return self.masks.grown_fraction(before, self.weights)

    def _after_update(self, before: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None) -> dict:
        """Settle a mask change (optimizer state, regrown weights at 0, re-mask where the masks act on the
        weights) and report it: its churn and the method's `event_metrics`."""
        if self.settles_events:
            self.masks.settle(before, optimizer, enforce=self.masks_weights)
        self.last_churn = self.churn(before)
        return {"mask/churn": self.last_churn, **self.event_metrics()}

    settles_events = True  # False: the masks only report the method's own decisions (LAPP), nothing to settle

    def event_metrics(self) -> dict[str, float]:
        """A method's own values to log at each mask event (LAPP: its FLOPs ratio, budget and thresholds)."""
        return {}

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
            "seen_step": self._seen_step,
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state; held until `attach` when the pruner is not attached yet."""
        if state.get("key", self.key) != self.key:
            raise ValueError(f"checkpoint holds state of pruner {state.get('key')!r}, not {self.key!r}")
        self._restore(state) if self.masks is not None else setattr(self, "_pending_state", state)

    def _restore(self, state: dict[str, Any]) -> None:
        self.events = state.get("events", 0)
        self.last_churn = state.get("last_churn", 0.0)
        self._deferred_step = state.get("deferred_step")
        self._seen_step = state.get("seen_step", self._seen_step)
        if "rng" in state:
            self.generator.set_state(state["rng"])
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        return {}  # subclass state to save (plain types and tensors)

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` saved."""

    # ----------------------------------------------------------------------------------------- reporting
    def mask_dict(self) -> dict[str, torch.Tensor]:
        return self.masks.masks  # current hard masks keyed by parameter FQN (`layer1.0.conv1.weight`)

    def layer_sparsity(self) -> dict[str, float]:
        """Sparsity of each targeted layer, keyed by module FQN."""
        counts = active_counts({fqn: self.masks.mask(fqn) for fqn in self.weights})  # one read, not one a layer
        return {name: 1.0 - counts[fqn] / self.masks.mask(fqn).numel() for fqn, name in self.weights.items()}

    def global_sparsity(self) -> float:
        """Fraction of inactive targeted weights, from the masks."""
        return 1.0 - self.masks.density(*self.weights)

    def granularity_metrics(self) -> dict[str, float]:
        """What the granularity reports besides the sparsities (channel runs: `channel_sparsity`), logged at every
        event and written to results.json. A method whose network outlives its masks (LAPP slims) gives its own."""
        return self.granularity_strategy.metrics(self.masks) if self.masks is not None else {}


__all__ = ["Pruner", "check_fraction", "register_pruner"]
