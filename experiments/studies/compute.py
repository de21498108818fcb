"""What a study run cost, in dense-step equivalents: its optimizer steps, each weighted by the measured time of
that kind of step relative to a dense step.

The step times are the Lightning-loop benchmark's at the studies' batch size (ResNet-20, batch 128, inside a real
`Trainer`, CPU; `experiments/overhead/lightning_resnet20_b128_cpu.json`, from `python -m
experiments.overhead.lightning_loop --model resnet20 --batch 128`), the median over its rounds of each variant's
mean step time over dense's. Which steps cost what:

- BiP: its dense start (`warmup_step` steps of its results.json) at a dense step's cost, its bi-level steps at
  `bip`'s, its fine-tune (from `finetune_step`) at a masked step's (`magnitude`: masks on, no events). Without
  results.json every step is costed as bi-level (an upper bound).
- IMP: a round is a whole budget; round 0 trains dense, every later round with its mask (`magnitude`'s cost).
- Every other method: all steps at its own variant's cost (its mask events included), `magnitude`'s when the
  benchmark has no variant of that name; dense at 1.
- A run started from another run's weights (`init_from`, e.g. BiP from the study's trained dense run): that
  run's steps are added at a dense step's cost (`start_steps`).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = ROOT / "experiments" / "overhead" / "lightning_resnet20_b128_cpu.json"
ROUND_JOB = re.compile(r"(?P<run>.+)/round(?P<round>\d+)")


@cache
def step_costs(path: Path = BENCHMARK) -> dict[str, float]:
    """Each benchmarked variant's step time over a dense step's (median over the benchmark's rounds)."""
    summary = json.loads(path.read_text())["summary"]
    return {variant: float(stats["mean_ratio"]["median"]) for variant, stats in summary.items()}


def _results(runs: Path, job: str) -> dict:
    path = runs / job / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def start_run(row: dict[str, str], runs: Path) -> Path | None:
    """The run directory a row started from (`init_from`: the run, its export or one of its checkpoints; None
    without one), found where the job recorded it (relative to the repository) or as a job of the same study.

    Raises:
        FileNotFoundError: the source run's results.json is in neither place (its steps would go uncounted).
    """
    if not row.get("init_from"):
        return None
    source = Path(row["init_from"])
    if source.suffix in (".json", ".safetensors"):  # a file of an export
        source = source.parent
    if source.suffix == ".ckpt":  # RUN/checkpoints/last.ckpt
        source = source.parent.parent
    if source.name == "export":
        source = source.parent
    for path in (source, ROOT / source, runs / source.name):
        if (path / "results.json").exists():
            return path
    raise FileNotFoundError(
        f"{row['job']}: started from {row['init_from']}, whose run's results.json is not there nor in {runs}: "
        "its steps are unknown"
    )


def start_steps(row: dict[str, str], runs: Path) -> int:
    """The optimizer steps of the run a row started from (0 without one)."""
    source = start_run(row, runs)
    return 0 if source is None else int(json.loads((source / "results.json").read_text())["steps"])


def dense_step_equivalents(row: dict[str, str], runs: Path, costs: dict[str, float] | None = None) -> float | None:
    """The compute of one row of a study's CSV (None when it recorded no steps)."""
    if not row.get("steps"):
        return None
    costs = costs or step_costs()
    return start_steps(row, runs) + _own_compute(row, runs, costs)


def _own_compute(row: dict[str, str], runs: Path, costs: dict[str, float]) -> float:
    steps, method = float(row["steps"]), row["pruner"]
    masked = costs["magnitude"]
    if method == "dense":
        return steps
    if (match := ROUND_JOB.fullmatch(row["job"])) is not None:  # an IMP round: `steps` counts every round to it
        per_round = steps / (int(match["round"]) + 1)
        return per_round + (steps - per_round) * masked
    if method == "bip":
        results = _results(runs, row["job"])
        if "warmup_step" not in results:
            return steps * costs["bip"]
        dense = float(results["warmup_step"])
        finetune = steps - float(results.get("finetune_step") or steps)
        return dense + (steps - dense - finetune) * costs["bip"] + finetune * masked
    return steps * costs.get(method, masked)
