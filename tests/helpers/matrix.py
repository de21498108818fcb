"""The method matrix: every registered pruner × every granularity its class defines (`cls.granularities`), the
budgets the tests run each pruner at, and which cells the default suite runs.

Every matrix test takes its cells from here (`cells()` for pytest params, `matrix()` for plain pairs) and its
pruners from `make()`, so a new pruner file joins every matrix without a test being edited. The default suite
runs each pruner at its default granularity (plus every granularity of the pruners a test names); the other cells
are marked slow (`make test-all`). Known bugs are strict xfail cells: they fail the suite once fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from sparsetrain.pruners import list_pruners

PRUNERS = list_pruners()

# Per-pruner budgets whose events spread over the 12 optimizer steps of a 3-epoch fit of `Net` on `loader()`
# (4 batches per epoch), so that they straddle the moves, checkpoints and bad steps the tests put in that fit.
BUDGETS: dict[str, dict[str, Any]] = {
    "magnitude": {"begin": 0.5},
    "gmp": {"update_every": 2},
    "imp": {"rounds": 2},
    "granet": {"update_every": 2},
    "rigl": {"update_every": 2},
    "set": {"update_every": 2},
    "pdp": {"threshold_every": 1},
    "bip": {"warmup": 0.25, "finetune": 0.25},
}
DEFAULT_BUDGET: dict[str, Any] = {"update_every": 2}  # a pruner without an entry in BUDGETS
# LAPP's budget is FLOPs; it slims at step 6 of 12.
LAPP_BUDGET: dict[str, Any] = {"max_flops_ratio": 0.5, "end": 0.5, "update_every": 2, "threshold_lr": 0.05}
GRANULARITIES: dict[str, dict[str, Any]] = {
    "unstructured": {"sparsity": 0.5},
    "nm": {"granularity": "nm"},  # 2:4, its sparsity implied
    "channel": {"sparsity": 0.5},
}
# Slims the network physically at its `end` toward a FLOPs budget: no masks to check afterwards.
SLIMMING = frozenset({"lapp"})

Cell = tuple[str, str]


def default_granularity(cls: type) -> str:
    """The granularity a pruner runs at in the default suite: unstructured where it defines it."""
    return "unstructured" if "unstructured" in cls.granularities else cls.granularities[0]


def make(key: str, granularity: str, **extra: Any):
    """The pruner of a cell at its test budget (`BUDGETS`, LAPP: `LAPP_BUDGET`); `extra` overrides it."""
    cls = PRUNERS[key]
    if key == "lapp":
        return cls(**{**LAPP_BUDGET, **extra})
    kw = {**BUDGETS.get(key, DEFAULT_BUDGET), **GRANULARITIES[granularity], **extra}
    kw["granularity"] = granularity
    return cls(**kw)


def matrix(exclude: Iterable[str] = ()) -> list[Cell]:
    """(key, granularity) for every registered pruner (by key) and every granularity it defines, less `exclude`."""
    skip = set(exclude)
    return [(k, g) for k, cls in sorted(PRUNERS.items()) if k not in skip for g in cls.granularities]


def cells(
    *variants: str,
    exclude: Iterable[str] = (),
    every_granularity: Iterable[str] = (),
    known: Mapping[str | Cell, str] | None = None,
) -> list:
    """`matrix(exclude)` as pytest params `(key, granularity[, variant])`, id `key-granularity[-variant]`.

    The default suite runs each pruner at its default granularity, the pruners in `every_granularity` at all of
    theirs, and only the first variant; the other cells are marked slow. `known` maps a pruner key or a
    (key, granularity) cell to the reason of a known bug: those cells are strict xfail.
    """
    everywhere, known = set(every_granularity), known or {}
    out = []
    for key, granularity in matrix(exclude):
        cls = PRUNERS[key]
        for i, variant in enumerate(variants or (None,)):
            fast = (granularity == default_granularity(cls) or key in everywhere) and i == 0
            marks = [] if fast else [pytest.mark.slow]
            bug = next((k for k in ((key, granularity), key) if k in known), None)
            if bug is not None:
                marks.append(pytest.mark.xfail(strict=True, reason=known[bug]))
            args = (key, granularity) if variant is None else (key, granularity, variant)
            out.append(pytest.param(*args, marks=marks, id="-".join(args)))
    return out
