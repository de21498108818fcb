"""Every pruner at every granularity it defines, through the plain callback on a user's own LightningModule
that declares no example input and gets its data straight from `trainer.fit` (no datamodule)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812

from sparsetrain import SparsityCallback
from sparsetrain.pruners import list_pruners
from tests.helpers.nets import ResNetTiny
from tests.test_device_moves import CASES, GRANULARITIES, loader


class UserModule(pl.LightningModule):
    """What a user writes: a network attribute, a training step, an optimizer. No `example_input_array`."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ResNetTiny(in_chans=3, width=8)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.backbone(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def cells() -> list:
    out = []
    for key, cls in sorted(list_pruners().items()):
        for granularity in cls.granularities:
            kw = {**CASES.get(key, {"update_every": 2}), **GRANULARITIES[granularity]}
            kw["granularity"] = granularity
            if "sparsity" in cls.unused_keys:
                kw.pop("sparsity", None)
            out.append(pytest.param(key, kw, id=f"{key}-{granularity}"))
    return out


@pytest.mark.parametrize(("key", "kw"), cells())
def test_every_granularity_through_the_plain_callback(key, kw):
    module = UserModule()
    cb = SparsityCallback(list_pruners()[key](**kw))
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
    )
    trainer.fit(module, train_dataloaders=loader())
    assert cb.summary["flops_sparse"] < cb.summary["flops_dense"]
    assert module.backbone(torch.zeros(2, 3, 8, 8)).shape == (2, 4)  # the finalized (or slimmed) network runs


def test_an_example_input_can_be_given():
    x = torch.zeros(1, 3, 8, 8)
    cb = SparsityCallback(list_pruners()["gmp"](sparsity=0.5, granularity="channel", update_every=2), example_input=x)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])  # fmt: skip
    trainer.fit(UserModule(), train_dataloaders=loader())
    assert cb._example is not None and cb._example.shape == x.shape
