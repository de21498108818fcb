"""The GPU check script runs end to end on the CPU with its tiny budget (so it is known to work before a GPU run)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from sparsetrain.pruners import list_pruners

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_writes_at_most_8_files(tmp_path):
    env = {**os.environ, "RESULTS_DIR": str(tmp_path)}
    proc = subprocess.run(
        ["bash", "experiments/gpu/check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8, files
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert {r["pruner"] for r in runs} == set(list_pruners())  # every registered method is checked
    assert all(r["ok"] for r in runs), runs
    overhead = json.loads((tmp_path / "overhead.json").read_text())
    assert overhead, "the overhead benchmark wrote no result"
