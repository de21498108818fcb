"""One table for a Hydra multirun sweep: `summary.csv` in the sweep directory, printed when the sweep ends.

Registered as a Hydra callback (`conf/hydra/callbacks/sweep_summary.yaml`); also callable on any sweep directory:
`python -m sparsetrain.sweep_summary multirun/2024-01-01/12-00-00`.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from typing_extensions import override

COLUMNS = (
    "job", "overrides", "pruner", "granularity", "target", "seed", "sparsity", "channel_sparsity", "test_acc",
    "val_acc", "flops_ratio", "steps", "train_time_s", "init_from",
)  # fmt: skip
# columns left out when no job has a value; `init_from`: the run whose weights a job started from (its steps are not
# in `steps`)
OPTIONAL = ("channel_sparsity", "granularity", "target", "init_from")


def _job_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    import yaml

    return [str(o) for o in yaml.safe_load(path.read_text()) or []]


def _natural(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job directory under `sweep_dir` (one with `.hydra/overrides.yaml`), in job order.

    `overrides` holds the overrides that differ between the jobs (all of them for a single job); a job without
    `results.json` (failed or still running) has empty metrics.
    """
    sweep_dir = Path(sweep_dir)
    found = {p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")}
    found |= {p.parent for p in sweep_dir.glob("**/results.json")}  # a committed study keeps results.json only
    jobs = sorted(found, key=_natural)
    overrides = {job: _job_overrides(job) for job in jobs}
    common = set.intersection(*(set(o) for o in overrides.values())) if len(jobs) > 1 else set()
    rows = []
    for job in jobs:
        results_path = job / "results.json"
        r = json.loads(results_path.read_text()) if results_path.exists() else {}
        flops = r.get("flops_sparse") / r["flops_dense"] if r.get("flops_dense") else None
        pruner_cfg = r.get("pruner_config") or {}
        rows.append(
            {
                "job": str(job.relative_to(sweep_dir)),
                "overrides": " ".join(o for o in overrides[job] if o not in common),
                "pruner": (r.get("pruner") or "dense") if r else None,
                "granularity": pruner_cfg.get("granularity"),
                "target": _target(pruner_cfg),
                "seed": r.get("seed"),
                "sparsity": r.get("sparsity"),
                "channel_sparsity": r.get("channel_sparsity"),
                "test_acc": r.get("test_acc"),
                "val_acc": r.get("val_acc"),
                "flops_ratio": flops,
                "steps": r.get("steps"),
                "train_time_s": r.get("train_time_s"),
                "init_from": r.get("init_from"),
            }
        )
        rows.extend(_round_rows(job, sweep_dir))
    return rows


def _round_rows(job: Path, sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per pruning round of an IMP run whose round tickets were tested (`rounds.json`, written by
    `experiments/studies/imp_rounds.py`): one IMP run passes through every sparsity of a study."""
    path = job / "rounds.json"
    if not path.exists():
        return []
    results = json.loads((job / "results.json").read_text()) if (job / "results.json").exists() else {}
    return [
        {
            "job": f"{job.relative_to(sweep_dir)}/round{r['round']}",
            "overrides": "",
            "pruner": "imp",
            "granularity": "unstructured",
            "target": None,
            "seed": results.get("seed"),
            "sparsity": r["sparsity"],
            "channel_sparsity": None,
            "test_acc": r.get("test_acc"),
            "val_acc": r.get("val_acc"),
            "flops_ratio": None,
            "steps": r.get("steps_done"),
            "train_time_s": r.get("wall_s"),
            "init_from": results.get("init_from"),
        }
        for r in json.loads(path.read_text())
    ]


def _target(pruner_cfg: dict[str, Any]) -> float | None:
    """What the run was asked for: the FLOPs budget of a method that has one, else the target sparsity."""
    return pruner_cfg.get("max_flops_ratio") or pruner_cfg.get("sparsity")


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}" if column == "train_time_s" else f"{value:.4f}"
    return str(value)


def write_summary(sweep_dir: str | Path) -> Path | None:
    """Write `summary.csv` into `sweep_dir` and print the table; returns the CSV's path (None: no jobs)."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    if not rows:
        return None
    columns = [c for c in COLUMNS if c not in OPTIONAL or any(r[c] is not None for r in rows)]
    path = sweep_dir / "summary.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: "" if r[c] is None else r[c] for c in columns} for r in rows)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sweep summary ({len(rows)} jobs)")
    for c in columns:
        table.add_column(c, justify="left" if c in ("job", "overrides") else "right")
    for r in rows:
        table.add_row(*(_cell(c, r[c]) for c in columns))
    console = Console(file=sys.stdout, width=max(120, Console().width))
    console.print(table)
    console.print(f"sweep summary: {path}", soft_wrap=True, highlight=False)
    return path


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, `summary.csv` in the sweep directory and a printed table."""

    @override
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(config.hydra.sweep.dir)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m sparsetrain.sweep_summary SWEEP_DIR")
    if write_summary(sys.argv[1]) is None:
        sys.exit(f"no sweep jobs (.hydra/overrides.yaml) under {sys.argv[1]}")


__all__ = ["SweepSummary", "collect", "write_summary"]
