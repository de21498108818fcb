"""Studies (`conf/experiment/<study>*.yaml`): every job of a study's sweep is checked before any runs, a job that
finished is skipped and an interrupted one resumes, and the README's tables and the CSV come from the runs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparsetrain.cli import _job_overrides, check_command_line
from sparsetrain.sweep_summary import collect

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
STUDY_CONFIGS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
GRID = {
    "unstructured": 7 * 3 * 2,
    "unstructured_dense": 2,
    "unstructured_imp": 2,
    "structured_channel": 2 * 2 * 2,
    "structured_lapp": 2 * 2,
    "structured_nm": 4 * 2,
}


def test_every_study_config_is_known_here():
    assert set(STUDY_CONFIGS) == set(GRID)


@pytest.mark.parametrize("study", STUDY_CONFIGS)
def test_every_job_of_a_study_is_composed_and_checked_before_any_runs(study):
    jobs = _job_overrides([f"experiment={study}"], multirun=True, conf_dir=CONF)
    assert len(jobs) == GRID[study]
    assert len({" ".join(job) for job in jobs}) == len(jobs)
    check_command_line(["train.py", "-m", f"experiment={study}"], CONF)  # raises on the first bad job


def test_a_bad_value_in_a_study_sweep_names_the_job(tmp_path):
    argv = ["train.py", "-m", "experiment=unstructured", "pruner.sparsity=0.9,1.5", "+pruner=gmp"]
    with pytest.raises(Exception, match=r"pruner.sparsity.*\(sweep job: .*pruner.sparsity=1.5"):
        check_command_line(argv, CONF)


def _sweep(sweep_dir: Path) -> subprocess.CompletedProcess:
    args = ["-m", "experiment=unstructured", "+pruner=gmp", "seed=0", "data=fake", "data.num_samples=64",
            "data.num_test=16", "data.batch_size=16", "data.image_size=16", "model=lenet5", "trainer.max_epochs=-1",
            "trainer.max_steps=4", "trainer.accelerator=cpu", "trainer.enable_model_summary=false",
            f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_study_resumes_where_it_stopped(tmp_path):
    """Finished jobs are skipped (their files untouched), an interrupted job continues from its last.ckpt, and
    the study's CSV has one row per job with the method in a `pruner` column."""
    _sweep(tmp_path)
    jobs = [tmp_path / f"gmp_s{s}_seed0" for s in (0.9, 0.95, 0.98)]
    mtimes = {job: (job / "results.json").stat().st_mtime_ns for job in jobs}
    (jobs[2] / "results.json").unlink()  # as if the sweep had been stopped during its last job
    proc = _sweep(tmp_path)
    out = proc.stdout + proc.stderr
    assert out.count("skip: ") == 2 and "resuming the interrupted job" in out
    assert all((job / "results.json").stat().st_mtime_ns == mtimes[job] for job in jobs[:2])
    assert json.loads((jobs[2] / "results.json").read_text())["steps"] == 4  # no step trained twice
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["pruner"], r["target"], r["seed"]) for r in rows] == [("gmp", t, "0") for t in ("0.9", "0.95", "0.98")]


def test_the_collector_reads_committed_runs_without_hydra_files_and_expands_imp_rounds(tmp_path):
    (tmp_path / "dense_seed0").mkdir()
    (tmp_path / "dense_seed0" / "results.json").write_text(json.dumps({"pruner": None, "seed": 0, "test_acc": 0.92}))
    imp = tmp_path / "imp_s0.98_seed1"
    imp.mkdir()
    config = {"sparsity": 0.98, "granularity": "unstructured"}
    results = {"pruner": "imp", "seed": 1, "test_acc": 0.9, "pruner_config": config}
    (imp / "results.json").write_text(json.dumps(results))
    rounds = [{"round": r, "sparsity": s, "val_acc": 0.9, "test_acc": 0.91 - r / 100, "steps_done": 10 * (r + 1),
               "wall_s": 1.0} for r, s in enumerate((0.0, 0.5, 0.9))]  # fmt: skip
    (imp / "rounds.json").write_text(json.dumps(rounds))
    rows = collect(tmp_path)
    assert [(r["job"], r["pruner"], r["target"], r["seed"]) for r in rows] == [
        ("dense_seed0", "dense", None, 0),
        ("imp_s0.98_seed1", "imp", 0.98, 1),
        ("imp_s0.98_seed1/round0", "imp", None, 1),
        ("imp_s0.98_seed1/round1", "imp", None, 1),
        ("imp_s0.98_seed1/round2", "imp", None, 1),
    ]
    assert rows[-1]["sparsity"] == 0.9 and rows[-1]["steps"] == 30 and rows[-1]["test_acc"] == pytest.approx(0.89)


def test_readme_tables_are_written_from_the_study_csv(tmp_path, monkeypatch):
    from experiments.studies import data, tables

    runs = tmp_path / "unstructured" / "runs"
    runs.mkdir(parents=True)
    fields = ["job", "pruner", "target", "seed", "sparsity", "test_acc", "steps"]
    rows = [
        ["dense_seed0", "dense", "", "0", "0", "0.9200", "1263"],
        ["gmp_s0.9_seed0", "gmp", "0.9", "0", "0.9", "0.9150", "1263"],
        ["gmp_s0.9_seed1", "gmp", "0.9", "1", "0.9", "0.9170", "1263"],
        ["imp_s0.98_seed0/round10", "imp", "", "0", "0.90004", "0.9280", "13893"],
        ["imp_s0.98_seed0/round11", "imp", "", "0", "0.9206", "0.9270", "15156"],  # not a study setting
        ["set_s0.95_seed0", "set", "0.95", "0", "0.95", "", ""],  # unfinished: left out
    ]
    with open(runs / "summary.csv", "w", newline="") as f:
        csv.writer(f).writerows([fields, *rows])
    monkeypatch.setattr(data, "STUDIES", tmp_path)
    text = tables.table("unstructured")
    lines = text.splitlines()
    assert lines[0] == "| method | 90 % | 95 % | 98 % | optimizer steps per run |"
    assert "| dense | 0.9200 (1) | 0.9200 (1) | 0.9200 (1) | 1263 |" in lines
    assert "| gmp | 0.9160 ± 0.0010 (2) |  |  | 1263 |" in lines
    assert "| imp | 0.9280 (1) |  |  | 13893 |" in lines
    assert not any(line.startswith("| set") for line in lines)
    readme = "intro\n<!-- study:unstructured -->\nstale\n<!-- /study:unstructured -->\nend\n"
    rendered = f"intro\n<!-- study:unstructured -->\n{text}\n<!-- /study:unstructured -->\nend\n"
    assert tables.render(readme, ("unstructured",)) == rendered
    assert tables.render(readme.replace("stale\n", ""), ("unstructured",)) == rendered  # an empty block too
    assert tables.render(rendered, ("unstructured",)) == rendered
