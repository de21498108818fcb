"""Sparsity as a pure function of the optimizer step.

Positions are given as fractions of all optimizer steps (`begin`, `end`) and converted once to step
indices; update events fall every `update_every` steps from `begin_step`, and `end_step` is always an event,
so the last update lands exactly on the target whatever the period (the official GraNet code stops one
event short).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("oneshot", "linear", "cubic")


@dataclass(frozen=True)
class SparsitySchedule:
    """Sparsity target s(step) between `initial` and `final`.

    `cubic` is Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)·(1 − (t − t₀)/(t_e − t₀))³;
    `linear` interpolates; `oneshot` jumps to `final` at `begin_step`.
    """

    kind: str
    final: float
    begin_step: int
    end_step: int
    update_every: int = 1
    initial: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"pruner.schedule must be one of {', '.join(SCHEDULES)}; got {self.kind!r}")
        if self.update_every < 1:
            raise ValueError(f"pruner.update_every must be >= 1 optimizer step, got {self.update_every}")
        if not 0 <= self.begin_step <= self.end_step:
            raise ValueError(
                f"pruning window must satisfy 0 <= begin <= end, got steps {self.begin_step}..{self.end_step}"
            )

    def sparsity_at(self, step: int) -> float:
        """Target sparsity after the update event at `step` (held constant between events)."""
        if step < self.begin_step:
            return self.initial
        if self.kind == "oneshot" or step >= self.end_step or self.end_step == self.begin_step:
            return self.final
        last_event = self.begin_step + (step - self.begin_step) // self.update_every * self.update_every
        progress = (last_event - self.begin_step) / (self.end_step - self.begin_step)
        if self.kind == "linear":
            return self.initial + (self.final - self.initial) * progress
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3

    def is_event(self, step: int) -> bool:
        """Whether the pruner updates its masks at this optimizer step."""
        if self.kind == "oneshot":
            return step == self.begin_step
        if step < self.begin_step or step > self.end_step:
            return False
        return step == self.end_step or (step - self.begin_step) % self.update_every == 0


def to_step(fraction: float, total_steps: int, key: str) -> int:
    """Convert a position given as a fraction of all optimizer steps to a step index."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"pruner.{key} is a fraction of all optimizer steps and must be in [0, 1], got {fraction}")
    return min(total_steps - 1, round(fraction * total_steps)) if total_steps > 0 else 0
