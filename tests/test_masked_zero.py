"""Masked weights observed where a bug would show: right after the optimizer step, before any re-masking.

The pruner re-masks the weights in an optimizer step post-hook, so a check after that hook is true by
construction. Here a step post-hook registered before the pruner's sees the weights the optimizer left: a
gradient that was not masked, or an optimizer state (momentum, Adam moments) not zeroed where a mask changed,
shows as a masked weight off zero. In a resumed run (restored masks, optimizer state and pruner state) and on
every rank of a DDP run with the rank-0 mask broadcast. The plain-loop equivalent is `train_plain(check_zero=True)`
(tests/test_pruners.py).
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import pytorch_lightning as pl

from sparsetrain import SparsityCallback
from sparsetrain.pruners import SET, GraNet, list_pruners
from tests.helpers.callbacks import StopAfterFirstEpoch, ZeroAfterStep
from tests.helpers.ddp import fit_on_two_ranks
from tests.helpers.fits import fit_with_checkpoints
from tests.helpers.matrix import BUDGETS


class Steps(pl.Callback):
    """The optimizer steps a fit ran."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)


RESUMED = {k: v for k, v in BUDGETS.items() if k != "bip"}  # the matrix's budgets


@pytest.mark.parametrize("key", sorted(RESUMED))
def test_masked_weights_stay_zero_after_every_optimizer_step_of_a_resumed_run(key, tmp_path):
    """Seen after each step of the resumed fit, before the pruner re-masks: the restored optimizer state must
    not carry momentum into masked positions, and the restored masks must gate the gradients."""
    make = lambda: list_pruners()[key](sparsity=0.5, **RESUMED[key])  # noqa: E731
    fit_with_checkpoints(make(), tmp_path / "killed", StopAfterFirstEpoch())
    pruner = make()
    checker, steps = ZeroAfterStep(types.SimpleNamespace(pruner=pruner)), Steps()
    fit_with_checkpoints(pruner, tmp_path / "resumed", checker, steps, ckpt_path=tmp_path / "killed" / "last.ckpt")
    assert steps.steps[0] == 4  # resumed after the first epoch
    assert checker.revived == []
    assert checker.checked > 0
    if key != "pdp":  # PDP's soft mask is not enforced on the weights until it hardens
        assert checker.checked == len(steps.steps)


class ZeroAfterStepLog(pl.Callback):
    """On every rank, after every optimizer step and before the pruner re-masks (its step post-hook is
    registered first, so list this callback before `SparsityCallback`): masked weights off zero, per step.
    Written to one file per rank with the number of update events."""

    def __init__(self, path: str, sparsity_cb: SparsityCallback) -> None:
        self.path, self.cb, self.rows = path, sparsity_cb, []

    def on_fit_start(self, trainer, pl_module):
        trainer.optimizers[0].register_step_post_hook(lambda *_: self._check())

    def _check(self) -> None:
        masks = self.cb.pruner.masks
        self.rows.append(sum(int((masks.params[f].detach()[m == 0] != 0).sum()) for f, m in masks.masks.items()))

    def on_fit_end(self, trainer, pl_module):
        out = {"revived": self.rows, "events": self.cb.pruner.events}
        Path(f"{self.path}.rank{trainer.global_rank}").write_text(json.dumps(out))


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [lambda: GraNet(sparsity=0.8, update_every=2), lambda: SET(sparsity=0.8, update_every=2)],
    ids=["granet", "set"],
)
def test_masked_weights_stay_zero_after_every_step_on_every_rank_with_the_broadcast(tmp_path, make):
    cb = SparsityCallback(make())  # the real callback: rank 0's masks broadcast at every update event
    check = ZeroAfterStepLog(str(tmp_path / "zero"), cb)
    fit_on_two_ranks(tmp_path, [check, cb])
    ranks = [json.loads(Path(f"{tmp_path / 'zero'}.rank{r}").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["events"] > 3
        assert len(rank["revived"]) > 5 and set(rank["revived"]) == {0}
