"""Figures of one run, read from its CSV log and `results.json`: `plots/training.png` and `plots/layers.png`.

`training.png` is the run at a glance: sparsity (a channel run: zeroed weights and channels removed, its target drawn
against the channels) and the FLOPs ratio over optimizer steps, each ending at the run's final value from
`results.json`; mask churn at update events when a method regrew weights; training loss with validation accuracy;
and the final density of each targeted layer. `layers.png` is the
per-layer density with names and numbers. Written at the end of every `train.py` run (needs matplotlib, the
`plot` extra); for any finished run directory: `python -m sparsetrain.plots RUN_DIR`.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("sparsetrain")
SERIES = (
    "sparsity/global",
    "channel_sparsity",  # channel runs: fraction of channels removed (what their `pruner.sparsity` targets)
    "flops/ratio",
    "flops/budget",  # LAPP's scheduled budget
    "mask/churn",
    "train/loss",
    "val/acc",
    "test/acc",
)


def read_metrics(csv_path: Path) -> dict[str, list[tuple[int, float, int]]]:
    """`{metric: [(step, value, epoch), ...]}` for the metrics in `SERIES` (rows where the metric is set)."""
    series: dict[str, list[tuple[int, float, int]]] = {name: [] for name in SERIES}
    if not csv_path.exists():
        return series
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            step, epoch = int(float(row.get("step") or 0)), int(float(row.get("epoch") or 0))
            for name in SERIES:
                if row.get(name) not in (None, ""):
                    series[name].append((step, float(row[name]), epoch))
    return series


def _xy(points: list[tuple[int, float, int]]) -> tuple[list[int], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=9, wrap=True)


def _title(results: dict[str, Any]) -> str:
    method = results.get("pruner") or "dense"
    granularity = (results.get("pruner_config") or {}).get("granularity")
    parts = [f"{method}{f' ({granularity})' if granularity else ''}, {results.get('model')} on {results.get('data')}"]
    if results.get("sparsity") is not None:
        parts.append(f"sparsity {results['sparsity']:.3f}")
    if results.get("channel_sparsity") is not None:
        parts.append(f"channels removed {results['channel_sparsity']:.3f}")
    if results.get("flops_dense"):
        parts.append(f"FLOPs ×{results['flops_sparse'] / results['flops_dense']:.3f}")
    if results.get("test_acc") is not None:
        parts.append(f"test acc {results['test_acc']:.4f}")
    return " · ".join(parts)


def last_step(m: dict[str, list], results: dict[str, Any]) -> int:
    """The run's last optimizer step (results.json `steps` − 1, the step its final values belong to), else the
    last step any series was logged at."""
    steps = results.get("steps")
    if isinstance(steps, int) and steps > 0:
        return steps - 1
    return max((p[0] for points in m.values() for p in points), default=0)


def with_final(points: list[tuple[int, float, int]], step: int, value: float | None) -> list[tuple[int, float, int]]:
    """`points` ending at the run's final `value` at `step` (added when the log stops before it, as a series logged
    only at update events does: its last event is rarely the last step)."""
    if value is None or (points and points[-1][0] >= step):
        return points
    return [*points, (step, float(value), points[-1][2] if points else 0)]


def _final_label(ax: Any, points: list[tuple[int, float, int]], color: str) -> None:
    step, value, _ = points[-1]
    ax.annotate(f"{value:.3f}", (step, value), textcoords="offset points", xytext=(4, 4), fontsize=8, color=color)


def _churn(m: dict[str, list]) -> bool:
    """Whether any update event regrew weights (pure pruning logs churn 0 at every event, or none)."""
    return any(value > 0 for _, value, _ in m["mask/churn"])


def _is_channel_run(results: dict[str, Any]) -> bool:
    return (results.get("pruner_config") or {}).get("granularity") == "channel" or results.get(
        "channel_sparsity"
    ) is not None


def _sparsity_panel(ax: Any, m: dict[str, list], results: dict[str, Any]) -> None:
    """Sparsity over steps, each target drawn against the quantity it targets: a channel run's `sparsity` is the
    fraction of channels removed (drawn with `channel_sparsity`), the weight curve counts zeroed weights."""
    config, step = results.get("pruner_config") or {}, last_step(m, results)
    channel = _is_channel_run(results)
    weights = with_final(m["sparsity/global"], step, results.get("sparsity"))
    if weights:
        label = "weight sparsity (zeroed weights)" if channel else "sparsity"
        ax.plot(*_xy(weights), "-o", color="tab:blue", label=label, markersize=3)
        _final_label(ax, weights, "tab:blue")
    channels = with_final(m["channel_sparsity"], step, results.get("channel_sparsity"))
    if channels:
        ax.plot(*_xy(channels), "-D", color="tab:purple", label="channels removed", markersize=4)
        _final_label(ax, channels, "tab:purple")
    target = config.get("sparsity")
    if target is not None:
        color, label = ("tab:purple", "target: channels removed") if channel else ("tab:blue", "target sparsity")
        ax.axhline(target, color=color, linestyle=":", linewidth=1.2, label=f"{label} {target:g}")
    churn = m["mask/churn"]
    title = "sparsity: weights and channels" if channel else "sparsity"
    if churn and not _churn(m):
        events = len(churn)
        title += f"\n(no weight regrown: mask churn 0 at {'all ' if events > 1 else ''}{events} update event"
        title += "s)" if events > 1 else ")"
    ax.set_title(title, **({"fontsize": 10} if "\n" in title else {}))
    if not (weights or channels):
        _empty(ax, "not logged")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def _flops_panel(ax: Any, m: dict[str, list], results: dict[str, Any]) -> None:
    """FLOPs of the masked (or slimmed) network over dense, ending at results.json's final value; LAPP's budget."""
    ax.set_title("FLOPs ratio (sparse / dense)")
    final = results["flops_sparse"] / results["flops_dense"] if results.get("flops_dense") else None
    flops = with_final(m["flops/ratio"], last_step(m, results), final)
    if flops:
        ax.plot(*_xy(flops), "-s", color="tab:orange", label="FLOPs sparse / dense", markersize=3)
        _final_label(ax, flops, "tab:orange")
    if len(m["flops/budget"]) > 1:
        ax.plot(*_xy(m["flops/budget"]), "--", color="0.5", linewidth=1, label="budget (schedule)")
    budget = (results.get("pruner_config") or {}).get("max_flops_ratio")
    if budget is not None:
        ax.axhline(
            budget, color="tab:orange", linestyle=":", linewidth=1.2, label=f"target: max_flops_ratio {budget:g}"
        )
    if not flops:
        _empty(ax, "not logged")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def _churn_panel(ax: Any, m: dict[str, list]) -> None:
    ax.set_title("mask churn\n(fraction of active weights newly grown)", fontsize=10)
    steps, churn = _xy(m["mask/churn"])
    ax.vlines(steps, 0, churn, linewidth=1.5)
    ax.plot(steps, churn, "o", markersize=3)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("optimizer step")


def _accuracy_panel(ax: Any, m: dict[str, list]) -> None:
    ax.set_title("training loss and validation accuracy")
    if m["train/loss"]:
        style = "-" if len(m["train/loss"]) > 20 else "-o"  # a few logged steps: show each point
        ax.plot(*_xy(m["train/loss"]), style, color="0.55", linewidth=1, markersize=3)
    ax.set_ylabel("train loss (grey)")
    acc = ax.twinx()
    if m["val/acc"]:
        steps, values = _xy(m["val/acc"])
        acc.plot(steps, values, "-o", color="tab:green", markersize=4)
        if len(steps) <= 12:
            for step, value, epoch in m["val/acc"]:
                acc.annotate(f"ep {epoch}", (step, value), textcoords="offset points", xytext=(0, 5), fontsize=7)
    if m["test/acc"]:
        step, value, _ = m["test/acc"][-1]
        acc.plot([step], [value], "*", color="tab:red", markersize=11)
        acc.annotate(
            f"test {value:.3f}",
            (step, value),
            textcoords="offset points",
            xytext=(-8, -13),
            fontsize=8,
            color="tab:red",
            ha="right",
        )
    acc.set_ylim(0, 1.05)
    acc.set_ylabel("val accuracy (green), test of the final model (red)")
    if not (m["train/loss"] or m["val/acc"]):
        _empty(ax, "no loss or accuracy logged")
    ax.set_xlabel("optimizer step")


def _density_bars(ax: Any, layers: dict[str, Any], horizontal: bool) -> None:
    names = list(layers)
    density = [float(layers[n]["density"]) for n in names]
    positions = range(len(names))
    if not names:
        _empty(ax, "no targeted layers")
        return
    if horizontal:
        ax.barh(positions, [1.0] * len(names), color="0.9")
        ax.barh(positions, density, color="tab:blue")
        ax.set_yticks(list(positions), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.0)
        ax.set_xlabel("density (fraction of weights kept)")
        for i, d in enumerate(density):
            ax.text(min(d + 0.01, 0.9), i, f"{d:.3f}", va="center", fontsize=7)
    else:
        ax.bar(positions, [1.0] * len(names), color="0.9")
        ax.bar(positions, density, color="tab:blue")
        if len(names) <= 12:
            for i, d in enumerate(density):
                ax.text(i, d + 0.01, f"{d:.2f}", ha="center", fontsize=7)
        ax.set_xticks(list(positions), names, rotation=90, fontsize=6 if len(names) > 12 else 8)
        ax.set_ylim(0, 1.0)
        ax.set_ylabel("density")


def training_figure(results: dict[str, Any], m: dict[str, list]) -> Any:
    """The `training.png` figure: top row the step series a run has (sparsity, FLOPs ratio, mask churn: an
    update event that regrew weights), bottom row loss/accuracy and the final density per targeted layer.
    A panel with nothing to show is left out (a dense run is its loss and accuracy only)."""
    from math import lcm

    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    pruned = bool(results.get("pruner")) or bool(m["sparsity/global"])
    top = []
    if pruned:
        top.append(lambda ax: _sparsity_panel(ax, m, results))
    if m["flops/ratio"] or (pruned and results.get("flops_dense")):
        top.append(lambda ax: _flops_panel(ax, m, results))
    if _churn(m):
        top.append(lambda ax: _churn_panel(ax, m))
    layers = results.get("layers") or {}
    bottom = [lambda ax: _accuracy_panel(ax, m)]
    if any(float(layer["density"]) < 1.0 for layer in layers.values()):  # a dense run's all-1 bars say nothing
        bottom.append(lambda ax: _density_panel(ax, layers))
    rows = [row for row in (top, bottom) if row]
    columns = lcm(*(len(row) for row in rows))
    width = {1: 8.0, 2: 12.0}.get(max(len(row) for row in rows), 15.0)
    fig = Figure(figsize=(width, 4.0 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(len(rows), columns)
    for r, row in enumerate(rows):
        span = columns // len(row)
        for i, draw in enumerate(row):
            draw(fig.add_subplot(grid[r, i * span : (i + 1) * span]))
    fig.suptitle(_title(results), fontsize=11)
    return fig


def _density_panel(ax: Any, layers: dict[str, Any]) -> None:
    ax.set_title("final density per targeted layer")
    _density_bars(ax, layers, horizontal=False)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write `plots/training.png` and `plots/layers.png` for a finished run; returns their paths.

    Raises:
        FileNotFoundError: `run_dir` has no `results.json` (the run did not finish).
    """
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    results_path = run_dir / "results.json"
    if not results_path.exists():
        raise FileNotFoundError(f"{results_path} not found: plots are made from a finished run")
    results = json.loads(results_path.read_text())
    m = read_metrics(run_dir / "csv" / "metrics.csv")
    layers = results.get("layers") or {}
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    training_figure(results, m).savefig(out / "training.png", dpi=100)

    fig = Figure(figsize=(8, max(2.5, 0.28 * len(layers) + 1.2)), layout="constrained")
    ax = fig.subplots()
    _density_bars(ax, layers, horizontal=True)
    ax.set_title(f"density per targeted layer\n{_title(results)}", fontsize=9)
    fig.savefig(out / "layers.png", dpi=100)
    return [out / "training.png", out / "layers.png"]


def plot_run_safely(run_dir: str | Path) -> list[Path]:
    """`plot_run`, but a missing matplotlib or a plotting error is one log line, never a failed run."""
    try:
        return plot_run(run_dir)
    except ImportError:
        log.info("plots skipped: matplotlib is not installed (pip install -e '.[plot]')")
    except Exception as e:  # a figure must never cost a finished training run
        log.warning("plots skipped: %s: %s", type(e).__name__, e)
    return []


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m sparsetrain.plots RUN_DIR")
    try:
        written = plot_run(sys.argv[1])
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    sys.stdout.write("".join(f"{p}\n" for p in written))


__all__ = ["last_step", "plot_run", "plot_run_safely", "read_metrics", "training_figure", "with_final"]
