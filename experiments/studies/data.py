"""A study's rows, read from the CSV its sweeps write (`sparsetrain.sweep_summary`), grouped into cells.

A study lives in `experiments/studies/<study>/`: `runs/<job>/results.json` per job, `runs/summary.csv` (the
collector's CSV, rewritten at the end of every sweep and by `python -m sparsetrain.sweep_summary <runs dir>`).
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STUDIES = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Cell:
    """Every seed of one method at one setting."""

    method: str
    setting: float | None  # the target sparsity (None: dense)
    test_acc: tuple[float, ...]
    steps: tuple[int, ...]
    train_time_s: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.test_acc)

    @property
    def spread(self) -> float:
        """Half the range over seeds (0 with one seed)."""
        return (max(self.test_acc) - min(self.test_acc)) / 2


def csv_path(study: str) -> Path:
    return STUDIES / study / "runs" / "summary.csv"


def read_rows(study: str) -> list[dict[str, str]]:
    """The study's CSV rows that finished (a test accuracy recorded); none before the study ran."""
    path = csv_path(study)
    if not path.exists():  # no run yet (or `python -m sparsetrain.sweep_summary <runs dir>` not run)
        return []
    with path.open() as f:
        return [r for r in csv.DictReader(f) if r.get("test_acc")]


def target_setting(row: dict[str, str], settings: tuple[float, ...]) -> float | None:
    """The setting of a row of a sparsity study: its target, or (an IMP round) the setting its sparsity lands on;
    None for the dense reference (every setting)."""
    if row["pruner"] == "dense":
        return None
    if row.get("target"):
        return float(row["target"])
    reached = float(row["sparsity"])
    return next((s for s in settings if abs(reached - s) < 0.002), -1.0)


def flops_setting(row: dict[str, str], settings: tuple[float, ...]) -> float | None:
    """The setting of a row of a FLOPs-budget study: the budget its measured FLOPs ratio meets (within 0.02)."""
    if row["pruner"] == "dense":
        return None
    ratio = float(row["flops_ratio"]) if row.get("flops_ratio") else -1.0
    return next((s for s in settings if s - 0.02 <= ratio <= s + 1e-9), -1.0)


def cells(
    study: str, settings: tuple[float, ...], setting_of: Callable = target_setting
) -> dict[tuple[str, float | None], Cell]:
    """(method, setting) -> its cell; rows outside `settings` (other IMP rounds, other budgets) are left out."""
    grouped: dict[tuple[str, float | None], list[dict[str, str]]] = defaultdict(list)
    for row in read_rows(study):
        setting = setting_of(row, settings)
        if setting is None or setting in settings:
            grouped[(row["pruner"], setting)].append(row)
    return {
        key: Cell(
            key[0],
            key[1],
            tuple(float(r["test_acc"]) for r in rows),
            tuple(int(float(r["steps"])) for r in rows if r.get("steps")),
            tuple(float(r["train_time_s"]) for r in rows if r.get("train_time_s")),
        )
        for key, rows in grouped.items()
    }
