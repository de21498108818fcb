"""One-shot magnitude pruning and gradual magnitude pruning (GMP)."""

from __future__ import annotations

from typing import Any

from sparsetrain.pruners.base import Pruner, register_pruner


@register_pruner("magnitude")
class Magnitude(Pruner):
    """One-shot magnitude pruning at `begin`, then training with the mask fixed.

    Prunes the smallest |w| (per the `allocation`: one global ranking by default) to `sparsity` in a single
    event at `begin` (a fraction of all optimizer steps; 0.5 by default, so the dense half trains first and
    the sparse half fine-tunes).

    Args:
        sparsity: Final fraction of zeros over the targeted weights.
        **common: Shared pruner keys (see `Pruner`).
    """

    unused_keys = ("schedule", "end", "update_every")  # one event, at `begin`

    def __init__(self, *, sparsity: float | None = None, begin: float = 0.5, **common: Any) -> None:
        super().__init__(sparsity=sparsity, begin=begin, end=begin, schedule="oneshot", **common)


@register_pruner("gmp")
class GMP(Pruner):
    """Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune", arXiv:1710.01878).

    Every `update_every` optimizer steps between `begin` and `end`, the smallest-magnitude weights are
    pruned so that sparsity follows s_t = s_f·(1 − (1 − (t − t₀)/(t_e − t₀))³); the last event is at `end`
    and lands exactly on `sparsity`. Masks only shrink: a pruned weight never returns.

    Where the paper is silent: allocation is global (one ranking across layers, re-solved at every event;
    the paper's TF code prunes each layer to the same sparsity, available as `allocation=uniform`), and the
    first conv and the classifier stay dense.

    Args:
        sparsity: Final fraction of zeros over the targeted weights.
        **common: Shared pruner keys (see `Pruner`).
    """

    def __init__(self, *, sparsity: float | None = None, **common: Any) -> None:
        common.setdefault("schedule", "cubic")
        super().__init__(sparsity=sparsity, **common)
