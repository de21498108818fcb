"""`checkpoints/last.ckpt` is the newest state of a run: at its end whatever the budget, and periodically during
it, so a job killed mid-epoch resumes where its last checkpoint left it and ends as the uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsetrain.app import run
from tests.helpers.config import FAST
from tests.helpers.runs import assert_same_export

ROOT = Path(__file__).resolve().parents[1]


def last_step(run_dir: str | Path) -> int:
    ckpt = torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return int(ckpt["global_step"])


def results(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


# FAST: 86 training images in batches of 16 -> 5 optimizer steps per epoch.
@pytest.mark.parametrize(
    "overrides",
    [
        ["+pruner=gmp", "pruner.update_every=2", "trainer.max_epochs=2"],
        ["+pruner=gmp", "pruner.update_every=2", "trainer.max_epochs=-1", "trainer.max_steps=8"],  # mid-epoch
        ["+pruner=imp", "pruner.sparsity=0.75", "pruner.rounds=2", "pruner.rewind_step=2", "trainer.max_epochs=1"],
        ["+pruner=lapp", "pruner.max_flops_ratio=0.6", "trainer.max_epochs=-1", "trainer.max_steps=12"],
    ],
    ids=["epochs", "steps-mid-epoch", "imp", "lapp"],
)
def test_last_ckpt_holds_the_last_step_of_the_run(compose, overrides):
    cfg = compose(*overrides, "test=false", "export=false")
    run(cfg)
    steps = results(cfg.output_dir)["steps"]
    assert steps > 0 and last_step(cfg.output_dir) == steps


def test_last_ckpt_is_rewritten_every_n_steps(compose, tmp_path):
    """A run killed at step 8 leaves the checkpoint of step 6 (every 3 steps), not of the last epoch end (5)."""
    out = tmp_path / "killed"
    overrides = [*FAST, "+pruner=gmp", "pruner.update_every=2", "trainer.max_epochs=3", "checkpoint_every_n_steps=3"]
    killed(out, 8, overrides)
    assert last_step(out) == 6


def killed(output_dir: Path, step: int, overrides: list[str]) -> None:
    """Run `overrides` in a subprocess that SIGKILLs itself at optimizer step `step`."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.killed_run", str(output_dir), str(step), *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "pruner",
    [
        ["+pruner=rigl", "pruner.sparsity=0.8", "pruner.update_every=2", "pruner.regrow_end=1.0"],
        ["+pruner=gmp", "pruner.update_every=2", "+data.augment=true"],
        # CIFAR's and ImageNet's default: a DataLoader over the images (ResumableDataLoader), not the device's
        ["+pruner=gmp", "pruner.update_every=2", "+data.augment=true", "data.on_device=false"],
    ],
    ids=["rigl", "gmp-augmented", "gmp-augmented-dataloader"],
)
def test_killed_mid_epoch_and_resumed_equals_the_uninterrupted_run(compose, tmp_path, pruner):
    """SIGKILL at step 8 (mid-epoch 2), last.ckpt of step 6 (mid-epoch 2 too); resumed from the run directory.
    RigL regrows from the current batch's gradient, so a resume that trained on other batches (or augmented
    them differently) would grow other weights."""
    common = ["trainer.deterministic=true", "trainer.max_epochs=3", "checkpoint_every_n_steps=3", *pruner]
    full = compose(*common)
    run(full)
    out = tmp_path / "killed"
    killed(out, 8, [*FAST, *common])
    assert last_step(out) == 6 and not (out / "results.json").exists()
    resumed = compose(*common, f"ckpt_path={out}")  # a run directory: its checkpoints/last.ckpt
    run(resumed)
    a, b = results(full.output_dir), results(resumed.output_dir)
    assert a["steps"] == b["steps"] == 15
    assert a["sparsity"] == b["sparsity"]
    assert_same_export(full.output_dir, resumed.output_dir, atol=1e-5)


def test_augmentation_with_the_model_summary_on(compose):
    """Lightning's model summary passes `example_input_array` (a tensor, not an (x, y) batch) through the data
    module's `on_after_batch_transfer` at fit start."""
    cfg = compose("+data.augment=true", "trainer.enable_model_summary=true", "trainer.max_epochs=1", "test=false")
    run(cfg)
    assert results(cfg.output_dir)["steps"] == 5
