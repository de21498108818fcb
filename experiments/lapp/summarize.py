"""Tables of the LAPP studies (accuracy against dense and channel GMP; FLOPs targets), and summary.json.

.venv/bin/python experiments/lapp/summarize.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DENSE = HERE.parent / "accuracy" / "runs"


def load(path: Path) -> dict | None:
    f = path / "results.json"
    return json.loads(f.read_text()) if f.exists() else None


def accuracy_rows() -> list[dict]:
    rows = []
    for name in sorted(p.name for p in (HERE / "runs").glob("*")) if (HERE / "runs").exists() else []:
        r = load(HERE / "runs" / name)
        if r is None:
            continue
        seed = r["seed"]
        dense = load(DENSE / f"dense_seed{seed}")
        rates = (r.get("lapp") or {}).get("layer_channel_pruning") or {}
        stages = {}
        for layer, rate in rates.items():  # mean channel pruning rate per stage (the allocation LAPP learned)
            stages.setdefault(layer.split(".")[0], []).append(rate)
        rows.append(
            {
                "run": name,
                "min_keep": (r.get("pruner_config") or {}).get("min_keep"),
                "val_acc": r["val_acc"],
                "test_acc": r["test_acc"],
                "dense_test_acc": dense["test_acc"] if dense else None,
                "flops_ratio": r["flops_sparse"] / r["flops_dense"],
                "channel_sparsity": r.get("channel_sparsity"),
                "params_ratio": r["params_nonzero"] / r["params_total"],
                "train_time_s": r["train_time_s"],
                "dense_train_time_s": dense["train_time_s"] if dense else None,
                "stage_channel_pruning": ", ".join(
                    f"{k} {sum(v) / len(v):.2f}" for k, v in sorted(stages.items()) if k.startswith("layer")
                )
                or None,
            }
        )
    return rows


def flops_rows() -> list[dict]:
    rows = []
    for path in sorted((HERE / "flops_runs").glob("*")) if (HERE / "flops_runs").exists() else []:
        r = load(path)
        if r is None:
            continue
        target = r["pruner_config"]["max_flops_ratio"]
        ratio = r["flops_sparse"] / r["flops_dense"]
        rows.append(
            {
                "model": r["model"],
                "target": target,
                "measured": ratio,
                "meets": ratio <= target + 1e-12 and target - ratio <= 0.02,
                "flops_dense": r["flops_dense"],
                "flops_sparse": r["flops_sparse"],
                "channel_sparsity": r.get("channel_sparsity"),
            }
        )
    return rows


def fmt(v) -> str:
    return "—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def table(rows: list[dict]) -> str:
    if not rows:
        return "(no finished runs)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    acc, fl = accuracy_rows(), flops_rows()
    print("Accuracy (shared protocol)\n" + table(acc) + "\n\nFLOPs targets\n" + table(fl))
    (HERE / "summary.json").write_text(json.dumps({"accuracy": acc, "flops_targets": fl}, indent=2))
