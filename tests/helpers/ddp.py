"""Two-process (gloo, `ddp_spawn`) fits and a per-rank mask log: shared by the DDP tests and the `train.py`
main they run (a module of its own, so spawned ranks and subprocesses import it without a test module)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytorch_lightning as pl

from sparsetrain import SparsityCallback
from sparsetrain.data import FakeDataModule
from sparsetrain.module import ClassificationModule
from tests.helpers.fits import quiet_trainer
from tests.helpers.nets import ResNetTiny


class MaskLog(pl.Callback):
    """Writes a hash of every mask after each optimizer step, one file per rank.

    Without `sparsity_cb` it follows the trainer's own `SparsityCallback` (a run built by `train.py`).
    """

    def __init__(self, path: str, sparsity_cb: SparsityCallback | None = None) -> None:
        self.path, self.cb, self.rows = path, sparsity_cb, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.cb is None:
            self.cb = next(c for c in trainer.callbacks if isinstance(c, SparsityCallback))
        h = hashlib.sha1()
        for k, m in sorted(self.cb.pruner.masks.masks.items()):
            h.update(k.encode())
            h.update(m.detach().cpu().numpy().tobytes())
        self.rows.append(h.hexdigest())

    def on_fit_end(self, trainer, pl_module):
        h = hashlib.sha1()
        for k, v in sorted(pl_module.named_parameters()):  # not BN running stats: each rank sees its own shard
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
        self.rows.append(h.hexdigest())  # the weights at the end
        Path(f"{self.path}.rank{trainer.global_rank}").write_text(json.dumps(self.rows))


def fit_on_two_ranks(tmp_path: Path, callbacks: list[pl.Callback]) -> None:
    """One epoch of ResNetTiny on fake data, 2 CPU processes on gloo (`ddp_spawn`)."""
    dm = FakeDataModule(num_samples=160, num_test=16, in_chans=3, image_size=8, num_classes=4, batch_size=8)
    module = ClassificationModule(ResNetTiny(), 4, {"name": "sgd", "lr": 0.05}, example_input_shape=(3, 8, 8))
    trainer = quiet_trainer(
        devices=2, strategy="ddp_spawn", max_epochs=1, callbacks=callbacks, default_root_dir=str(tmp_path)
    )
    trainer.fit(module, datamodule=dm)
