"""Iterative magnitude pruning with rewinding (lottery tickets)."""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch

from sparsetrain.pruners.base import Pruner, register_pruner

REWINDINGS = ("weights", "lr")


@register_pruner("imp")
class IMP(Pruner):
    """Iterative magnitude pruning with rewinding, all rounds in one fit.

    Frankle et al. 2020 ("Linear mode connectivity and the lottery ticket hypothesis", arXiv:1912.05671):
    train; prune `prune_fraction` of the remaining weights by global magnitude; rewind the survivors to
    their values θ_k at optimizer step `rewind_step`, together with the learning-rate schedule and the
    optimizer state; train the remaining steps; repeat. Renda et al. 2020 (arXiv:2003.02389) learning-rate
    rewinding (`rewinding="lr"`) keeps the trained weights and only replays schedule and optimizer state.

    The configured training budget is one round of T steps: the fit runs T + R·(T − k) optimizer steps for R
    pruning rounds (the callback extends the trainer). Rounds are `rounds` when given, else as many as needed
    to reach `sparsity` with `prune_fraction` per round, the last round's fraction adjusted so the run lands
    exactly on `sparsity`. With `rounds` given, every round prunes the same fraction of the remaining weights,
    1 − (1 − sparsity)^(1/rounds), so the last round lands on `sparsity` too.

    Where the paper is silent: BN running statistics are rewound with the weights; each round's `val_acc`
    is the last validation before the round ends (the end of the epoch in which it ends when rounds align
    with epochs, as with `rewind_step=0`).

    Args:
        sparsity: Final fraction of zeros over the targeted weights.
        prune_fraction: Fraction of the remaining weights pruned per round (0.2).
        rounds: Number of pruning rounds; None = enough to reach `sparsity`.
        rewind_step: Optimizer step k whose weights/schedule/optimizer state every round rewinds to.
        rewinding: `weights` (Frankle et al.) or `lr` (Renda et al.).
        **common: Shared pruner keys (allocation `global` by default; granularity).
    """

    unused_keys = ("schedule", "begin", "end", "update_every")  # rounds, not a schedule

    def __init__(
        self,
        *,
        sparsity: float | None = None,
        prune_fraction: float = 0.2,
        rounds: int | None = None,
        rewind_step: int = 0,
        rewinding: str = "weights",
        **common: Any,
    ) -> None:
        common.setdefault("schedule", "oneshot")
        super().__init__(sparsity=sparsity, **common)
        if not 0.0 < prune_fraction < 1.0:
            raise ValueError(f"pruner.prune_fraction must be in (0, 1), got {prune_fraction}")
        if rounds is not None and (not isinstance(rounds, int) or rounds < 1):
            raise ValueError(f"pruner.rounds must be an integer >= 1, got {rounds!r}")
        if not isinstance(rewind_step, int) or rewind_step < 0:
            raise ValueError(f"pruner.rewind_step must be an integer >= 0 optimizer steps, got {rewind_step!r}")
        if rewinding not in REWINDINGS:
            raise ValueError(f"pruner.rewinding must be one of {', '.join(REWINDINGS)}; got {rewinding!r}")
        self.prune_fraction, self.rewind_step, self.rewinding = prune_fraction, rewind_step, rewinding
        self.explicit_rounds = rounds is not None
        if rounds is None:
            rounds = max(1, math.ceil(math.log(1.0 - self.sparsity) / math.log(1.0 - prune_fraction) - 1e-9))
        self.rounds = rounds
        self.round = 0
        self.history: list[dict[str, Any]] = []
        self._snapshot: dict[str, Any] | None = None
        self.last_val_acc: float | None = None
        self._wall_before, self._clock = 0.0, time.monotonic()  # wall time of the fit, summed over resumes

    def round_sparsity(self, r: int) -> float:
        """Sparsity after pruning round r (1-based); the last round lands exactly on `sparsity`."""
        if r >= self.rounds:
            return self.sparsity
        if self.explicit_rounds:  # spread evenly: the same fraction of the remaining weights every round
            return 1.0 - (1.0 - self.sparsity) ** (r / self.rounds)
        return min(self.sparsity, 1.0 - (1.0 - self.prune_fraction) ** r)

    def on_attach(self) -> None:
        self._clock = time.monotonic()
        self.round_steps = self.total_steps
        if self.rewind_step >= self.round_steps:
            raise ValueError(
                f"pruner.rewind_step={self.rewind_step} must be below the {self.round_steps} steps of a round"
            )

    def on_validation(self, metrics: dict[str, float]) -> None:
        if "val/acc" in metrics:
            self.last_val_acc = metrics["val/acc"]

    def fit_steps(self, round_steps: int) -> int:
        return round_steps + self.rounds * (round_steps - self.rewind_step)

    def round_end(self, r: int) -> int:
        """Global step at which round r (0 = dense) ends."""
        return self.round_steps + r * (self.round_steps - self.rewind_step)

    def is_update_step(self, step: int) -> bool:
        return False  # masks change only at round transitions, in before_forward

    def before_forward(self, step: int) -> None:
        if not self.first_forward_of_step(step):
            return
        if step == self.rewind_step and self.round == 0 and self._snapshot is None:
            self._snapshot = self._take_snapshot()
        if self.round < self.rounds and step == self.round_end(self.round):
            self._next_round(step)

    def _take_snapshot(self) -> dict[str, Any]:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items() if not k.endswith("_mask")}
        return {
            "model": state,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "schedulers": [copy.deepcopy(s.state_dict()) for s in self.schedulers],
        }

    @torch.no_grad()
    def _next_round(self, step: int) -> None:
        self.history.append(self._record(self.round, step))
        self.round += 1
        before = {k: v.clone() for k, v in self.masks.masks.items()}
        self.prune_to(self.round_sparsity(self.round))
        if self.rewinding == "weights":
            self.model.load_state_dict(self._snapshot["model"], strict=False)
        self.optimizer.load_state_dict(copy.deepcopy(self._snapshot["optimizer"]))
        for sched, state in zip(self.schedulers, self._snapshot["schedulers"], strict=True):
            sched.load_state_dict(state)
            for group, lr in zip(self.optimizer.param_groups, sched.get_last_lr(), strict=False):
                group["lr"] = lr
        self.masks.zero_optimizer_state(self.optimizer, {k: (m == 0) for k, m in self.masks.masks.items()})
        self.record_event(before, self.optimizer)  # churn, sparsity/<layer> and flops/ratio logged at this step

    def _record(self, r: int, step: int) -> dict[str, Any]:
        return {
            "round": r,
            "sparsity": self.global_sparsity(),
            "val_acc": self.last_val_acc,
            "steps": self.round_steps if r == 0 else self.round_steps - self.rewind_step,
            "end_step": step,
            "wall_s": round(self.wall_seconds(), 2),
        }

    def wall_seconds(self) -> float:
        """Wall time since the fit began (validation included), summed over the processes of a resumed run."""
        return self._wall_before + time.monotonic() - self._clock

    def on_fit_end(self) -> None:
        if len(self.history) == self.round:
            self.history.append(self._record(self.round, self.round_end(self.round)))

    def report(self) -> dict[str, Any]:
        return {"rounds": self.history}

    def extra_state(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "history": self.history,
            "snapshot": self._snapshot,
            "seen_step": self._seen_step,
            "wall_s": self.wall_seconds(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.round = state.get("round", 0)
        self.history = list(state.get("history", []))
        self._snapshot = state.get("snapshot")
        self._seen_step = state.get("seen_step", -1)
        self._wall_before, self._clock = float(state.get("wall_s", 0.0)), time.monotonic()
