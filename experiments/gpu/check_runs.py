"""Check the train.py runs of the GPU check: results.json, the exported model and the reached sparsity.

Usage: python experiments/gpu/check_runs.py RUNS_DIR OUT_JSON   (exit 1 when any run fails a check)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def check_run(run_dir: Path) -> dict:
    """One run's verdict: every check with its observed value."""
    out: dict = {"run": run_dir.name, "ok": False}
    results_path = run_dir / "results.json"
    if not results_path.exists():
        out["error"] = "no results.json (the run crashed: see runs.log)"
        return out
    results = json.loads(results_path.read_text())
    config = results.get("pruner_config") or {}
    target = config.get("sparsity")
    out.update(
        pruner=results.get("pruner"),
        granularity=config.get("granularity"),
        target=target,
        sparsity=results.get("sparsity"),
        test_acc=results.get("test_acc"),
        steps=results.get("steps"),
        exported=(run_dir / "export" / "model.safetensors").exists() and (run_dir / "export" / "model.json").exists(),
    )
    if config.get("max_flops_ratio") is not None:  # a FLOPs budget (LAPP): measured on the slimmed network
        ratio = results["flops_sparse"] / max(1, results["flops_dense"])
        out.update(target=config["max_flops_ratio"], flops_ratio=ratio)
        reached = ratio <= config["max_flops_ratio"] + 1e-9
    elif config.get("granularity") == "channel":  # target is a fraction of channels; weights zeroed differ
        reached = out["sparsity"] is not None and out["sparsity"] > 0
    else:
        reached = target is not None and out["sparsity"] is not None and abs(out["sparsity"] - target) < 2e-3
    out["reached"] = reached
    out["ok"] = bool(reached and out["exported"] and out["test_acc"] is not None)
    return out


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    runs = [check_run(d) for d in sorted(Path(sys.argv[1]).iterdir()) if d.is_dir()]
    Path(sys.argv[2]).write_text(json.dumps(runs, indent=2))
    for r in runs:
        print(
            f"{r['run']:<12} {'ok' if r['ok'] else 'FAIL':<5} sparsity={r.get('sparsity')} target={r.get('target')} "
            f"test_acc={r.get('test_acc')} exported={r.get('exported')} {r.get('error', '')}"
        )
    return 0 if runs and all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
