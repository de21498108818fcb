"""Two CPU processes on gloo: every rank holds identical masks after every update.

The callback broadcasts rank 0's masks after each update as a guarantee; these tests switch that broadcast
off, so they show that every rank *decides* the same masks from its own data (weights, all-reduced
gradients, the pruner's generator), which is what keeps the optimizer state and weights identical too.
"""

import hashlib
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl

from sparsetrain import SparsityCallback
from sparsetrain.data import FakeDataModule
from sparsetrain.module import ClassificationModule
from sparsetrain.pruners import GMP, IMP, PDP, SET, BiP, GraNet, RigL
from tests.helpers.nets import ResNetTiny


class NoBroadcast(SparsityCallback):
    """The callback without its rank-0 broadcast of the masks."""

    def _sync_masks(self, trainer) -> None:
        pass


class MaskLog(pl.Callback):
    """Writes a hash of every mask after each optimizer step, one file per rank."""

    def __init__(self, path: str, sparsity_cb: SparsityCallback) -> None:
        self.path, self.cb, self.rows = path, sparsity_cb, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
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


def fit_on_two_ranks(tmp_path, callbacks: list[pl.Callback]) -> None:
    """One epoch of ResNetTiny on fake data, 2 CPU processes on gloo (`ddp_spawn`)."""
    dm = FakeDataModule(num_samples=160, num_test=16, in_chans=3, image_size=8, num_classes=4, batch_size=8)
    module = ClassificationModule(ResNetTiny(), 4, {"name": "sgd", "lr": 0.05}, example_input_shape=(3, 8, 8))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=dm)


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [
        lambda: GraNet(sparsity=0.8, update_every=2),
        lambda: GraNet(sparsity=0.8, init_density=0.5, update_every=2),
        lambda: SET(sparsity=0.8, update_every=2),
        lambda: PDP(sparsity=0.8, warmup=0.1, end=0.6, threshold_every=2),
        lambda: BiP(sparsity=0.8, warmup=0.1, finetune=0.1),
        lambda: GMP(sparsity=0.8, update_every=2),
        lambda: RigL(sparsity=0.8, update_every=2),
        lambda: IMP(sparsity=0.5, rounds=2),
    ],
    ids=["granet_d2s_gradient", "granet_s2s", "set_random", "pdp", "bip", "gmp", "rigl", "imp"],
)
def test_masks_identical_on_every_rank(tmp_path, make):
    cb = NoBroadcast(make())
    log = MaskLog(str(tmp_path / "masks"), cb)
    fit_on_two_ranks(tmp_path, [cb, log])
    ranks = [json.loads(Path(f"{tmp_path / 'masks'}.rank{r}").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) > 5
    assert ranks[0] == ranks[1]
    assert len(set(ranks[0])) > 2  # masks did change during training


@pytest.mark.slow
def test_the_rank_zero_broadcast_runs_through_lightnings_strategy(tmp_path):
    """With the broadcast on (the default), events go through `trainer.strategy.broadcast` under gloo."""
    cb = SparsityCallback(GMP(sparsity=0.8, update_every=2, end=0.8))
    log = MaskLog(str(tmp_path / "masks"), cb)
    fit_on_two_ranks(tmp_path, [cb, log])
    ranks = [json.loads(Path(f"{tmp_path / 'masks'}.rank{r}").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and len(set(ranks[0])) > 2


@pytest.mark.slow
def test_lapp_under_ddp_is_refused_in_one_line(tmp_path):
    """LAPP slims the network mid-training; DDP's buckets would keep stepping the old parameters."""
    from sparsetrain.pruners import LAPP

    with pytest.raises(Exception, match="DistributedDataParallel cannot follow"):
        fit_on_two_ranks(tmp_path, [SparsityCallback(LAPP(max_flops_ratio=0.5))])
