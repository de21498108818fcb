"""Every config option composes, validates and instantiates."""

import math
import types
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

from sparsetrain.config import validate
from sparsetrain.pruners import list_pruners

CONF = Path(__file__).parent.parent / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("pruner", _options("pruner"))
def test_every_pruner_yaml_instantiates_its_registered_class(compose, pruner):
    cfg = compose(f"+pruner={pruner}", fast=False)
    obj = instantiate(cfg.pruner)
    assert type(obj) is list_pruners()[pruner]
    assert obj.key == pruner


@pytest.mark.parametrize("pruner", _options("pruner"))
def test_every_pruner_yaml_extends_the_shared_keys_and_sets_only_what_it_changes(pruner):
    import yaml

    shared = yaml.safe_load((CONF / "pruner_shared" / "keys.yaml").read_text())
    declared = yaml.safe_load((CONF / "pruner" / f"{pruner}.yaml").read_text())
    assert declared.pop("defaults") == ["/pruner_shared/keys@_here_", "_self_"]
    assert {k: v for k, v in declared.items() if k in shared and v == shared[k]} == {}  # a shared default restated


@pytest.mark.parametrize("pruner", _options("pruner"))
def test_nm_needs_no_sparsity_and_the_run_seed_reaches_the_pruner(compose, pruner):
    if "nm" not in list_pruners()[pruner].granularities:
        pytest.skip(f"{pruner} defines no N:M granularity")
    cfg = compose(f"+pruner={pruner}", "pruner.granularity=nm", "pruner.n=1", "seed=7", fast=False)
    obj = instantiate(cfg.pruner)
    assert obj.sparsity == 0.75 and (obj.n, obj.m) == (1, 4)
    assert obj.seed == 7  # -m seed=0,1 draws different random masks (ERK init, SET regrowth)
    assert instantiate(compose(f"+pruner={pruner}", fast=False).pruner).sparsity == 0.9


@pytest.mark.parametrize("data", _options("data"))
def test_every_data_yaml_composes_and_builds(compose, data, tmp_path):
    extra = [f"data.root={tmp_path}"] if data == "imagenet" else []
    cfg = compose(f"data={data}", *extra, fast=False)
    dm = instantiate(cfg.data)
    assert dm.name == data and dm.num_classes >= 2 and dm.in_chans in (1, 3)


@pytest.mark.parametrize("model", _options("model"))
def test_every_model_yaml_composes_and_validates(compose, model):
    extra = {"timm": ["model.name=resnet18"], "torchvision": ["model.name=resnet18"]}.get(model, [])
    cfg = validate(compose(f"model={model}", *extra, fast=False))
    assert cfg.model.source in ("builtin", "timm", "torchvision")
    if model == "cifar_vgg16_bn":
        assert cfg.data.image_size == 32  # a 32-px net sets its input size


def _expected_factor(step: int, total: int, optim: dict) -> float:
    """The LR multiplier a YAML describes, written out independently of `sparsetrain.optim`."""
    warmup = round(optim["warmup"] * total)
    if step < warmup:
        return (step + 1) / warmup
    assert optim["schedule"] == "cosine"
    progress = (step - warmup) / (total - warmup)
    return optim["min_lr_factor"] + (1 - optim["min_lr_factor"]) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("option", _options("optim"))
def test_every_optim_yaml_builds_the_optimizer_and_lr_schedule_it_describes(compose, option):
    import yaml

    from sparsetrain.module import ClassificationModule
    from tests.helpers.nets import ResNetTiny

    described = yaml.safe_load((CONF / "optim" / f"{option}.yaml").read_text())
    cfg = validate(compose(f"optim={option}", fast=False))
    module = ClassificationModule(ResNetTiny(), 4, OmegaConf.to_container(cfg.optim, resolve=True))
    total = 200
    module._trainer = types.SimpleNamespace(estimated_stepping_batches=total)
    built = module.configure_optimizers()
    optimizer, sched = built["optimizer"], built["lr_scheduler"]["scheduler"]
    assert type(optimizer) is {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[described["name"]]
    assert built["lr_scheduler"]["interval"] == "step"
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == described["weight_decay"] and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in no_decay["params"]} == {  # norm parameters and biases are not decayed
        id(p) for n, p in module.model.named_parameters() if n.startswith("bn") or n.endswith("bias")
    }
    assert len(decay["params"]) == 5  # the four convs and the classifier's weight
    for group in optimizer.param_groups:
        assert group["initial_lr"] == described["lr"]
        if described["name"] == "sgd":
            assert group["momentum"] == described["momentum"] and group["nesterov"] == described["nesterov"]
        else:
            assert list(group["betas"]) == described["betas"]
    for step in (0, 5, 9, 10, 11, 100, 199):
        assert sched.lr_lambdas[0](step) == pytest.approx(_expected_factor(step, total, described), abs=1e-12)


@pytest.mark.parametrize("option", _options("logger"))
def test_every_logger_yaml_builds_its_loggers(compose, option, tmp_path, monkeypatch):
    import yaml

    from sparsetrain.loggers import build_loggers

    monkeypatch.setenv("WANDB_MODE", "offline")  # the suite's default, disabled, builds no W&B logger
    described = yaml.safe_load((CONF / "logger" / f"{option}.yaml").read_text())
    loggers = build_loggers(compose(f"logger={option}", fast=False), tmp_path)
    assert type(loggers[0]) is CSVLogger and Path(loggers[0].log_dir) == tmp_path / "csv"  # always written
    if described["wandb"] is None:
        assert len(loggers) == 1
    else:
        (wandb,) = loggers[1:]
        assert type(wandb) is WandbLogger
        assert wandb._project == described["wandb"]["project"]
        assert wandb._offline  # no API key in the tests: never online
        assert Path(wandb.save_dir) == tmp_path


def test_wandb_mode_disabled_leaves_the_csv_logger_alone(compose, tmp_path, monkeypatch):
    """W&B's own off switch turns the W&B logger off (a GPU machine without wandb installed runs), no run id
    written; the CSV logger stays."""
    from sparsetrain.loggers import build_loggers

    monkeypatch.setenv("WANDB_MODE", "disabled")
    loggers = build_loggers(compose("logger=default", fast=False), tmp_path)
    assert [type(x) for x in loggers] == [CSVLogger]
    assert not (tmp_path / "wandb_id.txt").exists()


LAUNCHERS = {
    "joblib_local": ("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": 2}),
    "joblib_serial": ("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": 1}),
    "slurm": (
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        {"timeout_min": 240, "gpus_per_node": 1, "tasks_per_node": 1, "cpus_per_task": 8, "mem_gb": 32, "nodes": 1},
    ),
}


def test_sweep_launchers_compose_into_their_hydra_launcher_with_the_yaml_settings():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.plugins.launcher import Launcher
    from hydra.utils import get_class

    assert set(_options("hydra/launcher")) == set(LAUNCHERS)
    for option, (target, settings) in LAUNCHERS.items():
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = hydra_compose("train", overrides=[f"hydra/launcher={option}"], return_hydra_config=True)
        launcher = cfg.hydra.launcher
        assert launcher._target_ == target and issubclass(get_class(target), Launcher)
        assert {k: launcher[k] for k in settings} == settings
    GlobalHydra.instance().clear()


TRAINERS = {  # option: what the instantiated Trainer must hold (beyond the defaults of trainer/default.yaml)
    "cpu": {"max_epochs": 3, "num_devices": 1, "strategy": SingleDeviceStrategy, "limit_train_batches": 1.0},
    "debug": {
        "max_epochs": 1,
        "limit_train_batches": 5,
        "limit_val_batches": 2,
        "limit_test_batches": 2,
        "log_every_n_steps": 1,
        "strategy": SingleDeviceStrategy,
    },
    "ddp": {"max_epochs": 3, "num_devices": 2, "strategy": DDPStrategy, "sync_batchnorm": True},
}


@pytest.mark.parametrize("option", sorted(TRAINERS))
def test_trainer_yaml_instantiates_a_trainer_with_its_settings(compose, option):
    cfg = compose(f"trainer={option}", "trainer.accelerator=cpu", fast=False)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    expected = dict(TRAINERS[option])
    assert type(trainer.strategy) is expected.pop("strategy")
    if expected.pop("sync_batchnorm", False):
        assert trainer.strategy._layer_sync is not None  # BN statistics synchronised across processes
    for key, value in expected.items():
        assert getattr(trainer, key) == value, key
    assert type(trainer.accelerator).__name__ == "CPUAccelerator" and trainer.precision == "32-true"
    assert trainer.num_sanity_val_steps == 0 and trainer.max_steps == -1


def test_gpu_trainer_yaml_asks_for_a_gpu_in_bf16_mixed():
    import yaml

    assert _options("trainer") == sorted([*TRAINERS, "default", "gpu"])
    gpu = yaml.safe_load((CONF / "trainer" / "gpu.yaml").read_text())
    assert gpu == {"defaults": ["default"], "accelerator": "gpu", "precision": "bf16-mixed", "benchmark": True}
