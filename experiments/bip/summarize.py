"""BiP against IMP at 90 % and 95 % (accuracy, optimizer steps, compute, wall time): results.md, summary.json, plot.

    .venv/bin/python -m experiments.bip.summarize

Reads the runs of `queue.sh` (`runs/bip_s*_seed*`, and `runs/imp_lr_s95_seed0` with its `rounds.json` from
`imp_rounds.py`), the dense and GMP runs of the shared protocol (`experiments/accuracy/runs`) and the step
costs measured side by side in one process (`lightning_resnet20_b128_cpu.json`).

Compute is counted in dense-step equivalents: optimizer steps × the step's cost relative to a dense step. BiP's
dense warm-up steps cost 1; its bi-level steps cost the measured `bip` ratio. IMP's first round is dense; its
later rounds train a masked network, whose step costs the measured `magnitude` ratio (the same fixed-mask
parametrization, no update events between rounds).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
PROTOCOL = HERE.parent / "accuracy" / "runs"
STEP_COST = HERE / "lightning_resnet20_b128_cpu.json"
IMP_RUN = RUNS / "imp_lr_s95_seed0"
TARGETS = (0.90, 0.95)


def _load(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.exists() else None


def step_costs() -> dict[str, float]:
    """Median step time of each variant over a dense step's, measured interleaved in one process."""
    summary = _load(STEP_COST)["summary"]
    return {v: summary[v]["step_median_ratio"]["median"] for v in ("bip", "magnitude")}


def run_row(method: str, path: Path, r: dict) -> dict:
    """The fields every one-run row shares, from its `results.json`."""
    return {
        "method": method,
        "run": path.name,
        "seed": r["seed"],
        "target": round(r["sparsity"], 2),
        "sparsity": r["sparsity"],
        "test_acc": r["test_acc"],
        "steps": r["steps"],
    }


def bip_rows(costs: dict[str, float]) -> list[dict]:
    rows = []
    for path in sorted(RUNS.glob("bip_s*_seed*")):
        r = _load(path / "results.json")
        if r is None:
            continue
        dense_steps = r["warmup_step"]
        compute = dense_steps + (r["steps"] - dense_steps) * costs["bip"]
        rows.append({**run_row("BiP", path, r), "compute": compute, "wall_s": r["train_time_s"]})
    return rows


def imp_rounds(costs: dict[str, float]) -> list[dict]:
    """Every IMP round's ticket, with the steps, compute and wall time spent up to the end of that round."""
    rounds = _load(IMP_RUN / "rounds.json")
    if not rounds:
        return []
    round_steps = rounds[0]["steps_done"]  # round 0 (dense) is one round's budget
    rows = []
    for r in rounds:
        steps = r["steps_done"]
        rows.append(
            {
                "method": "IMP (LR rewinding)",
                "run": IMP_RUN.name,
                "round": r["round"],
                "sparsity": r["sparsity"],
                "val_acc": r["val_acc"],
                "test_acc": r["test_acc"],
                "steps": steps,
                "compute": round_steps + (steps - round_steps) * costs["magnitude"],
                "wall_s": r["wall_s"],
            }
        )
    return rows


def protocol_rows(method: str) -> list[dict]:
    """Dense or GMP runs of the shared protocol (one 3-epoch run each), for reference."""
    rows = []
    for path in sorted(PROTOCOL.glob(f"{method}_*seed*")):
        r = _load(path / "results.json")
        if r is None or (method == "gmp" and "nm" in path.name):
            continue
        rows.append(run_row(method.upper() if method == "gmp" else "dense", path, r))
    return rows


def comparison(bip: list[dict], imp: list[dict]) -> list[dict]:
    """Per target: BiP's mean over seeds against the IMP round that reaches the target."""
    out = []
    for target in TARGETS:
        runs = [r for r in bip if abs(r["target"] - target) < 1e-6]
        ticket = next((r for r in imp if abs(r["sparsity"] - target) < 5e-3), None)
        if not runs or ticket is None:
            continue
        mean = {k: statistics.mean(r[k] for r in runs) for k in ("test_acc", "compute", "wall_s", "steps")}
        out.append(
            {
                "target": target,
                "bip_test_acc": [r["test_acc"] for r in runs],
                "bip_test_acc_mean": mean["test_acc"],
                "imp_round": ticket["round"],
                "imp_sparsity": ticket["sparsity"],
                "imp_test_acc": ticket["test_acc"],
                "acc_bip_minus_imp": mean["test_acc"] - ticket["test_acc"],
                "bip_steps": mean["steps"],
                "imp_steps": ticket["steps"],
                "bip_compute": mean["compute"],
                "imp_compute": ticket["compute"],
                "compute_imp_over_bip": ticket["compute"] / mean["compute"],
                "bip_wall_s": mean["wall_s"],
                "imp_wall_s": ticket["wall_s"],
                "wall_imp_over_bip": ticket["wall_s"] / mean["wall_s"],
            }
        )
    return out


def plot(bip: list[dict], imp: list[dict], gmp: list[dict], dense: list[dict], path: Path) -> None:
    """Left: test accuracy against sparsity. Right: test accuracy against compute spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if imp:
        left.plot([r["sparsity"] for r in imp], [r["test_acc"] for r in imp], "o-", color="tab:gray",
                  label="IMP rounds (LR rewinding)")  # fmt: skip
    for rows, marker, color, label in ((bip, "*", "tab:red", "BiP"), (gmp, "s", "tab:blue", "GMP (one run)")):
        if rows:
            left.scatter([r["sparsity"] for r in rows], [r["test_acc"] for r in rows], marker=marker, s=80,
                         color=color, label=label, zorder=3)  # fmt: skip
    if dense:
        left.axhline(statistics.mean(r["test_acc"] for r in dense), color="k", ls=":", label="dense (mean)")
    left.set(xlabel="sparsity of the targeted weights", ylabel="test accuracy", xlim=(-0.02, 1.0),
             title="ResNet-20, Fashion-MNIST, 3 epochs per run / round")  # fmt: skip
    left.legend(loc="lower left", fontsize=8)
    for target, color in zip(TARGETS, ("tab:green", "tab:purple"), strict=True):
        ticket = next((r for r in imp if abs(r["sparsity"] - target) < 5e-3), None)
        runs = [r for r in bip if abs(r["target"] - target) < 1e-6]
        if ticket:
            right.scatter([ticket["compute"]], [ticket["test_acc"]], marker="o", s=70, color=color,
                          label=f"IMP {target:.0%}")  # fmt: skip
        if runs:
            right.scatter([r["compute"] for r in runs], [r["test_acc"] for r in runs], marker="*", s=120,
                          color=color, label=f"BiP {target:.0%}")  # fmt: skip
    right.set(xscale="log", xlabel="compute (dense-step equivalents, log)", ylabel="test accuracy",
              title="accuracy for the compute spent")  # fmt: skip
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(costs: dict[str, float], table: list[dict], imp: list[dict], gmp: list[dict]) -> str:
    """The comparison and every IMP round, as the markdown `results.md` holds."""
    lines = [
        f"Step cost / dense (CPU, batch 128, interleaved): BiP {costs['bip']:.3f}, masked (IMP) "
        f"{costs['magnitude']:.3f}. Compute in dense-step equivalents.",
        "",
        "| target | BiP test acc | IMP round: sparsity, test acc | BiP − IMP | GMP (one run, 2 seeds) "
        "| steps BiP / IMP | compute IMP / BiP | wall s BiP / IMP | wall IMP / BiP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in table:
        accs = ", ".join(f"{a:.4f}" for a in c["bip_test_acc"])
        g = [r["test_acc"] for r in gmp if abs(r["target"] - c["target"]) < 1e-6]
        lines.append(
            f"| {c['target']:.0%} | {accs} | {c['imp_round']}: {c['imp_sparsity']:.4f}, {c['imp_test_acc']:.4f} "
            f"| {c['acc_bip_minus_imp']:+.4f} | {', '.join(f'{a:.4f}' for a in g) or '–'} "
            f"| {c['bip_steps']:.0f} / {c['imp_steps']} | {c['compute_imp_over_bip']:.1f}× "
            f"| {c['bip_wall_s']:.0f} / {c['imp_wall_s']:.0f} | {c['wall_imp_over_bip']:.1f}× |"
        )
    if imp:
        lines += ["", "| IMP round | sparsity | val acc | test acc | steps done | wall s |"]
        lines += ["|---|---|---|---|---|---|"]
        lines += [
            f"| {r['round']} | {r['sparsity']:.4f} | {r['val_acc']:.4f} | {r['test_acc']:.4f} | {r['steps']} "
            f"| {r['wall_s']:.0f} |"
            for r in imp
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    costs = step_costs()
    bip, imp = bip_rows(costs), imp_rounds(costs)
    gmp = [r for r in protocol_rows("gmp") if any(abs(r["target"] - t) < 1e-6 for t in TARGETS)]
    dense = protocol_rows("dense")
    table = comparison(bip, imp)
    text = markdown(costs, table, imp, gmp)
    print(text)
    (HERE / "results.md").write_text(text)
    summary = {"step_cost": costs, "comparison": table, "bip": bip, "imp_rounds": imp, "gmp": gmp, "dense": dense}
    (HERE / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(bip, imp, gmp, dense, HERE / "bip_vs_imp.png")
    print(f"wrote {HERE / 'results.md'}, {HERE / 'summary.json'} and {HERE / 'bip_vs_imp.png'}")


if __name__ == "__main__":
    main()
