"""Every config option composes, validates and instantiates."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

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
def test_nm_needs_no_sparsity_and_the_run_seed_reaches_the_pruner(compose, pruner):
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


@pytest.mark.parametrize("group", ["optim", "trainer", "logger"])
def test_every_optim_trainer_logger_option_composes(compose, group):
    for option in _options(group):
        cfg = validate(compose(f"{group}={option}", fast=False))
        if group == "trainer":
            trainer_cfg = dict(cfg.trainer)
            assert trainer_cfg["_target_"] == "pytorch_lightning.Trainer"


def test_sweep_launchers_and_multirun_compose(compose):
    for option in _options("hydra/launcher"):
        cfg = compose(f"hydra/launcher={option}", fast=False)
        assert cfg is not None


def test_trainer_instantiates_for_cpu_debug_and_ddp(compose):
    for option in ("cpu", "debug", "ddp"):
        cfg = compose(f"trainer={option}", "trainer.accelerator=cpu", fast=False)
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        assert trainer.max_epochs >= 1
