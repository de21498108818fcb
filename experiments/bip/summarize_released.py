"""BiP with the released code's choices against GMP and IMP: results_released.md, summary_released.json.

    .venv/bin/python -m experiments.bip.summarize_released

Reads the runs of `queue_released.sh` (`runs/bip_rel_s*_seed*`: one run at GMP's budget; `runs/dense_seed*` and
`runs/bip_rel_init_s*_seed*`: a trained dense network pruned by BiP, the paper's setting), the runs of the first
study (`runs/bip_s*_seed*`, BiP before this change: plain SGD on normalised scores, first and last layers dense),
GMP on the shared protocol (`experiments/accuracy/runs/gmp_s*_seed*`) and IMP's rounds (`runs/imp_lr_s95_seed0`).

Steps count every optimizer step that produced the network, the dense pretraining included. `churn` sums the
logged `mask/churn` over the bi-level phase (the fraction of the mask changed, report by report).
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from experiments.bip.summarize import imp_rounds, protocol_rows, step_costs

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
TARGETS = (0.90, 0.95)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def summed_churn(run: Path) -> float | None:
    """Sum of the logged `mask/churn` values of a run (None when its metrics were not kept)."""
    path = run / "csv" / "metrics.csv"
    if not path.exists():
        return None
    with path.open() as f:
        return sum(float(r["mask/churn"]) for r in csv.DictReader(f) if r.get("mask/churn"))


def bip_runs(pattern: str, variant: str) -> list[dict]:
    rows = []
    for path in sorted(RUNS.glob(pattern)):
        r = _load(path / "results.json")
        if r is None:
            continue
        pretrain = 0
        if r.get("init_from"):
            dense = _load(Path(r["init_from"]) / "results.json") or _load(
                RUNS / Path(r["init_from"]).name / "results.json"
            )
            pretrain = dense["steps"] if dense else 0
        rows.append(
            {
                "variant": variant,
                "run": path.name,
                "seed": r["seed"],
                "target": round(r["sparsity"], 2),
                "test_acc": r["test_acc"],
                "val_acc": r["val_acc"],
                "steps": r["steps"] + pretrain,
                "pretrain_steps": pretrain,
                "churn": summed_churn(path),
                "wall_s": r["train_time_s"],
            }
        )
    return rows


VARIANTS = (
    ("bip_s*_seed*", "before: plain SGD, normalised scores, first/last dense (one run)"),
    ("bip_rel_s*_seed*", "released choices, one run (dense half, bi-level half)"),
    ("bip_rel_w30ft20_s*_seed*", "released choices, one run: dense 30 %, bi-level 50 %, fine-tune 20 %"),
    ("bip_rel_init_s*_seed*", "released choices, from a trained dense run (paper's setting)"),
    ("bip_rel_init8ep_s*_seed*", "released choices, from the dense run, 8 bi-level epochs (IMP's steps / 3)"),
)


def main() -> None:
    costs = step_costs()
    imp = imp_rounds(costs)
    gmp = [r for r in protocol_rows("gmp") if r["target"] in TARGETS]
    rows = [row for pattern, name in VARIANTS for row in bip_runs(pattern, name)]
    lines = [
        "| target | variant | seed | test acc | val acc | steps (dense counted) | summed churn | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in TARGETS:
        for r in (r for r in rows if r["target"] == target):
            churn = f"{r['churn']:.4f}" if r["churn"] is not None else "–"
            lines.append(
                f"| {target:.0%} | {r['variant']} | {r['seed']} | {r['test_acc']:.4f} | {r['val_acc']:.4f} "
                f"| {r['steps']} | {churn} | {r['wall_s']:.0f} |"
            )
        g = [x["test_acc"] for x in gmp if x["target"] == target]
        ticket = next((x for x in imp if abs(x["sparsity"] - target) < 5e-3), None)
        if g:
            lines.append(f"| {target:.0%} | GMP, one run | 0, 1 | {', '.join(f'{a:.4f}' for a in g)} | | 1263 | 0 | |")
        if ticket:
            lines.append(
                f"| {target:.0%} | IMP, LR rewinding, round {ticket['round']} | 0 | {ticket['test_acc']:.4f} "
                f"| {ticket['val_acc']:.4f} | {ticket['steps']} | 0 | {ticket['wall_s']:.0f} |"
            )
    verdicts = []
    for target in TARGETS:
        g = [x["test_acc"] for x in gmp if x["target"] == target]
        ticket = next((x for x in imp if abs(x["sparsity"] - target) < 5e-3), None)
        one = [r["test_acc"] for r in rows if r["target"] == target and r["run"].startswith("bip_rel_s")]
        ft = [r["test_acc"] for r in rows if r["target"] == target and r["run"].startswith("bip_rel_w30ft20")]
        init = [r for r in rows if r["target"] == target and r["run"].startswith("bip_rel_init")]
        init = [r for r in init if r["steps"] == max(x["steps"] for x in init)]  # the longest from-dense variant
        v = {"target": target, "gmp_mean": statistics.mean(g) if g else None}
        if one and g:
            v["one_run_mean"] = statistics.mean(one)
            v["one_run_minus_gmp"] = v["one_run_mean"] - v["gmp_mean"]
        if ft and g:
            v["finetune_run_mean"], v["finetune_run_seeds"] = statistics.mean(ft), len(ft)
            v["finetune_run_minus_gmp"] = v["finetune_run_mean"] - v["gmp_mean"]
        if init and ticket:
            v["from_dense_mean"] = statistics.mean(r["test_acc"] for r in init)
            v["from_dense_minus_imp"] = v["from_dense_mean"] - ticket["test_acc"]
            v["from_dense_steps_over_imp"] = statistics.mean(r["steps"] for r in init) / ticket["steps"]
        verdicts.append(v)
    lines += [
        "",
        "| target | one run − GMP (equal steps) | one run with fine-tune − GMP (seeds) | from dense − IMP "
        "| steps from dense / IMP |",
        "|---|---|---|---|---|",
    ]
    for v in verdicts:
        nan = float("nan")
        lines.append(
            f"| {v['target']:.0%} | {v.get('one_run_minus_gmp', nan):+.4f} "
            f"| {v.get('finetune_run_minus_gmp', nan):+.4f} ({v.get('finetune_run_seeds', 0)}) "
            f"| {v.get('from_dense_minus_imp', nan):+.4f} | {v.get('from_dense_steps_over_imp', nan):.2f} |"
        )
    (HERE / "results_released.md").write_text("\n".join(lines) + "\n")
    (HERE / "summary_released.json").write_text(json.dumps({"runs": rows, "verdicts": verdicts}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
