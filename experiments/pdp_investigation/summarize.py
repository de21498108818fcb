"""Why PDP trails GMP: the follow-up runs next to the accuracy study's PDP and GMP runs of the same setting.

    .venv/bin/python -m experiments.pdp_investigation.summarize

Reads `experiments/pdp_investigation/runs/*/results.json` and, as baselines, the accuracy study's `gmp_*` and
`pdp_*` runs at the same sparsity and seed; prints a table and writes `experiments/pdp_investigation/results.json`.
Every run's overrides are in its `command.txt`.
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.common import markdown_table, parse_cli, write_json

HERE = Path(__file__).parent
ACCURACY_RUNS = HERE.parent / "accuracy" / "runs"


def load(run_dir: Path, study: str) -> dict:
    r = json.loads((run_dir / "results.json").read_text())
    command = (run_dir / "command.txt").read_text().strip() if (run_dir / "command.txt").exists() else ""
    return {
        "run": f"{study}/{run_dir.name}",
        "command": command,
        "pruner": r["pruner"],
        "seed": r["seed"],
        "sparsity": round(r["sparsity"], 4),
        "test_acc": r["test_acc"],
        "train_time_s": r["train_time_s"],
    }


def summarize(here: Path, methods: tuple[str, ...]) -> None:
    """Print and save the table of a follow-up study in `here`, with the accuracy study's `methods` runs."""
    runs = [load(p.parent, here.name) for p in sorted((here / "runs").glob("*/results.json"))]
    settings = {(r["sparsity"], r["seed"]) for r in runs}
    baselines = [
        load(p.parent, "accuracy")
        for p in sorted(ACCURACY_RUNS.glob("*/results.json"))
        if p.parent.name.split("_")[0] in methods
    ]
    baselines = [b for b in baselines if (b["sparsity"], b["seed"]) in settings]
    rows_all = sorted(baselines + runs, key=lambda r: (r["sparsity"], r["seed"], r["pruner"], r["run"]))
    rows = [[r["sparsity"], r["seed"], r["command"], f"{r['test_acc']:.4f}", r["train_time_s"]] for r in rows_all]
    print(markdown_table(["sparsity", "seed", "overrides", "test_acc", "train_time_s"], rows))
    write_json(here / "results.json", {"runs": rows_all})


if __name__ == "__main__":
    parse_cli(__doc__)
    summarize(HERE, ("gmp", "pdp"))
