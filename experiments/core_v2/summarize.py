"""Before/after table of the core v2 fidelity fixes on the shared accuracy protocol.

Usage: python experiments/core_v2/summarize.py   (prints a markdown table, writes experiments/core_v2/summary.json)

"before" runs: experiments/accuracy/runs (GraNet, PDP 2:4, made before the fixes) and
experiments/core_v2/runs/*_before_* (PDP channel, run from a worktree of the pre-fix commit eb5dead);
"after" runs: experiments/core_v2/runs.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEFORE = HERE.parent / "accuracy" / "runs"
SETTINGS = {  # setting -> (before-run prefix and folder, after-run prefix)
    "GraNet 90 %": ((BEFORE, "granet_s90"), "granet_s90"),
    "GraNet 95 %": ((BEFORE, "granet_s95"), "granet_s95"),
    "PDP 50 % channels": ((HERE / "runs", "pdp_channel50_before"), "pdp_channel50"),
    "PDP 2:4": ((BEFORE, "pdp_nm24"), "pdp_nm24"),
}


def accuracies(folder: Path, prefix: str) -> dict[int, float]:
    """Test accuracy per seed of the finished runs `<prefix>_seed<k>` in `folder`."""
    out = {}
    for seed in (0, 1):
        path = folder / f"{prefix}_seed{seed}" / "results.json"
        if path.exists():
            out[seed] = json.loads(path.read_text())["test_acc"]
    return out


def main() -> int:
    if len(sys.argv) > 1:
        print(__doc__)
        return 0
    rows = []
    for setting, ((folder, before_prefix), after_prefix) in SETTINGS.items():
        before, after = accuracies(folder, before_prefix), accuracies(HERE / "runs", after_prefix)
        paired = sorted(set(before) & set(after))
        rows.append(
            {
                "setting": setting,
                "before": before,
                "after": after,
                "delta_same_seeds": statistics.mean(after[s] - before[s] for s in paired) if paired else None,
                "seeds_paired": paired,
            }
        )
    print("| setting | before (seeds) | after (seeds) | after − before, same seeds |")
    print("|---|---|---|---|")
    for r in rows:
        fmt = lambda d: ", ".join(f"{v:.4f} (s{k})" for k, v in sorted(d.items())) or "–"  # noqa: E731
        delta = f"{r['delta_same_seeds']:+.4f} ({len(r['seeds_paired'])} seed)" if r["seeds_paired"] else "–"
        print(f"| {r['setting']} | {fmt(r['before'])} | {fmt(r['after'])} | {delta} |")
    (HERE / "summary.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
