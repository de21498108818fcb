"""The config's types (structured configs in Hydra's ConfigStore), the sweep grid `train.py` checks before any job
runs (the basic sweeper's order, with Hydra's public override parser), the Hydra callback that checks it, and
the trainer settings Lightning itself checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sparsetrain.cli import check_command_line
from sparsetrain.config import CONF_DIR, check_trainer
from sparsetrain.errors import EXIT_CODE, ConfigError, one_line_error
from sparsetrain.hydra_checks import CheckJobs, hydra_errors_raised, sweep_jobs
from sparsetrain.schema import DataConfig, ModelConfig, OptimConfig, TrainerConfig

ROOT = Path(__file__).resolve().parent.parent


def _line(*argv: str) -> str:
    with pytest.raises(Exception) as info:  # noqa: PT011 - any user error; the one line is what matters
        check_command_line(["train.py", *argv], CONF_DIR)
    line = one_line_error(info.value, CONF_DIR)
    assert line is not None and "\n" not in line, repr(info.value)
    return line


def test_the_composed_config_is_typed_by_the_schemas_and_keeps_each_options_values(compose):
    for overrides in ([], ["optim=adamw", "model=timm", "model.name=resnet18", "data=imagenet", "trainer=debug"]):
        cfg = compose(*overrides, fast=False)
        types = {group: OmegaConf.get_type(cfg, group) for group in ("optim", "model", "data", "trainer")}
        assert types == {"optim": OptimConfig, "model": ModelConfig, "data": DataConfig, "trainer": TrainerConfig}
    assert cfg.optim.lr == 1.0e-3 and cfg.optim.momentum == 0.9  # adamw's value; a key adamw leaves out: default
    assert cfg.data.batch_size == 256 and OmegaConf.is_missing(cfg.data, "root")  # imagenet's own keys stay
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 5  # and the Trainer's


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=fast", r"invalid optim config: Value 'fast' of type 'str' could not be converted to Float"),
        ("data.batch_size=abc", r"invalid data config: Value 'abc' .* to Integer \(data\.batch_size\)"),
        ("trainer.max_epochs=1.5", r"invalid trainer config: Value '1\.5' .* to Integer \(trainer\.max_epochs\)"),
        ("optim.momentm=0.5", r"unknown key optim\.momentm: did you mean momentum\? optim keys: "),
        ("data.batch_sise=8", r"unknown key data\.batch_sise: did you mean batch_size\b.* data keys: .*root"),
    ],
)
def test_a_value_of_the_wrong_type_or_an_undeclared_key_fails_while_hydra_composes(override, message):
    assert re.search(message, _line(override))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer=ddp", "trainer.strategy=dpp"], r"trainer\.strategy='dpp' is refused by Lightning: .*invalid strat"),
        (["+trainer.max_epoch=2"], r"trainer\.max_epoch is not an argument of pytorch_lightning\.Trainer: did you "),
        (["trainer.precision=fp16"], r"trainer\.precision='fp16' is unknown: did you mean .*allowed: 16, 16-mixed"),
        (["+trainer.num_nodes=0"], r"trainer\.num_nodes=0 is refused by Lightning: `num_nodes` must be a positive"),
    ],
)
def test_lightning_checks_the_trainer_settings_and_the_line_names_the_key(overrides, message):
    assert re.search(message, _line(*overrides))


def test_settings_lightning_accepts_pass(compose):
    for overrides in (["trainer.precision=bf16-mixed"], ["trainer=ddp", "trainer.accelerator=cpu"], []):
        check_trainer(compose(*overrides, "trainer.accelerator=cpu", fast=False).trainer)


def test_the_sweep_grid_is_the_basic_sweepers_first_key_slowest_and_a_repeated_key_keeps_its_place():
    params = {"seed": "0,1", "+pruner": "gmp,rigl", "pruner.sparsity": "0.9,0.95"}
    jobs = sweep_jobs(["pruner.sparsity=0.5", "data=fake", "trainer.max_steps=range(1,3)"], params)
    assert [" ".join(job) for job in jobs] == [
        f"seed={s} +pruner={p} pruner.sparsity=0.5 data=fake trainer.max_steps={n}"
        for s in (0, 1)
        for p in ("gmp", "rigl")
        for n in (1, 2)
    ]
    with pytest.raises(ConfigError, match=r"an interval needs another sweeper"):
        sweep_jobs(["optim.lr=interval(0.01,0.1)"])


def test_every_job_of_a_sweep_is_composed_and_a_composition_error_names_its_job():
    line = _line("-m", "seed=0,1", "+pruner=gmp,gnp")
    assert line.startswith("unknown pruner 'gnp': did you mean gmp?") and line.endswith(
        "(sweep job: seed=0 +pruner=gnp)"
    )
    line = _line("-m", "seed=0,1", "trainer=ddp", "trainer.strategy=ddp,dpp")
    assert line.endswith("(sweep job: seed=0 trainer=ddp trainer.strategy=dpp)")


def test_another_sweeper_chooses_its_jobs_so_nothing_is_checked_before_it_runs():
    from sparsetrain import hydra_checks

    config = OmegaConf.create({"hydra": {"runtime": {"choices": {"hydra/sweeper": "optuna"}}, "sweeper": {}}})
    assert hydra_checks.jobs_of(config, ["seed=0,1"], multirun=True) is None
    assert hydra_checks.jobs_of(config, ["seed=0"], multirun=False) == [["seed=0"]]


def test_hydra_raises_its_errors_while_composing_and_reports_them_again_once_the_job_is_checked(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="train"):
        config = hydra_compose("train", ["data=fake", "model=lenet5"], return_hydra_config=True)
    with hydra_errors_raised():
        assert os.environ["HYDRA_FULL_ERROR"] == "1"
        CheckJobs().on_run_start(config=config, config_name="train")  # a good run: no exit
        assert "HYDRA_FULL_ERROR" not in os.environ  # a job's own crash is reported by Hydra as usual
    GlobalHydra.instance().clear()


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_train_py_checks_every_job_of_a_sweep_in_its_callback_and_writes_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _train("-m", "seed=0,1", "+pruner=gmp", "pruner.sparsity=0.5,1.5", f"hydra.sweep.dir={sweep}")
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == EXIT_CODE, out
    assert (
        out == "error: pruner.sparsity must be in [0, 1), got 1.5 (sweep job: seed=0 +pruner=gmp pruner.sparsity=1.5)"
    )
    assert not sweep.exists()


def test_train_py_shows_the_config_resolved_and_its_help_hides_the_schema_group():
    proc = _train("--help")
    assert proc.returncode == 0, proc.stderr
    groups = proc.stdout.split("== Config groups")[1].split("\n", 1)[1].split("\n== ")[0]
    assert "optim: adamw, sgd" in groups and "schema" not in groups
