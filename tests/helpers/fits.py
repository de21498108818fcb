"""Short, quiet Lightning fits on the CPU: the one place the tests' `pl.Trainer` defaults are written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from sparsetrain import SparsityCallback
from tests.helpers.nets import Net, loader

# No logger, checkpoints, progress bar or model summary, on the CPU: a test asks for what it checks.
QUIET = {
    "logger": False,
    "accelerator": "cpu",
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def quiet_trainer(**overrides: Any) -> pl.Trainer:
    """A `pl.Trainer` with the `QUIET` defaults; `overrides` win (the `trainer` fixture's factory)."""
    return pl.Trainer(**{**QUIET, **overrides})


def fit(cb: SparsityCallback, *callbacks: pl.Callback, module: Net | None = None, **trainer_kw: Any) -> Net:
    """Fit `module` (a fresh `Net` by default) for 3 epochs of `loader()`, 12 optimizer steps, with `callbacks`
    listed before the sparsity callback; `trainer_kw` overrides the Trainer's arguments."""
    module = module or Net()
    trainer = quiet_trainer(**{"max_epochs": 3, **trainer_kw}, callbacks=[*callbacks, cb])
    trainer.fit(module, train_dataloaders=loader())
    return module


def fit_with_checkpoints(
    pruner, ckpt_dir: str | Path, *callbacks: pl.Callback, ckpt_path: str | Path | None = None, accelerator: str = "cpu"
) -> Net:
    """Fit a freshly seeded `Net` for 3 epochs, deterministically, writing `last.ckpt` into `ckpt_dir` after every
    epoch (resumed from `ckpt_path` when given)."""
    torch.manual_seed(0)
    module = Net()
    trainer = quiet_trainer(
        max_epochs=3,
        accelerator=accelerator,
        deterministic=True,
        enable_checkpointing=True,
        callbacks=[
            *callbacks,
            ModelCheckpoint(dirpath=ckpt_dir, save_last=True),
            SparsityCallback(pruner, finalize=False),
        ],
    )
    trainer.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path)
    return module
