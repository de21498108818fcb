"""Resume end to end through `app.run`: RigL, SET and IMP killed after an epoch equal the uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

from sparsetrain.app import run


class StopAfterEpoch(pl.Callback):
    """Ends fit after a given epoch, as if the job had been killed there (`last.ckpt` is already written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class Steps(pl.Callback):
    """The optimizer steps a fit ran."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)


def exported(run_dir: str) -> Path:
    """The run's exported weights (`model.safetensors` in the run directory or in its export folder)."""
    (path,) = Path(run_dir).rglob("model.safetensors")
    return path


@pytest.mark.parametrize(
    "pruner",
    [
        ["+pruner=rigl", "pruner.sparsity=0.8", "pruner.update_every=2", "pruner.regrow_end=1.0"],
        ["+pruner=set", "pruner.sparsity=0.8", "pruner.update_every=2"],
        ["+pruner=imp", "pruner.sparsity=0.75", "pruner.rounds=2", "pruner.rewind_step=2"],
    ],
    ids=["rigl", "set", "imp"],
)
def test_killed_and_resumed_equals_the_uninterrupted_run(compose, pruner):
    """RigL and SET (the random start and SET's random regrowth continue from the saved generator) and IMP
    (killed in its first round; validation at every epoch end, as `app.run` configures it)."""
    import json

    common = ["trainer.deterministic=true", "trainer.max_epochs=3", "test=true", *pruner]
    full = compose(*common)
    run(full)
    first = compose(*common)
    run(first, callbacks=[StopAfterEpoch(0)])
    ckpt = Path(first.output_dir) / "checkpoints" / "last.ckpt"
    killed_at = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    steps = Steps()
    resumed = compose(*common, f"ckpt_path={ckpt}")
    run(resumed, callbacks=[steps])
    assert 0 < killed_at == steps.steps[0]  # resumed mid-run, with update events still to come
    a, b = (json.loads((Path(c.output_dir) / "results.json").read_text()) for c in (full, resumed))
    assert a["steps"] == b["steps"] == killed_at + len(steps.steps)
    assert a["test_acc"] == b["test_acc"] and a["sparsity"] == b["sparsity"]
    wa, wb = (load_file(str(exported(c.output_dir))) for c in (full, resumed))
    for k in wa:
        assert torch.equal(wa[k] == 0, wb[k] == 0), f"mask differs in {k}"
        assert torch.allclose(wa[k], wb[k], atol=1e-6), f"weights differ in {k}"
