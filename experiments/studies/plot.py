"""A study's figures, from its CSV and its runs' metrics: accuracy against sparsity (seed spread per method),
accuracy against compute (optimizer steps) for IMP, BiP and GMP, and sparsity over training per method.

    python -m experiments.studies.plot unstructured   # -> experiments/studies/unstructured/plots/*.png
"""

from __future__ import annotations

import argparse
import csv

from experiments.studies.data import STUDIES, cells, target_setting
from experiments.studies.tables import LAYOUT


def accuracy_vs_sparsity(study: str, ax) -> None:
    settings, order = LAYOUT[study].settings, LAYOUT[study].methods
    found = cells(study, settings, LAYOUT[study].setting_of)
    dense = found.get(("dense", None))
    if dense:
        ax.axhspan(min(dense.test_acc), max(dense.test_acc), color="0.85", label="dense (seed range)")
        ax.axhline(dense.mean, color="0.4", lw=1)
    for method in order:
        points = [(s, found[(method, s)]) for s in settings if (method, s) in found]
        if method == "dense" or not points:
            continue
        xs = [s * 100 for s, _ in points]
        ys = [c.mean for _, c in points]
        lo = [c.mean - min(c.test_acc) for _, c in points]
        hi = [max(c.test_acc) - c.mean for _, c in points]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=method)
    by_flops = LAYOUT[study].setting_of is not target_setting
    xlabel = "FLOPs / dense (×100)" if by_flops else "sparsity (%)"
    ax.set(xlabel=xlabel, ylabel="test accuracy", title="accuracy against the target (bars: seed range)")
    ax.legend(fontsize=7, ncol=2)


def accuracy_vs_compute(study: str, ax, methods: tuple[str, ...] = ("imp", "bip", "gmp")) -> None:
    settings = LAYOUT[study].settings
    found = cells(study, settings, LAYOUT[study].setting_of)
    for method in methods:
        for s in settings:
            c = found.get((method, s))
            if c and c.steps:
                ax.scatter(sum(c.steps) / len(c.steps), c.mean, label=f"{method} {s * 100:g} %")
    ax.set(xscale="log", xlabel="optimizer steps (dense start counted)", ylabel="test accuracy",
           title="accuracy against compute")  # fmt: skip
    ax.legend(fontsize=7, ncol=2)


def sparsity_over_training(study: str, ax, seed: str = "0") -> None:
    for metrics in sorted((STUDIES / study / "runs").glob(f"*_seed{seed}/csv/metrics.csv")):
        with metrics.open() as f:
            pts = [(int(r["step"]), float(r["sparsity/global"])) for r in csv.DictReader(f) if r.get("sparsity/global")]
        if pts:
            ax.plot(*zip(*pts, strict=True), lw=1, label=metrics.parent.parent.name)
    ax.set(xlabel="optimizer step", ylabel="global sparsity", title=f"sparsity over training (seed {seed})")
    ax.legend(fontsize=5, ncol=3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(LAYOUT))
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = STUDIES / args.study / "plots"
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in (
        ("accuracy_vs_sparsity", accuracy_vs_sparsity),
        ("accuracy_vs_compute", accuracy_vs_compute),
        ("sparsity_over_training", sparsity_over_training),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        draw(args.study, ax)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
        print(out / f"{name}.png")


if __name__ == "__main__":
    main()
