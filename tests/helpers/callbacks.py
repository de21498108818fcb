"""Lightning callbacks the tests put around `SparsityCallback`: moves, checks and records at the points where a
bug would show."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from sparsetrain import SparsityCallback


class ReplaceBuffers(pl.Callback):
    """Replace every buffer and parameter tensor of the module, as a device move does.

    At `at_step` (after that optimizer step, before later update events) and in `on_train_end` (Lightning's
    teardown moves the module back to the CPU right after it, before `on_fit_end`).
    """

    def __init__(self, at_step: int = 1) -> None:
        self.at_step = at_step
        self.moves = 0

    def _move(self, module: pl.LightningModule) -> None:
        module._apply(lambda t: t.clone())
        self.moves += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            self._move(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._move(pl_module)


class ZeroAfterStep(pl.Callback):
    """Check, right after every optimizer step and before the pruner re-masks, that masked weights are 0.

    Listed before `SparsityCallback`, its step post-hook runs first, so a weight the optimizer revived is
    seen before the re-masking hides it. Only while the masks are enforced on the weights (PDP: once hard).
    """

    def __init__(self, cb: SparsityCallback) -> None:
        self.cb, self.checked, self.revived = cb, 0, []

    def on_fit_start(self, trainer, pl_module) -> None:
        trainer.optimizers[0].register_step_post_hook(lambda *_: self._check())

    def _check(self) -> None:
        pruner = self.cb.pruner
        if not pruner.masks_weights:
            return
        for fqn, mask in pruner.masks.masks.items():
            revived = int(torch.count_nonzero(pruner.masks.params[fqn].detach()[mask == 0]))
            if revived:
                self.revived.append((fqn, revived))
        self.checked += 1


class Timeline(pl.Callback):
    """The pruner's event counter at every optimizer step, read right after the pruner decided (list it after
    `SparsityCallback`): `event_steps()` are the optimizer steps at which events happened."""

    def __init__(self, cb: SparsityCallback) -> None:
        self.cb, self.rows = cb, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.rows.append((trainer.global_step, self.cb.pruner.events))

    def event_steps(self) -> list[int]:
        out, seen = [], 0
        for step, events in self.rows:
            out += [step] * (events - seen)
            seen = events
        return out


class StopAfterFirstEpoch(pl.Callback):
    """Ends fit after epoch 0, as if the job had been killed there (`last.ckpt` is written by then)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True
