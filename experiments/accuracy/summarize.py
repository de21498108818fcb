"""Collect the accuracy study's runs into a table, a JSON file and a plot.

    .venv/bin/python -m experiments.accuracy.summarize

Reads `experiments/accuracy/runs/*/results.json` (made by `queue.sh` / `run.sh`), writes
`experiments/accuracy/summary.json` and `experiments/accuracy/accuracy_vs_sparsity.png`. The package's dense
reference comes from the unstructured study now (`python -m experiments.studies.dense_reference unstructured`).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from experiments.common import markdown_table, parse_cli, write_json

HERE = Path(__file__).parent
METHODS = ["dense", "gmp", "granet", "pdp", "rigl", "set"]


def load_runs() -> list[dict]:
    runs = []
    for path in sorted((HERE / "runs").glob("*/results.json")):
        r = json.loads(path.read_text())
        name = path.parent.name
        setting = "2:4" if "nm24" in name else ("dense" if r["pruner"] is None else f"{round(r['sparsity'] * 100)}%")
        runs.append(
            {
                "run": name,
                "method": r["pruner"] or "dense",
                "setting": setting,
                "seed": r["seed"],
                "test_acc": r["test_acc"],
                "sparsity": r["sparsity"],
                "flops_ratio": r["flops_sparse"] / r["flops_dense"],
                "train_time_s": r["train_time_s"],
                "epochs": r.get("max_epochs"),
            }
        )
    return runs


def main() -> None:
    parse_cli(__doc__)
    runs = load_runs()
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in runs:
        cells[(r["method"], r["setting"])].append(r["test_acc"])
    dense = cells.get(("dense", "dense"), [])
    dense_mean = statistics.mean(dense) if dense else None
    settings = ["90%", "95%", "98%", "2:4"]
    rows = []
    for method in METHODS[1:]:
        row = [method]
        for s in settings:
            accs = cells.get((method, s))
            if not accs:
                row.append("–")
                continue
            mean = statistics.mean(accs)
            gap = f" ({(mean - dense_mean) * 100:+.2f})" if dense_mean is not None else ""
            row.append(f"{mean:.4f}{gap} n={len(accs)}")
        rows.append(row)
    header = ["method", *settings]
    table = markdown_table(header, rows)
    dense_line = (
        f"dense: {dense_mean:.4f} (n={len(dense)}: {', '.join(f'{a:.4f}' for a in dense)})" if dense else "dense: –"
    )
    print(dense_line)
    print(table)
    write_json(
        HERE / "summary.json", {"dense": dense, "runs": runs, "cells": {f"{m}/{s}": v for (m, s), v in cells.items()}}
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = {"90%": 0.90, "95%": 0.95, "98%": 0.98}
    for method in METHODS[1:]:
        pts = [(xs[s], statistics.mean(cells[(method, s)])) for s in xs if (method, s) in cells]
        if pts:
            (line,) = ax.plot(*zip(*pts, strict=True), marker="o", label=method)
            seeds = [(xs[s], a) for s in xs for a in cells.get((method, s), [])]
            ax.scatter(*zip(*seeds, strict=True), s=12, color=line.get_color(), alpha=0.4)  # single seeds
    if dense_mean is not None:
        ax.axhline(dense_mean, color="k", ls="--", lw=1, label="dense")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("test accuracy")
    ax.set_title("ResNet-20, Fashion-MNIST, 3 epochs\n(lines: mean over seeds; dots: single seeds)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "accuracy_vs_sparsity.png", dpi=120)


if __name__ == "__main__":
    main()
