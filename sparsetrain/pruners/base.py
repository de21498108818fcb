"""The pruner protocol: what `SparsityCallback` (or any training loop) calls, the same for every method.

    pruner.attach(model, total_steps, example_input)      # before the optimizer is built: masks, parametrizations
    steps = pruner.fit_steps(total_steps)                 # optimizer steps the fit needs (IMP: every round)
    pruner.on_fit_start(optimizer, schedulers, steps_per_epoch)
    for step in range(steps):
        pruner.before_forward(step)                       # soft masks refresh thresholds, IMP rewinds
        loss = task_loss + (pruner.penalty() or 0)        # a method's loss term (learnable thresholds)
        loss.backward()
        metrics = pruner.before_optimizer_step(step, optimizer)   # decide masks at events, mask gradients
        optimizer.step()
        pruner.after_optimizer_step(step, optimizer)      # re-mask weights; a method's own optimizer steps
        pruner.on_validation({"val/acc": ...})            # whenever a validation ran
    pruner.on_fit_end(); pruner.finalize()                # hard masks folded in, plain architecture

A method subclasses `Pruner`, registers itself with `@register_pruner("key")` and overrides what it needs;
a method with trainable parameters of its own returns them from `extra_parameters()` and steps its own
optimizer in `after_optimizer_step`. Granularity (unstructured, N:M, channel) is a strategy
(`sparsetrain.strategies`) every method calls through `prune_to`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from sparsetrain.masking import MaskSet
from sparsetrain.pruner_keys import SharedKeys, check_fraction, registry, shared_key_doc
from sparsetrain.schedules import SparsitySchedule, to_step
from sparsetrain.strategies import make_granularity
from sparsetrain.targets import select_targets

STATE_VERSION = 1


def register_pruner(key: str):
    """Class decorator adding a pruner to the registry under `key` (= its `conf/pruner/<key>.yaml`)."""

    def wrap(cls: type[Pruner]) -> type[Pruner]:
        cls.key = key
        registry[key] = cls
        return cls

    return wrap


def list_pruners() -> dict[str, type[Pruner]]:
    """Registered pruners by key (every module in `sparsetrain/pruners/` is imported, so a new file is found)."""
    from sparsetrain import pruners

    pruners.discover()
    return dict(registry)


class Pruner(SharedKeys):
    __doc__ = (
        "Base class of every method: the shared keys, the lifecycle and hard-mask enforcement.\n\n" + shared_key_doc
    )

    key: ClassVar[str] = "base"
    unused_keys: ClassVar[tuple[str, ...]] = ()  # shared keys this method ignores: YAML null, anything else refused

    def __init_subclass__(cls, **kw: Any) -> None:
        """Record every constructor's arguments (defaults filled in), so `describe()` cannot drift from them."""
        super().__init_subclass__(**kw)
        if "__init__" not in cls.__dict__:
            return
        init, signature = cls.__init__, inspect.signature(cls.__init__)

        @functools.wraps(init)
        def recording_init(self, *args: Any, **kwargs: Any) -> None:
            if not hasattr(self, "_config"):  # the user-facing call: refuse keys this method does not use
                unused = sorted(k for k in self.unused_keys if kwargs.get(k) is not None)
                if unused:
                    raise ValueError(
                        f"pruner.{unused[0]} is not used by {self.key} ({type(self).__name__}); leave it unset "
                        f"(keys this method ignores: {', '.join(self.unused_keys)})"
                    )
                kwargs = {k: v for k, v in kwargs.items() if not (k in self.unused_keys and v is None)}
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            config = getattr(self, "_config", {})
            for name, param in signature.parameters.items():
                if name != "self" and param.kind is not inspect.Parameter.VAR_KEYWORD:
                    config.setdefault(name, bound.arguments[name])  # the outermost (user-facing) value wins
            self._config = config
            init(self, *args, **kwargs)

        cls.__init__ = recording_init

    def __init__(self, **shared: Any) -> None:
        self._config = getattr(self, "_config", {})
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
        candidates = select_targets(model, self.include, self.exclude, self.keep_first_last)
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

    def total_fit_steps(self, budget: int) -> int:
        """Former name of `fit_steps`."""
        return self.fit_steps(budget)

    def on_fit_start(
        self, optimizer: torch.optim.Optimizer, schedulers: Sequence[Any] = (), steps_per_epoch: int | None = None
    ) -> None:
        """Training is about to start: the optimizer, LR schedulers and the epoch length exist now."""
        self.optimizer, self.schedulers = optimizer, list(schedulers)
        self.steps_per_epoch = steps_per_epoch or self.steps_per_epoch

    def extra_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters the method owns (thresholds, scores); never in the user's optimizer."""
        return []

    def penalty(self) -> torch.Tensor | None:
        """A loss term added to the task loss of every training step (None: the method has none)."""
        return None

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
        """Method-specific entries for results.json (e.g. IMP's rounds)."""
        return {}

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
        """Whether masks are updated at this optimizer step."""
        return self.schedule.is_event(step)

    def grads_finite(self) -> bool:
        """False when a gradient holds inf/NaN (the AMP scaler will skip this step: masks must not move)."""
        grads = [p.grad for p in self.masks.param_list() if p.grad is not None]
        return not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())

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

    def _group_alive(self, group: Any) -> torch.Tensor:
        return self.granularity_strategy.alive(self.masks, group)

    def record_event(self, before: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None) -> None:
        """Masks changed outside `before_optimizer_step` (a round, a hardening): clean up and log at the next step."""
        self._pending_metrics = self._after_update(before, optimizer)
        self.events += 1

    def churn(self, before: dict[str, torch.Tensor]) -> float:
        """Fraction of the targeted weights active now that were inactive in `before` (newly grown)."""
        grown = active = 0
        for fqn in self.weights:
            new = self.masks.mask(fqn)
            grown += int(((new != 0) & (before[fqn] == 0)).sum())
            active += int(new.count_nonzero())
        return grown / active if active else 0.0

    def _after_update(self, before: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None) -> dict:
        """Clear optimizer state where masks changed; regrown weights start at 0; report churn; re-mask."""
        masks = self.masks.masks
        changed = {fqn: old != masks[fqn] for fqn, old in before.items()}
        if optimizer is not None:
            self.masks.zero_optimizer_state(optimizer, {fqn: d for fqn, d in changed.items() if d.any()})
        with torch.no_grad():
            for fqn, old in before.items():
                self.masks.param(fqn).masked_fill_((old == 0) & (masks[fqn] != 0), 0.0)
        if self.masks_weights:
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
            "seen_step": self._seen_step,
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
        self._seen_step = state.get("seen_step", self._seen_step)
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
        return self.masks.masks

    def layer_sparsity(self) -> dict[str, float]:
        """Sparsity of each targeted layer, keyed by module FQN."""
        return {name: 1.0 - self.masks.density(fqn) for fqn, name in self.weights.items()}

    def global_sparsity(self) -> float:
        """Fraction of inactive targeted weights, from the masks."""
        masks = [self.masks.mask(f) for f in self.weights]
        return 1.0 - int(sum(m.count_nonzero() for m in masks)) / sum(m.numel() for m in masks)

    def describe(self) -> dict[str, Any]:
        """Every constructor keyword with the value this pruner was built with (results.json `pruner_config`)."""
        return {"key": self.key, **self._config}


__all__ = ["Pruner", "check_fraction", "list_pruners", "register_pruner"]
