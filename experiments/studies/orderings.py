"""What the studies say of the papers' claims: each paper's ordering at each setting, and the gap of the best method
to dense at equal optimizer steps, read from the same cells as the tables (so the verdicts cannot drift from them).

    python -m experiments.studies.orderings     # prints the table; `python -m experiments.studies.tables` writes it
                                                # into README.md (between the <!-- study:orderings --> markers)

A difference counts as an ordering only when it is larger than the seed spread (half the range over seeds, the
larger of the two cells'); one seed has no spread, which the verdict says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from experiments.studies.data import Cell, cells, flops_setting, target_setting

SPARSITIES = (0.9, 0.95, 0.98)
BUDGETS = (0.5, 0.4)
GAP_TARGETS = {0.9: None, 0.95: 0.3, 0.98: 1.0}  # the largest gap to dense the studies aim at (points); None: none
FROM_SCRATCH_EXCLUDED = ("dense", "imp")  # at equal steps: IMP's rounds are whole budgets


@dataclass(frozen=True)
class Claim:
    """A paper's ordering: `better` at least as accurate as `baseline`, in `study`, at each of `settings`."""

    paper: str
    better: str
    baseline: str
    study: str
    settings: tuple[float, ...]
    setting_of: Callable = target_setting
    label: Callable[[float], str] = lambda s: f"{s * 100:g} %"


CLAIMS = (
    Claim("GraNet ≥ GMP", "granet", "gmp", "unstructured", (0.95, 0.98)),
    Claim("PDP ≥ GMP at high sparsity", "pdp", "gmp", "unstructured", (0.95, 0.98)),
    Claim(
        "LAPP ≥ uniform channel GMP, same FLOPs",
        "lapp",
        "gmp",
        "structured",
        BUDGETS,
        flops_setting,
        lambda s: f"{s:g} of dense FLOPs",
    ),  # fmt: skip
)
LOWER_COMPUTE = ("BiP ≥ IMP at lower compute", ("bip", "bip from dense"), "imp")


def _points(value: float) -> str:
    return f"{value * 100:+.2f}"


def compare(better: Cell, baseline: Cell) -> str:
    """`yes` / `no` / `within the seed spread`, with the difference in points, the spread and the seeds."""
    diff, noise = better.mean - baseline.mean, max(better.spread, baseline.spread)
    word = "yes" if diff > noise else "no" if diff < -noise else "within the seed spread"
    seeds = f"{len(better.test_acc)} vs {len(baseline.test_acc)} seeds"
    return f"{word}: {better.mean:.4f} vs {baseline.mean:.4f} ({_points(diff)} pts, spread {noise * 100:.2f}; {seeds})"


def _lower_compute(found: dict, setting: float) -> str:
    paper, methods, baseline = LOWER_COMPUTE
    imp = found.get((baseline, setting))
    if imp is None:
        return "IMP not run"
    parts = []
    for method in methods:
        cell = found.get((method, setting))
        if cell is None:
            parts.append(f"{method}: not run")
            continue
        steps, imp_steps = max(cell.steps), max(imp.steps)
        if steps >= imp_steps:
            parts.append(f"{method}: not at lower compute ({steps} vs {imp_steps} steps)")
            continue
        parts.append(f"{method}, {imp_steps / steps:.1f}× fewer steps ({steps} vs {imp_steps}): {compare(cell, imp)}")
    return "; ".join(parts)


def gap_to_dense(found: dict, setting: float) -> str:
    """The best method at the setting among those trained for the dense run's steps, and its gap to dense."""
    dense = found.get(("dense", None))
    if dense is None:
        return "no dense run"
    equal = [
        c
        for (method, s), c in found.items()
        if s == setting and method not in FROM_SCRATCH_EXCLUDED and set(c.steps) == set(dense.steps)
    ]
    if not equal:
        return "no run at the dense run's steps"
    best = max(equal, key=lambda c: c.mean)
    gap = (dense.mean - best.mean) * 100
    target = GAP_TARGETS.get(setting)
    aim = "no target" if target is None else f"target ≤ {target:g}: {'met' if gap <= target else 'not met'}"
    return f"{best.method} {best.mean:.4f}, {gap:.2f} pts below dense {dense.mean:.4f} ({aim})"


def report() -> str:
    """The markdown table: one row per claim and setting, then the gap to dense per sparsity."""
    lines = ["| claim | setting | here |", "|---|---|---|"]
    for claim in CLAIMS:
        found = cells(claim.study, claim.settings, claim.setting_of)
        for s in claim.settings:
            better, baseline = found.get((claim.better, s)), found.get((claim.baseline, s))
            here = compare(better, baseline) if better and baseline else "not run"
            lines.append(f"| {claim.paper} | {claim.label(s)} | {here} |")
    unstructured = cells("unstructured", SPARSITIES, target_setting)
    for s in SPARSITIES:
        lines.append(f"| {LOWER_COMPUTE[0]} | {s * 100:g} % | {_lower_compute(unstructured, s)} |")
    for s in SPARSITIES:
        lines.append(f"| best at the dense run's steps vs dense | {s * 100:g} % | {gap_to_dense(unstructured, s)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
