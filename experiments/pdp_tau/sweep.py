"""PDP: temperature τ and threshold refresh period, on a short budget (quality and cost).

ResNet-20 on Fashion-MNIST, 90 % sparsity, half an epoch of training batches (210 steps) so that a
variant costs a few minutes here; each variant is one `train.py` run. Accuracy on such a short budget is
only a ranking signal, and the timings share the machine with whatever else runs, so compare them within
this table only.

    .venv/bin/python -m experiments.pdp_tau.sweep
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from experiments.common import markdown_table, parse_cli, write_json

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
BASE = [
    "+pruner=pdp",
    "pruner.sparsity=0.9",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=0.5",
    "logger=csv",
    "export=false",
    "progress_bar=false",
    "pruner.finetune=0.2",
]
VARIANTS = {
    "tau=0.01 (relative)": ["pruner.tau=0.01"],
    "tau=0.05 (relative)": ["pruner.tau=0.05"],
    "tau=0.2 (relative)": ["pruner.tau=0.2"],
    "tau=1e-5 (absolute, paper)": ["pruner.tau=1e-5", "pruner.tau_normalize=false"],
    "tau=0.05, threshold_every=1": ["pruner.tau=0.05", "pruner.threshold_every=1"],
    "tau=0.05, threshold_every=50": ["pruner.tau=0.05", "pruner.threshold_every=50"],
}


def main() -> None:
    parse_cli(__doc__)
    rows, out = [], {}
    for name, overrides in VARIANTS.items():
        run_dir = HERE / "runs" / re.sub(r"[^\w.-]+", "_", name.replace("=", "")).strip("_")
        if not (run_dir / "results.json").exists():
            subprocess.run(
                [sys.executable, "train.py", *BASE, *overrides, f"hydra.run.dir={run_dir}"],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
        r = json.loads((run_dir / "results.json").read_text())
        out[name] = {
            "test_acc": r["test_acc"],
            "sparsity": r["sparsity"],
            "train_time_s": r["train_time_s"],
            "overrides": overrides,
        }
        rows.append([name, f"{r['test_acc']:.4f}", f"{r['sparsity']:.3f}", f"{r['train_time_s']:.0f}"])
        print(rows[-1], flush=True)
    write_json(HERE / "results.json", out)
    print(markdown_table(["variant", "test acc", "sparsity", "train s"], rows))


if __name__ == "__main__":
    main()
