"""Official GraNet GMP vs sparsetrain's GMP and PDP on the second protocol: one table (markdown + JSON).

    .venv/bin/python -m experiments.reference_gmp.summarize

Reads `experiments/reference_gmp/runs/*/results.json` (from `queue.sh`), prints the table and writes
`summary.md` and `summary.json` next to this file. Per target sparsity and variant: test accuracy per seed, the
mean, the mean paired difference to the official GMP over the seeds both have, the sparsity reached over the
targeted weights, the densities of the first conv and the classifier, and the smallest layer density.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
NAME = re.compile(r"^(ref|gmp|gmp_end600|pdp)_s(\d+)_seed(\d+)$")
VARIANTS = {
    "ref": "official GMP (GraNet Masking)",
    "gmp": "sparsetrain GMP",
    "gmp_end600": "sparsetrain GMP, end at step 600",
    "pdp": "sparsetrain PDP",
}
SEEDS = (0, 1, 2)


def load(runs: Path) -> dict[tuple[str, int], dict[int, dict]]:
    cells: dict[tuple[str, int], dict[int, dict]] = defaultdict(dict)
    for path in sorted(runs.glob("*/results.json")):
        m = NAME.match(path.parent.name)
        if not m:
            continue
        r = json.loads(path.read_text())
        layers = {k: v["density"] for k, v in r["layers"].items()}
        cells[(m.group(1), int(m.group(2)))][int(m.group(3))] = {
            "test_acc": r["test_acc"],
            "sparsity": r["sparsity"],
            "conv1": layers.get("conv1"),
            "fc": layers.get("fc"),
            "min_layer_density": min(layers.values()),
            "min_layer": min(layers, key=layers.get),
            "steps": r.get("steps"),
            "train_time_s": r.get("train_time_s"),
        }
    return cells


def mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def fmt(v: float | None, digits: int = 4, signed: bool = False) -> str:
    if v is None:
        return ""
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=HERE / "runs")
    parser.add_argument("--out", type=Path, default=HERE)
    a = parser.parse_args()
    cells = load(a.runs)
    rows, table = [], []
    for target in sorted({t for _, t in cells}, reverse=True):
        ref = cells.get(("ref", target), {})
        for key, label in VARIANTS.items():
            runs = cells.get((key, target))
            if not runs:
                continue
            accs = [runs[s]["test_acc"] for s in sorted(runs)]
            paired = [runs[s]["test_acc"] - ref[s]["test_acc"] for s in runs if s in ref] if key != "ref" else []
            row = {
                "target": target / 100,
                "variant": key,
                "label": label,
                "test_acc": {str(s): runs[s]["test_acc"] for s in sorted(runs)},
                "mean": mean(accs),
                "spread": (max(accs) - min(accs)) if len(accs) > 1 else None,
                "paired_diff_vs_official": mean(paired),
                "paired_seeds": len(paired),
                **{
                    k: mean([r[k] for r in runs.values() if r[k] is not None])
                    for k in ("sparsity", "conv1", "fc", "min_layer_density")
                },
                "min_layers": sorted({r["min_layer"] for r in runs.values()}),
            }
            rows.append(row)
            seeds = [fmt(runs[s]["test_acc"]) if s in runs else "" for s in SEEDS]
            diff = f"{fmt(row['paired_diff_vs_official'], signed=True)} (n={len(paired)})" if paired else ""
            table.append(
                [
                    f"{target} %",
                    label,
                    *seeds,
                    fmt(row["mean"]),
                    diff,
                    fmt(row["sparsity"], 5),
                    fmt(row["conv1"], 3),
                    fmt(row["fc"], 3),
                    fmt(row["min_layer_density"], 4),
                ]
            )
    header = [
        "target",
        "variant",
        "seed 0",
        "seed 1",
        "seed 2",
        "mean",
        "Δ vs official (paired)",
        "reached sparsity",
        "conv1 density",
        "fc density",
        "min layer density",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in table]
    md = "\n".join(lines)
    print(md)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "summary.md").write_text(md + "\n")
    (a.out / "summary.json").write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
