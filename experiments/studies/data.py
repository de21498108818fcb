"""A study's rows, read from the CSV its sweeps write (`sparsetrain.sweep_summary`), grouped into cells.

A study lives in `experiments/studies/<study>/`: `runs/<job>/results.json` per job, `runs/summary.csv` (the
collector's CSV, rewritten at the end of every sweep and by `python -m sparsetrain.sweep_summary <runs dir>`).
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from experiments.studies.compute import dense_step_equivalents, start_run, start_steps

STUDIES = Path(__file__).resolve().parent
NM_JOB = re.compile(r"(?P<method>\w+?)_nm(?P<n>\d)(?P<m>\d)_seed\d+")  # structured_nm's jobs: gmp_nm24_seed0


@dataclass(frozen=True)
class Cell:
    """Every seed of one method at one setting."""

    method: str
    setting: float | str | None  # the target sparsity, FLOPs budget, "2:4", a model (None: dense)
    test_acc: tuple[float, ...]
    steps: tuple[int, ...]
    train_time_s: tuple[float, ...]
    compute: tuple[float, ...] = ()  # dense-step equivalents per seed (experiments/studies/compute.py)

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
    """The setting of a row of a FLOPs-budget study: the budget its measured FLOPs ratio meets (within 0.02).
    N:M runs share the structured study but have no FLOPs budget: left out (their column is `nm_setting`'s)."""
    if row["pruner"] == "dense":
        return None
    if row.get("granularity") == "nm" or NM_JOB.fullmatch(row["job"]):
        return -1.0
    ratio = float(row["flops_ratio"]) if row.get("flops_ratio") else -1.0
    return next((s for s in settings if s - 0.02 <= ratio <= s + 1e-9), -1.0)


def nm_setting(row: dict[str, str], settings: tuple[str, ...]) -> str:
    """The setting of an N:M run ("2:4"), from its job's name (`<pruner>_nm<n><m>_seed<seed>`); "" otherwise."""
    match = NM_JOB.fullmatch(row["job"])
    if not match or row.get("granularity") not in (None, "", "nm"):
        return ""
    return f"{match['n']}:{match['m']}"


FAMILY_TARGETS = {"lapp": 0.5}  # the family study's one target per method: LAPP's FLOPs budget, else 90 % sparsity


def model_setting(row: dict[str, str], settings: tuple[str, ...]) -> str:
    """The setting of a row of a model-family study: the model its job is named after (`<model>_<method>_...`);
    "" (no column) for a run at another target than the study's, which would otherwise pass for another seed."""
    target = FAMILY_TARGETS.get(row["pruner"], 0.9)
    if row["pruner"] != "dense" and row.get("target") and abs(float(row["target"]) - target) > 1e-9:
        return ""
    return row["job"].split("_", 1)[0]


def method_of(row: dict[str, str], runs: Path) -> str:
    """A row's method: its pruner, or "<pruner> from <the source's method>" for a run started from another run's
    trained weights (`init_from`; "bip from dense" is BiP in its paper's setting), a different compute than a run
    from scratch."""
    source = start_run(row, runs)
    if source is None:
        return row["pruner"]
    return f"{row['pruner']} from {json.loads((source / 'results.json').read_text()).get('pruner') or 'dense'}"


def cells(
    study: str, settings: tuple, setting_of: Callable = target_setting
) -> dict[tuple[str, float | str | None], Cell]:
    """(method, setting) -> its cell; rows outside `settings` (other IMP rounds, other budgets) are left out."""
    grouped: dict[tuple[str, float | str | None], list[dict[str, str]]] = defaultdict(list)
    rows, runs = read_rows(study), STUDIES / study / "runs"
    with_rounds = {r["job"].rsplit("/round", 1)[0] for r in rows if "/round" in r["job"]}
    for row in rows:
        if row["job"] in with_rounds:  # an IMP run whose rounds are listed: its last round is this same network
            continue
        setting = setting_of(row, settings)
        if setting is None or setting in settings:
            grouped[(method_of(row, runs), setting)].append(row)
    return {
        key: Cell(
            key[0],
            key[1],
            tuple(float(r["test_acc"]) for r in rows),
            tuple(int(float(r["steps"])) + start_steps(r, runs) for r in rows if r.get("steps")),
            tuple(float(r["train_time_s"]) for r in rows if r.get("train_time_s")),
            tuple(c for r in rows if (c := dense_step_equivalents(r, runs)) is not None),
        )
        for key, rows in grouped.items()
    }


@dataclass(frozen=True)
class Point:
    """Every seed of one job of a study (its name without `_seed<n>`): measured FLOPs ratio and accuracy."""

    method: str  # "<granularity> <pruner>", e.g. "channel gmp"
    job: str
    flops_ratio: tuple[float, ...]
    test_acc: tuple[float, ...]


def flops_points(study: str, granularity: str = "channel") -> list[Point]:
    """The study's finished runs of one granularity that measured their FLOPs (`flops_ratio` = flops_sparse /
    flops_dense of results.json), grouped over seeds, in the CSV's order."""
    grouped: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for row in read_rows(study):
        if row["pruner"] != "dense" and row.get("granularity") == granularity and row.get("flops_ratio"):
            grouped[(f"{granularity} {row['pruner']}", re.sub(r"_seed\d+$", "", row["job"]))].append(row)
    return [
        Point(method, job, tuple(float(r["flops_ratio"]) for r in rows), tuple(float(r["test_acc"]) for r in rows))
        for (method, job), rows in grouped.items()
    ]
