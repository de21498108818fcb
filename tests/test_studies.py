"""Studies (`conf/experiment/<study>*.yaml`): every job of a study's sweep is checked before any runs, a job that
finished is skipped and an interrupted one resumes, and the README's tables and the CSV come from the runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sparsetrain.cli import _job_overrides, check_command_line
from sparsetrain.sweep_summary import collect, write_summary

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
STUDY_CONFIGS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
GRID = {
    "unstructured": 7 * 3 * 2,
    "unstructured_dense": 2,
    "unstructured_imp": 2,
    "unstructured_bip_from_dense": 3 * 2,
    "unstructured_low": 3 * 2 * 2,
    "structured_channel": 2 * 2 * 2,
    "structured_lapp": 2 * 2,
    "structured_nm": 4 * 2,
    "family_resnet18": 4,
    "family_resnet18_dense": 1,
    "family_resnet18_lapp": 1,
    "family_vit": 4,
    "family_vit_dense": 1,
    "gpu_unstructured": 7 * 3 * 2,
    "gpu_unstructured_dense": 2,
    "gpu_unstructured_imp": 2,
}


def test_every_study_config_is_known_here():
    assert set(STUDY_CONFIGS) == set(GRID)


def _cpu(study: str) -> list[str]:
    """The override that lets a GPU preset compose on a machine without one."""
    return ["trainer.accelerator=cpu"] if study.startswith("gpu_") and not torch.cuda.is_available() else []


@pytest.mark.parametrize("study", STUDY_CONFIGS)
def test_every_job_of_a_study_is_composed_and_checked_before_any_runs(study):
    cpu = _cpu(study)
    jobs = _job_overrides([f"experiment={study}", *cpu], multirun=True, conf_dir=CONF)
    assert len(jobs) == GRID[study]
    assert len({" ".join(job) for job in jobs}) == len(jobs)
    check_command_line(["train.py", "-m", f"experiment={study}", *cpu], CONF)  # raises on the first bad job


@pytest.mark.parametrize("study", STUDY_CONFIGS)
def test_every_method_of_a_study_prunes_the_same_layers(study):
    """One protocol: the first conv and the classifier stay dense for every method of a study, BiP included
    (its own default prunes them, as its released code does)."""
    from hydra import compose, initialize_config_dir

    jobs = _job_overrides([f"experiment={study}", *_cpu(study)], multirun=True, conf_dir=CONF)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        kept = {
            (cfg.pruner._target_, cfg.pruner.keep_first_last)
            for cfg in (compose("train", job) for job in jobs)
            if cfg.get("pruner") is not None
        }
    assert all(keep for _, keep in kept), sorted(kept)


@pytest.mark.parametrize("study", [s for s in STUDY_CONFIGS if not s.startswith("gpu_")])
def test_every_cpu_study_runs_one_job_at_a_time_here_and_composes_with_the_slurm_launcher(study):
    """The studies' launcher is a preset (n_jobs 1), so `hydra/launcher=slurm` replaces it whole."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        here = compose("train", [f"experiment={study}"], return_hydra_config=True).hydra.launcher
        slurm = compose("train", [f"experiment={study}", "hydra/launcher=slurm"], return_hydra_config=True)
    assert here.n_jobs == 1 and "Joblib" in here._target_
    assert "Slurm" in slurm.hydra.launcher._target_ and "n_jobs" not in slurm.hydra.launcher


def _composed(*overrides: str) -> dict:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", list(overrides))
    return OmegaConf.to_container(cfg, resolve=False)


def _differences(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set(a) | set(b)
    out = set()
    for k in keys:
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out |= _differences(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.add(f"{prefix}{k}")
    return out


@pytest.mark.parametrize(
    ("preset", "reference", "pruner", "differs"),
    [
        ("gpu_unstructured", "unstructured", "+pruner=bip", {"trainer.accelerator", "trainer.precision",
                                                               "trainer.benchmark"}),
        ("gpu_unstructured_imp", "unstructured_imp", "+pruner=imp", {"trainer.accelerator", "trainer.precision",
                                                                   "trainer.benchmark"}),
        ("family_resnet18", "unstructured", "+pruner=gmp", {"model.source", "model.name", "data.image_size",
                                                           "logger.wandb.group"}),
        ("family_vit", "unstructured", "+pruner=pdp", {"model.source", "model.name", "model.kwargs.patch_size",
                                                        "data.image_size", "logger.wandb.group", "optim.name",
                                                        "optim.lr", "optim.weight_decay", "optim.warmup"}),
    ],
)  # fmt: skip
def test_a_preset_keeps_the_studys_protocol(preset, reference, pruner, differs):
    """The GPU preset and the model-family configs change only what their headers say (the study's name and
    folder, W&B group and parallel jobs aside): the same optimizer, steps, schedules and method settings."""
    preset_cfg, reference_cfg = (_composed(f"experiment={e}", pruner) for e in (preset, reference))
    assert _differences(preset_cfg, reference_cfg) == {"study", *differs}


def test_a_bad_value_in_a_study_sweep_names_the_job(tmp_path):
    argv = ["train.py", "-m", "experiment=unstructured", "pruner.sparsity=0.9,1.5", "+pruner=gmp"]
    with pytest.raises(Exception, match=r"pruner.sparsity.*\(sweep job: .*pruner.sparsity=1.5"):
        check_command_line(argv, CONF)


def _sweep(
    sweep_dir: Path, *extra: str, steps: int = 4, ok: bool = True, wandb: str = "disabled"
) -> subprocess.CompletedProcess:
    args = ["-m", "experiment=unstructured", "+pruner=gmp", "seed=0", "data=fake", "data.num_samples=64",
            "data.num_test=16", "data.batch_size=16", "data.image_size=16", "model=lenet5", "trainer.max_epochs=-1",
            f"trainer.max_steps={steps}", "trainer.accelerator=cpu", "trainer.enable_model_summary=false",
            f"hydra.sweep.dir={sweep_dir}", *extra]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": wandb}
    proc = subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
    return proc


def test_a_study_resumes_where_it_stopped(tmp_path):
    """Finished jobs are skipped (their files untouched), an interrupted job continues from its last.ckpt, and
    the study's CSV has one row per job with the method in a `pruner` column. Each job has its own offline W&B
    run, and the interrupted one continues its own."""
    _sweep(tmp_path, wandb="offline")
    jobs = [tmp_path / f"gmp_s{s}_seed0" for s in (0.9, 0.95, 0.98)]
    mtimes = {job: (job / "results.json").stat().st_mtime_ns for job in jobs}
    ids = [(job / "wandb_id.txt").read_text().strip() for job in jobs]
    assert len(set(ids)) == 3
    assert all(list(job.glob(f"wandb/offline-run-*-{i}")) for job, i in zip(jobs, ids, strict=True))
    (jobs[2] / "results.json").unlink()  # as if the sweep had been stopped during its last job
    proc = _sweep(tmp_path, wandb="offline")
    out = proc.stdout + proc.stderr
    assert out.count("skip: ") == 2 and "resuming the interrupted job" in out
    assert (jobs[2] / "wandb_id.txt").read_text().strip() == ids[2]
    assert all((job / "results.json").stat().st_mtime_ns == mtimes[job] for job in jobs[:2])
    assert json.loads((jobs[2] / "results.json").read_text())["steps"] == 4  # no step trained twice
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["pruner"], r["target"], r["seed"]) for r in rows] == [("gmp", t, "0") for t in ("0.9", "0.95", "0.98")]
    # rerun with another budget: a finished job is not taken for this one (one line, naming the key)
    proc = _sweep(tmp_path, steps=5, ok=False)
    assert proc.returncode == 2 and "trainer.max_steps: 4 in results.json, 5 now" in proc.stdout + proc.stderr
    assert all((job / "results.json").stat().st_mtime_ns == mtimes[job] for job in jobs[:2])
    proc = _sweep(tmp_path, "resume_allow_changes=[trainer.max_steps]", steps=5)  # kept on purpose
    assert (proc.stdout + proc.stderr).count("skip: ") == 3


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
    fields = ["job", "pruner", "target", "seed", "sparsity", "test_acc", "steps", "train_time_s"]
    rows = [
        ["dense_seed0", "dense", "", "0", "0", "0.9200", "1263", "1800"],
        ["gmp_s0.9_seed0", "gmp", "0.9", "0", "0.9", "0.9150", "1263", "1800"],
        ["gmp_s0.9_seed1", "gmp", "0.9", "1", "0.9", "0.9170", "1263", "1800"],
        ["imp_s0.98_seed0/round10", "imp", "", "0", "0.90004", "0.9280", "13893", "900"],  # part of its run's time
        ["imp_s0.98_seed0/round11", "imp", "", "0", "0.9206", "0.9270", "15156", "900"],  # not a study setting
        ["set_s0.95_seed0", "set", "0.95", "0", "0.95", "", "", ""],  # unfinished: left out
    ]
    with open(runs / "summary.csv", "w", newline="") as f:
        csv.writer(f).writerows([fields, *rows])
    monkeypatch.setattr(data, "STUDIES", tmp_path)
    text = tables.table("unstructured")
    lines = text.splitlines()
    assert lines[0] == "| method | 90 % | 95 % | 98 % | 2:4 | optimizer steps per run |"
    assert "| dense | 0.9200 (1) | 0.9200 (1) | 0.9200 (1) | 0.9200 (1) | 1263 |" in lines
    assert "| gmp | 0.9160 ± 0.0010 (2) |  |  |  | 1263 |" in lines
    assert "| imp | 0.9280 (1) |  |  |  | 13893 |" in lines
    assert not any(line.startswith("| set") for line in lines)
    assert lines[-1] == "Wall time of its 3 runs: 1.5 h of training (sum of `train_time_s`)."
    readme = "intro\n<!-- study:unstructured -->\nstale\n<!-- /study:unstructured -->\nend\n"
    rendered = f"intro\n<!-- study:unstructured -->\n{text}\n<!-- /study:unstructured -->\nend\n"
    assert tables.render(readme, ("unstructured",)) == rendered
    assert tables.render(readme.replace("stale\n", ""), ("unstructured",)) == rendered  # an empty block too
    assert tables.render(rendered, ("unstructured",)) == rendered


def _run(runs: Path, job: str, pruner: str | None, test_acc: float, steps: int = 1263, flops: float = 1.0,
         init_from: str | None = None, **config) -> Path:  # fmt: skip
    """A finished job's results.json, as train.py writes it (the keys the collector reads)."""
    (runs / job).mkdir(parents=True)
    seed = int(job.rsplit("seed", 1)[1].split("/")[0])
    results = {"pruner": pruner, "seed": seed, "test_acc": test_acc, "val_acc": test_acc, "steps": steps,
               "sparsity": config.get("sparsity", 0.0), "flops_dense": 10**6, "flops_sparse": round(10**6 * flops),
               "pruner_config": config or None, "init_from": init_from}  # fmt: skip
    (runs / job / "results.json").write_text(json.dumps(results))
    return runs / job


def _studies(tmp_path: Path, monkeypatch) -> Path:
    """Synthetic runs of the unstructured, structured and family studies, collected into their CSVs."""
    from experiments.studies import data, plot

    un, st, fam = (tmp_path / s / "runs" for s in ("unstructured", "structured", "family"))
    _run(un, "dense_seed0", None, 0.92)
    _run(un, "gmp_s0.9_seed0", "gmp", 0.915, sparsity=0.9, granularity="unstructured")
    _run(un, "gmp_s0.9_seed1", "gmp", 0.917, sparsity=0.9, granularity="unstructured")
    _run(un, "bip_s0.9_seed0", "bip", 0.914, sparsity=0.9, granularity="unstructured", warmup=0.3)  # dense start
    # from the study's trained dense run, recorded under a path that is not here: found as the study's own job
    _run(un, "bip_dense_s0.9_seed0", "bip", 0.926, 3368, init_from="elsewhere/runs/dense_seed0", sparsity=0.9,
         granularity="unstructured", warmup=0)  # fmt: skip
    imp = _run(un, "imp_s0.98_seed0", "imp", 0.90, 3789, sparsity=0.98, granularity="unstructured")  # 3 rounds
    rounds = [{"round": r, "sparsity": s, "val_acc": 0.9, "test_acc": a, "steps_done": 1263 * (r + 1),
               "wall_s": 1.0} for r, (s, a) in enumerate(((0.0, 0.921), (0.9, 0.928), (0.98, 0.90)))]  # fmt: skip
    (imp / "rounds.json").write_text(json.dumps(rounds))
    nm = {"sparsity": 0.5, "granularity": "nm", "n": 2, "m": 4}
    _run(st, "gmp_nm24_seed0", "gmp", 0.919, flops=0.49, **nm)  # 2:4 measures 0.49 of the FLOPs: not a budget
    _run(st, "gmp_nm24_seed1", "gmp", 0.921, flops=0.49, **nm)
    _run(st, "pdp_nm24_seed0", "pdp", 0.918, flops=0.5, **nm)
    _run(st, "gmp_ch0.36_seed0", "gmp", 0.9185, flops=0.488, sparsity=0.36, granularity="channel")
    _run(st, "gmp_ch0.46_seed0", "gmp", 0.9175, flops=0.396, sparsity=0.46, granularity="channel")
    _run(st, "pdp_ch0.36_seed0", "pdp", 0.9165, flops=0.488, sparsity=0.36, granularity="channel")
    _run(st, "lapp_f0.5_seed0", "lapp", 0.917, flops=0.4999, max_flops_ratio=0.5, granularity="channel")
    _run(st, "lapp_f0.5_seed1", "lapp", 0.919, flops=0.4995, max_flops_ratio=0.5, granularity="channel")
    _run(fam, "resnet18_dense_seed0", None, 0.93)
    _run(fam, "resnet18_gmp_s0.9_seed0", "gmp", 0.90, flops=0.29, sparsity=0.9, granularity="unstructured")
    _run(fam, "resnet18_lapp_f0.5_seed0", "lapp", 0.91, flops=0.5, max_flops_ratio=0.5, granularity="channel")
    _run(fam, "vit_gmp_s0.9_seed0", "gmp", 0.85, flops=0.1, sparsity=0.9, granularity="unstructured")
    for runs in (un, st, fam):
        write_summary(runs)
    monkeypatch.setattr(data, "STUDIES", tmp_path)
    monkeypatch.setattr(plot, "STUDIES", tmp_path)
    return tmp_path


def test_the_unstructured_table_has_a_2_4_column_from_the_structured_studys_nm_runs(tmp_path, monkeypatch):
    from experiments.studies import tables

    _studies(tmp_path, monkeypatch)
    lines = tables.table("unstructured").splitlines()
    assert lines[0] == "| method | 90 % | 95 % | 98 % | 2:4 | optimizer steps per run |"
    assert "| dense | 0.9200 (1) | 0.9200 (1) | 0.9200 (1) | 0.9200 (1) | 1263 |" in lines
    assert "| gmp | 0.9160 ± 0.0010 (2) |  |  | 0.9200 ± 0.0010 (2) | 1263 |" in lines  # gmp_nm24_seed0, seed1
    assert "| pdp |  |  |  | 0.9180 (1) | 1263 |" in lines  # a method with its 2:4 run only
    # compute: BiP's dense start is part of its run's steps; an IMP round counts every round up to it (2 × 1263)
    assert "| bip | 0.9140 (1) |  |  |  | 1263 |" in lines
    # a run from the trained dense run is its own row, and its steps count the dense run's (1263 + 3368)
    assert "| bip from dense | 0.9260 (1) |  |  |  | 4631 |" in lines
    # its last round is the run's own network: one cell entry, not two (the run's row and its round's)
    assert "| imp | 0.9280 (1) |  | 0.9000 (1) |  | 2526, 3789 |" in lines
    structured = tables.table("structured").splitlines()
    assert structured[0] == "| method | 0.5 of dense FLOPs | 0.4 of dense FLOPs | optimizer steps per run |"
    assert "| gmp | 0.9185 (1) | 0.9175 (1) | 1263 |" in structured  # channel runs only: no 2:4 run in a budget
    assert "| pdp | 0.9165 (1) |  | 1263 |" in structured
    assert "| lapp | 0.9180 ± 0.0010 (2) |  | 1263 |" in structured


def test_a_50_or_80_percent_column_shows_only_where_a_method_ran_there(tmp_path, monkeypatch):
    """The sweeps "where time allows" (50 and 80 %) get a column once a method has a cell there, IMP's round that
    lands within 0.002 of it included; the dense reference alone makes no column."""
    from experiments.studies import tables

    studies = _studies(tmp_path, monkeypatch)
    un = studies / "unstructured" / "runs"
    _run(un, "gmp_s0.5_seed0", "gmp", 0.921, sparsity=0.5, granularity="unstructured")
    rounds = json.loads((un / "imp_s0.98_seed0" / "rounds.json").read_text())
    rounds.insert(1, {**rounds[1], "sparsity": 0.49887, "test_acc": 0.93})  # a round at 49.9 %, before 90 %
    for i, r in enumerate(rounds):
        r.update(round=i, steps_done=1263 * (i + 1))
    (un / "imp_s0.98_seed0" / "rounds.json").write_text(json.dumps(rounds))
    write_summary(un)
    lines = tables.table("unstructured").splitlines()
    assert lines[0] == "| method | 50 % | 90 % | 95 % | 98 % | 2:4 | optimizer steps per run |"  # no 80 % run
    assert "| gmp | 0.9210 (1) | 0.9160 ± 0.0010 (2) |  |  | 0.9200 ± 0.0010 (2) | 1263 |" in lines
    assert any(line.startswith("| imp | 0.9300 (1) | 0.9280 (1) |") for line in lines)
    assert tables.unplaced("unstructured") == []


def test_the_papers_orderings_and_the_gap_to_dense_come_from_the_same_cells(tmp_path, monkeypatch):
    from experiments.studies import orderings, tables

    _studies(tmp_path, monkeypatch)
    lines = orderings.report().splitlines()
    assert "| GraNet ≥ GMP | 95 % | not run |" in lines
    # a difference inside the seed spread is no ordering
    assert (
        "| LAPP ≥ uniform channel GMP, same FLOPs | 0.5 of dense FLOPs | within the seed spread: 0.9180 vs 0.9185 "
        "(-0.05 pts, spread 0.10; 2 vs 1 seeds) |"
    ) in lines
    # BiP against IMP's round on 90 % (2 rounds, 2526 steps); BiP from dense took more steps than that round here
    assert (
        "| BiP ≥ IMP at lower compute | 90 % | bip, 2.0× fewer steps (1263 vs 2526): no: 0.9140 vs 0.9280 "
        "(-1.40 pts, spread 0.00; 1 vs 1 seeds); bip from dense: not at lower compute (4631 vs 2526 steps) |"
    ) in lines
    # at equal steps: neither IMP's round nor BiP from dense is the best method, though both are more accurate
    best = "| best at the dense run's steps vs dense | 90 % | gmp 0.9160, 0.40 pts below dense 0.9200 (no target) |"
    assert best in lines
    assert "| best at the dense run's steps vs dense | 95 % | no run at the dense run's steps |" in lines
    readme = "a\n<!-- study:orderings -->\n<!-- /study:orderings -->\n"
    rendered = tables.render(readme, (), orderings=True)
    assert rendered == f"a\n<!-- study:orderings -->\n{orderings.report()}\n<!-- /study:orderings -->\n"


def test_the_family_table_puts_each_model_in_its_column_beside_resnet20(tmp_path, monkeypatch):
    from experiments.studies import tables

    _studies(tmp_path, monkeypatch)
    lines = tables.table("family").splitlines()
    assert lines[0] == ("| method | ResNet-20, 28 px | timm resnet18, 32 px | ViT-Tiny (patch 8, AdamW), 32 px | "
                        "optimizer steps per run |")  # fmt: skip
    assert "| dense | 0.9200 (1) | 0.9300 (1) |  | 1263 |" in lines
    assert "| gmp 90 % | 0.9160 ± 0.0010 (2) | 0.9000 (1) | 0.8500 (1) | 1263 |" in lines
    assert "| bip 90 % | 0.9140 (1) |  |  | 1263 |" in lines
    assert "| lapp 0.5 of dense FLOPs | 0.9180 ± 0.0010 (2) | 0.9100 (1) |  | 1263 |" in lines
    fam = tmp_path / "family" / "runs"
    _run(fam, "resnet18_gmp_s0.95_seed0", "gmp", 0.70, flops=0.2, sparsity=0.95, granularity="unstructured")
    write_summary(fam)  # another target: not averaged into the 90 % cell as if it were a seed
    assert "| gmp 90 % | 0.9160 ± 0.0010 (2) | 0.9000 (1) | 0.8500 (1) | 1263 |" in tables.table("family").splitlines()


def test_the_readme_has_a_block_for_every_study_table_and_the_gpu_preset_is_printed_only(tmp_path, monkeypatch, capsys):
    from experiments.studies import tables

    readme = tables.README.read_text()
    assert tables.render(readme).count("<!-- study:") == len(tables.IN_README) + 1  # + the orderings' block
    assert tables.render(readme) == readme, "README's study tables are stale: python -m experiments.studies.tables"
    assert "gpu_unstructured" not in tables.IN_README and "family" in tables.IN_README
    monkeypatch.setattr(tables, "README", tmp_path / "README.md")  # never written by --print
    tables.main(["--print", "gpu_unstructured"])
    assert capsys.readouterr().out.startswith("| method | 90 % | 95 % | 98 % | optimizer steps per run |")


def test_the_structured_study_draws_accuracy_against_measured_flops(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.studies import plot

    _studies(tmp_path, monkeypatch)
    fig, ax = plt.subplots()
    plot.accuracy_vs_flops("structured", ax)
    lines = {c.get_label(): c for c in ax.containers}  # one errorbar per method; 2:4 runs left out
    assert set(lines) == {"channel gmp", "channel pdp", "lapp"}
    xs, ys = lines["channel gmp"].lines[0].get_data()
    assert list(xs) == pytest.approx([0.396, 0.488]) and list(ys) == pytest.approx([0.9175, 0.9185])
    xs, ys = lines["lapp"].lines[0].get_data()
    assert list(xs) == pytest.approx([0.4997]) and list(ys) == pytest.approx([0.918])  # mean of the seeds
    plt.close(fig)
    st = tmp_path / "structured" / "runs"  # three seeds at equal FLOPs: their mean may land a rounding error past them
    for seed in range(3):
        _run(st, f"pdp_ch0.9_seed{seed}", "pdp", 0.85, flops=0.1, sparsity=0.9, granularity="channel")
    write_summary(st)
    assert max(0.1, 0.1, 0.1) - sum((0.1, 0.1, 0.1)) / 3 < 0 and min(plot.bars(sum((0.1,) * 3) / 3, (0.1,) * 3)) >= 0
    for study in ("structured", "unstructured", "family"):
        plot.main([study])
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/plots/*.png")}
    expected = {"structured/plots/accuracy_vs_flops.png", "structured/plots/accuracy_vs_sparsity.png",
                "unstructured/plots/accuracy_vs_compute.png", "family/plots/sparsity_over_training.png"}  # fmt: skip
    assert expected <= names


def test_compute_weights_each_phase_of_a_run_by_its_measured_step_time(tmp_path):
    """BiP: dense start at 1, bi-level at `bip`, fine-tune at a masked step; IMP: round 0 dense, later rounds
    masked; other methods at their own variant's cost. The committed benchmark has every variant used."""
    from experiments.studies.compute import dense_step_equivalents, step_costs

    costs = {"dense": 1.0, "magnitude": 1.1, "gmp": 1.2, "bip": 2.0}
    (tmp_path / "bip_s0.9_seed0").mkdir()
    (tmp_path / "bip_s0.9_seed0" / "results.json").write_text(json.dumps({"warmup_step": 300, "finetune_step": 800}))
    bip = {"job": "bip_s0.9_seed0", "pruner": "bip", "steps": "1000"}
    assert dense_step_equivalents(bip, tmp_path, costs) == pytest.approx(300 + 500 * 2.0 + 200 * 1.1)
    no_results = {**bip, "job": "bip_s0.95_seed0"}  # phases unknown: every step costed as bi-level
    assert dense_step_equivalents(no_results, tmp_path, costs) == pytest.approx(2000)
    imp_round = {"job": "imp_s0.98_seed0/round2", "pruner": "imp", "steps": "3000"}
    assert dense_step_equivalents(imp_round, tmp_path, costs) == pytest.approx(1000 + 2000 * 1.1)
    assert dense_step_equivalents({"job": "gmp_s0.9_seed0", "pruner": "gmp", "steps": "1000"}, tmp_path, costs) == 1200
    assert dense_step_equivalents({"job": "set_s0.9_seed0", "pruner": "set", "steps": "10"}, tmp_path, costs) == 11
    assert dense_step_equivalents({"job": "dense_seed0", "pruner": "dense", "steps": "10"}, tmp_path, costs) == 10
    assert dense_step_equivalents({"job": "x", "pruner": "gmp", "steps": ""}, tmp_path, costs) is None
    # a run from another run's weights: that run's steps at a dense step's cost, then its own phases
    (tmp_path / "dense_seed0").mkdir()
    (tmp_path / "dense_seed0" / "results.json").write_text(json.dumps({"steps": 500}))
    (tmp_path / "bip_dense_s0.9_seed0").mkdir()
    phases = {"warmup_step": 0, "finetune_step": 800}
    (tmp_path / "bip_dense_s0.9_seed0" / "results.json").write_text(json.dumps(phases))
    from_dense = {"job": "bip_dense_s0.9_seed0", "pruner": "bip", "steps": "1000", "init_from": "x/dense_seed0"}
    assert dense_step_equivalents(from_dense, tmp_path, costs) == pytest.approx(500 + 800 * 2.0 + 200 * 1.1)
    from_ckpt = {**from_dense, "init_from": "x/dense_seed0/checkpoints/last.ckpt"}  # a checkpoint names its run
    assert dense_step_equivalents(from_ckpt, tmp_path, costs) == dense_step_equivalents(from_dense, tmp_path, costs)
    with pytest.raises(FileNotFoundError, match="started from x/dense_seed1, whose run's results.json"):
        dense_step_equivalents({**from_dense, "init_from": "x/dense_seed1"}, tmp_path, costs)
    assert {"dense", "magnitude", "gmp", "bip"} <= set(step_costs())


def test_a_study_writes_its_dense_mean_into_the_package_references_under_its_protocols_key(tmp_path):
    from experiments.studies.dense_reference import write

    runs = tmp_path / "unstructured" / "runs"
    for seed, acc in ((0, 0.9215), (1, 0.9205)):
        (runs / f"dense_seed{seed}").mkdir(parents=True)
        results = {"pruner": None, "seed": seed, "test_acc": acc, "model": "resnet20", "data": "fashion_mnist"}
        (runs / f"dense_seed{seed}" / "results.json").write_text(json.dumps(results))
    _run(runs, "gmp_s0.9_seed0", "gmp", 0.5, sparsity=0.9)  # not a dense run: not in the mean
    references = tmp_path / "dense_references.json"
    references.write_text(json.dumps({"lenet5/digits/9ep/b64/adamw-lr0.001": 0.97}))  # other keys are kept
    key, value, n = write("unstructured", references, tmp_path)
    assert (key, value, n) == ("resnet20/fashion_mnist/3ep/b128/sgd-lr0.1", 0.921, 2)
    assert json.loads(references.read_text()) == {"lenet5/digits/9ep/b64/adamw-lr0.001": 0.97, key: 0.921}
    with pytest.raises(SystemExit, match="no dense run"):
        write("structured", references, tmp_path)
    gpu = tmp_path / "gpu_unstructured" / "runs"
    gpu.mkdir(parents=True)
    (runs / "dense_seed0").rename(gpu / "dense_seed0")
    assert write("gpu_unstructured", references, tmp_path) is None  # bf16-mixed: not a full-precision reference
    assert json.loads(references.read_text())[key] == 0.921


def test_sparsity_over_training_colors_by_method_and_granularity_and_styles_by_setting(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.studies import plot

    studies = _studies(tmp_path, monkeypatch)
    for job in ("gmp_ch0.36_seed0", "gmp_nm24_seed0", "lapp_f0.5_seed0", "lapp_f0.5_seed1"):
        (studies / "structured" / "runs" / job / "csv").mkdir()
        (studies / "structured" / "runs" / job / "csv" / "metrics.csv").write_text(
            "step,sparsity/global\n0,0.1\n10,0.5\n"
        )
    fig, ax = plt.subplots()
    plot.sparsity_over_training("structured", ax)
    lines = [line for line in ax.get_lines() if len(line.get_xdata())]
    assert len(lines) == 3  # seed 0 only
    by_label = {line.get_label(): line for line in ax.get_lines()}
    assert {"channel gmp", "nm gmp", "channel lapp", "channels 36 %", "2:4", "FLOPs 0.5"} <= set(by_label)
    channel, nm = (next(x for x in lines if x.get_label() == k) for k in ("channel gmp", "nm gmp"))
    assert channel.get_color() != nm.get_color() and channel.get_linestyle() != nm.get_linestyle()
    plt.close(fig)


def test_a_run_in_no_column_is_reported(tmp_path, monkeypatch):
    from experiments.studies import tables

    studies = _studies(tmp_path, monkeypatch)
    st = studies / "structured" / "runs"
    _run(st, "pdp_ch0.36_seed1", "pdp", 0.91, flops=0.501, sparsity=0.36, granularity="channel")  # above 0.5
    write_summary(st)
    assert tables.unplaced("structured") == [
        "structured: pdp_ch0.36_seed1 is in no column of its table (flops_ratio 0.501)"
    ]
    assert tables.unplaced("unstructured") == []  # IMP's rounds at other sparsities are not runs of a column


def test_imp_rounds_tests_every_rounds_snapshot_of_a_finished_run(compose):
    """`imp_rounds` finalizes each round's snapshot as an export would and tests it: one row per round, its
    sparsity measured on the ticket (IMP's own record agrees), its steps the round's end."""
    from experiments.studies import imp_rounds
    from sparsetrain.app import run

    cfg = compose("+pruner=imp", "pruner.sparsity=0.75", "pruner.rounds=2", "trainer.max_epochs=1",
                  "snapshot_every_n_steps=5")  # fmt: skip
    run(cfg)
    run_dir = Path(cfg.output_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    imp_rounds.main([str(run_dir)])
    rows = json.loads((run_dir / "rounds.json").read_text())
    recorded = json.loads((run_dir / "results.json").read_text())["rounds"]
    assert [(r["round"], r["steps_done"]) for r in rows] == [(0, 5), (1, 10), (2, 15)]
    for row, record in zip(rows, recorded, strict=True):
        assert row["sparsity"] == pytest.approx(record["sparsity"], abs=1e-3) and 0 < row["test_acc"] <= 1
    assert rows[-1]["test_acc"] == pytest.approx(json.loads((run_dir / "results.json").read_text())["test_acc"])


def test_imp_rounds_of_a_run_that_saved_nothing_yet_says_so(compose, tmp_path):
    """A run just started (its config written, no results.json, no checkpoint): one line naming the run, not a
    traceback."""
    from experiments.studies import imp_rounds

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose("+pruner=imp")))
    with pytest.raises(SystemExit, match="no IMP round has finished there"):
        imp_rounds.main([str(tmp_path)])


def test_the_imp_study_run_has_rounds_on_90_95_and_98_percent():
    """17 rounds of the configured fraction, LR rewinding; rounds 10, 13 and 17 within the table's 0.002 of 90,
    95 and 98 %."""

    swept = OmegaConf.load(CONF / "experiment" / "unstructured_imp.yaml").hydra.sweeper.params
    fraction, target = float(swept["pruner.prune_fraction"]), float(swept["pruner.sparsity"])
    assert swept["pruner.rewinding"] == "lr" and target == 0.98
    reached = [1 - (1 - fraction) ** r for r in range(1, 18)]
    assert min(reached[-1], target) == pytest.approx(0.98, abs=0.002)  # the last round is capped at the target
    for rounds, level in ((10, 0.9), (13, 0.95)):
        assert reached[rounds - 1] == pytest.approx(level, abs=0.002)
    assert reached[15] < 0.98 - 0.002  # round 16 is short of 98 %: 17 rounds
