"""A study's figures, from its CSV and its runs' metrics: accuracy against sparsity (seed spread per method),
accuracy against compute (optimizer steps weighted by measured step time, `compute.py`) for IMP, BiP and GMP,
sparsity over training per method, and (the structured study) accuracy against the FLOPs each run measured.

    python -m experiments.studies.plot unstructured   # -> experiments/studies/unstructured/plots/*.png
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from pathlib import Path

from experiments.studies.data import STUDIES, cells, flops_points, method_of, read_rows, target_setting
from experiments.studies.tables import LAYOUT


def _legend(ax, **kwargs) -> None:
    """A legend when something is drawn (an empty study draws empty axes, without a warning)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def bars(center: float, values: tuple[float, ...]) -> tuple[float, float]:
    """Error bar lengths below and above `center` (a mean of `values`) to their range; never negative (the mean of
    equal floats may land a rounding error past them)."""
    return max(0.0, center - min(values)), max(0.0, max(values) - center)


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
        lo, hi = zip(*(bars(c.mean, c.test_acc) for _, c in points), strict=True)
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=method)
    by_flops = LAYOUT[study].setting_of is not target_setting
    xlabel = "FLOPs / dense (×100)" if by_flops else "sparsity (%)"
    ax.set(xlabel=xlabel, ylabel="test accuracy", title="accuracy against the target (bars: seed range)")
    _legend(ax, fontsize=7, ncol=2)


def accuracy_vs_compute(study: str, ax, methods: tuple[str, ...] = ("imp", "bip", "bip from dense", "gmp")) -> None:
    """Each method's cells at the compute they cost (dense-step equivalents: BiP's dense start and bi-level steps,
    the trained dense run a "from dense" run started from, every IMP round up to the one that lands on the
    setting), one color per method, one marker per setting."""
    layout = LAYOUT[study]
    settings = layout.settings
    found = cells(study, settings, layout.setting_of)
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    marker = dict(zip((*layout.required, *layout.optional), "os^vDPX", strict=False))  # a setting keeps its marker
    for method in methods:
        for s in settings:
            c = found.get((method, s))
            if c and c.compute:
                lo, hi = bars(c.mean, c.test_acc)
                ax.errorbar(statistics.fmean(c.compute), c.mean, yerr=[[lo], [hi]], marker=marker.get(s, "o"),
                            color=colors[method], capsize=3, label=f"{method} {s * 100:g} %")  # fmt: skip
    ax.set(xscale="log", xlabel="compute: steps × step time / dense step time (CPU benchmark)",
           ylabel="test accuracy", title="accuracy against compute (bars: seed range)")  # fmt: skip
    _legend(ax, fontsize=7, ncol=2)


SETTING_TEXT = (  # a job's setting, from its name without method and seed: gmp_s0.95_seed0 -> "95 %"
    (re.compile(r"s(0\.\d+)"), lambda m: f"{float(m[1]) * 100:g} %"),
    (re.compile(r"ch(0\.\d+)"), lambda m: f"channels {float(m[1]) * 100:g} %"),
    (re.compile(r"f(0\.\d+)"), lambda m: f"FLOPs {m[1]}"),
    (re.compile(r"nm(\d)(\d)"), lambda m: f"{m[1]}:{m[2]}"),
)


def job_setting(job: str, method: str) -> str:
    """What distinguishes a job among its method's: the rest of its name without the method's words, readable
    (`resnet18 90 %`; `bip_dense_s0.9_seed1` of "bip from dense": `90 %`)."""
    words = [w for w in re.sub(r"_seed\d+$", "", job).split("_") if w not in method.split()]
    for i, word in enumerate(words):
        for pattern, text in SETTING_TEXT:
            if match := pattern.fullmatch(word):
                words[i] = text(match)
    return " ".join(words)


def _dense_until(run: Path) -> bool:
    """Whether a run trained dense until its first logged sparsity: BiP's dense start (`warmup_step` in its
    results.json) and one-shot magnitude pruning log no sparsity before their first mask."""
    path = run / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    return "warmup_step" in results or results.get("pruner") == "magnitude"


def sparsity_over_training(study: str, ax, seed: str = "0") -> None:
    """Global sparsity against the optimizer step of every seed-`seed` run: one color per method (with its
    granularity where not unstructured), one line style per setting (target, budget, model), each in the legend
    once. Method and granularity come from the study's CSV."""
    runs = {r["job"]: r for r in read_rows(study) if r["job"].endswith(f"_seed{seed}")}
    styles = ["-", "--", ":", "-.", (0, (1, 1)), (0, (5, 1))]
    colors: dict[str, str] = {}
    study_runs = STUDIES / study / "runs"
    methods = {job: method_of(r, study_runs) for job, r in runs.items()}
    settings = sorted({job_setting(job, methods[job]) for job, r in runs.items() if r["pruner"] != "dense"})
    for job, row in sorted(runs.items()):
        metrics = study_runs / job / "csv" / "metrics.csv"
        if row["pruner"] == "dense" or not metrics.exists():
            continue
        with metrics.open() as f:
            pts = [(int(r["step"]), float(r["sparsity/global"])) for r in csv.DictReader(f) if r.get("sparsity/global")]
        if not pts:
            continue
        if pts[0][0] > 0 and _dense_until(metrics.parent.parent):
            pts = [(0, 0.0), (pts[0][0], 0.0), *pts]
        grain = row.get("granularity") or "unstructured"
        method = methods[job] if grain == "unstructured" else f"{grain} {methods[job]}"
        new = method not in colors
        color = colors.setdefault(method, f"C{len(colors) % 10}")
        style = styles[settings.index(job_setting(job, methods[job])) % len(styles)]
        ax.plot(*zip(*pts, strict=True), lw=1, color=color, ls=style, label=method if new else None)
    if len(settings) > 1:
        for setting, style in zip(settings, styles, strict=False):
            ax.plot([], [], color="0.3", ls=style, lw=1, label=setting)
    ax.set(xlabel="optimizer step", ylabel="global sparsity", title=f"sparsity over training (seed {seed})")
    _legend(ax, fontsize=6, ncol=2)


def accuracy_vs_flops(study: str, ax, granularity: str = "channel", dense_from: str = "unstructured") -> None:
    """Test accuracy against the measured FLOPs ratio (flops_sparse / flops_dense of each run's results.json),
    one line per method through its budgets; bars: the seed range (accuracy, and FLOPs where seeds differ).
    The dense band is the study's own dense runs, else those of `dense_from` (the same protocol)."""
    points = flops_points(study, granularity)
    dense = cells(study, LAYOUT[study].settings, LAYOUT[study].setting_of).get(("dense", None))
    source = study
    if dense is None and dense_from in LAYOUT:
        dense, source = cells(dense_from, LAYOUT[dense_from].settings).get(("dense", None)), dense_from
    if dense:
        label = "dense (seed range)" if source == study else f"dense, {source} study (seed range)"
        ax.axhspan(min(dense.test_acc), max(dense.test_acc), color="0.85", label=label)
    for method in dict.fromkeys(p.method for p in points):
        mine = sorted((p for p in points if p.method == method), key=lambda p: sum(p.flops_ratio))
        xs = [sum(p.flops_ratio) / len(p.flops_ratio) for p in mine]
        ys = [sum(p.test_acc) / len(p.test_acc) for p in mine]
        yerr = list(zip(*(bars(y, p.test_acc) for p, y in zip(mine, ys, strict=True)), strict=True))
        xerr = list(zip(*(bars(x, p.flops_ratio) for p, x in zip(mine, xs, strict=True)), strict=True))
        label = method.removeprefix(f"{granularity} ") if method.endswith("lapp") else method
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=label)
    ax.set(xlabel="measured FLOPs / dense FLOPs", ylabel="test accuracy",
           title="accuracy against FLOPs (bars: seed range)")  # fmt: skip
    _legend(ax, fontsize=7)


PLOTS = {  # the figures of a study (a study not listed: the first three)
    "structured": ("accuracy_vs_sparsity", "accuracy_vs_flops", "sparsity_over_training"),  # steps: all 1263
    "family": ("sparsity_over_training",),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(LAYOUT))
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = STUDIES / args.study / "plots"
    out.mkdir(parents=True, exist_ok=True)
    names = PLOTS.get(args.study, ("accuracy_vs_sparsity", "accuracy_vs_compute", "sparsity_over_training"))
    for name in names:
        draw = globals()[name]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        draw(args.study, ax)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
        print(out / f"{name}.png")


if __name__ == "__main__":
    main()
