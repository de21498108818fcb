"""Shared fixtures: CPU only, deterministic, quiet."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from tests.helpers.config import CONF_DIR, FAST

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)  # tiny models: threads cost more than they give
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items) -> None:
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def trainer():
    """A factory of quiet CPU Trainers: `trainer(**overrides)` (no logger, checkpoints, progress bar or model
    summary unless overridden; see `tests.helpers.fits.QUIET`)."""
    from tests.helpers.fits import quiet_trainer  # Lightning and sparsetrain load after the environment above

    return quiet_trainer


@pytest.fixture
def compose(tmp_path):
    """Compose the real config with tiny, fast overrides; each call gets its own output directory."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    counter = iter(range(1000))

    def make(*overrides: str, fast: bool = True):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = hydra_compose("train", overrides=[*(FAST if fast else []), *overrides])
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.output_dir = str(tmp_path / f"run{next(counter)}")
        return cfg

    return make
