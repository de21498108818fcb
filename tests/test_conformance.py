"""Conformance matrix: every pruner × every granularity it defines, under gradient accumulation with clipping,
under a non-finite loss step, and on a timm, a torchvision and a built-in model.

The rest of the matrix lives in `test_device_moves.py` (buffers replaced mid-fit and at teardown, dtype
changes, bf16-mixed, channels_last, resume into a moved model), `test_ddp.py` (2-process gloo DDP),
`test_plain_callback.py` (the callback on a user's module), `test_protocol.py` (a second optimizer refused)
and `test_lapp.py`; the cells, the pruners' budgets and the default-suite split are `tests/helpers/matrix.py`.
The default suite runs every pruner at its default granularity; the other cells are marked slow
(`make test-all`).

LAPP prunes channels toward a FLOPs budget and physically slims the network at its `end`, so it has no masks
to check afterwards: its cells check that the budget is met, that training went on after slimming and that
the pruner's own events follow its schedule.
"""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from sparsetrain import SparsityCallback
from sparsetrain.models import build_model
from tests.helpers.callbacks import Timeline, ZeroAfterStep
from tests.helpers.checks import assert_target_reached
from tests.helpers.fits import quiet_trainer
from tests.helpers.matrix import PRUNERS, cells, default_granularity, make
from tests.helpers.nets import Net, loader

ACCUMULATE = 2
MICRO_BATCHES = 4  # per epoch: `loader()` holds 32 samples in batches of 8


def scheduled_event_steps(pruner, steps: int) -> list[int]:
    """The optimizer steps at which the pruner's configuration puts its events, in a fit of `steps` steps."""
    key = pruner.key
    if key == "imp":
        return [pruner.round_end(r) for r in range(pruner.rounds)]
    if key == "pdp":
        return [pruner.harden_step]
    if key == "bip":
        return [pruner.warmup_step, pruner.finetune_step]
    if key == "lapp":  # no event once slimmed (at `end_step`, before that step's forward)
        return [s for s in range(pruner.end_step) if pruner.is_update_step(s)]
    return [s for s in range(steps) if pruner.is_update_step(s)]


def train(module: pl.LightningModule, before: list, cb: SparsityCallback, after: list, data=None, **kw):
    """Fit with `before` listed before the sparsity callback and `after` after it; returns the trainer."""
    trainer = quiet_trainer(max_epochs=kw.pop("max_epochs", 3), callbacks=[*before, cb, *after], **kw)
    trainer.fit(module, train_dataloaders=data if data is not None else loader())
    return trainer


def assert_budget_met(cb: SparsityCallback, trainer: pl.Trainer) -> None:
    """LAPP: slimmed onto its FLOPs budget, measured on the slimmed network; training went on after it."""
    pruner = cb.pruner
    assert pruner.slimmed
    assert cb.summary["flops_sparse"] / cb.summary["flops_dense"] <= pruner.max_flops_ratio + 1e-9
    assert trainer.global_step > pruner.end_step  # optimizer steps ran on the slimmed network
    assert all(torch.isfinite(p).all() for p in trainer.lightning_module.parameters())


def assert_masked_zero(pruner) -> None:
    for fqn, mask in pruner.masks.masks.items():
        assert torch.count_nonzero(pruner.masks.params[fqn].detach()[mask == 0]) == 0, fqn


# ------------------------------------------------------------------------------------------- 1. accumulation + clipping
@pytest.mark.parametrize(("key", "granularity"), cells())
def test_accumulation_with_clipping_counts_optimizer_steps_and_keeps_masked_weights_zero(key, granularity):
    """`accumulate_grad_batches=2` and `gradient_clip_val=1.0`: 24 micro-batches are 12 optimizer steps; the
    schedule, the events and the epoch length are in optimizer steps; masked weights are exactly 0 after every
    optimizer step (before re-masking) and the target is reached."""
    epochs = 6
    steps = epochs * MICRO_BATCHES // ACCUMULATE
    pruner = make(key, granularity)
    cb = SparsityCallback(pruner, finalize=False)
    checker, timeline = ZeroAfterStep(cb), Timeline(cb)
    trainer = train(
        Net(),
        [checker],
        cb,
        [timeline],
        max_epochs=epochs,
        accumulate_grad_batches=ACCUMULATE,
        gradient_clip_val=1.0,
    )
    assert pruner.total_steps == steps and pruner.steps_per_epoch == MICRO_BATCHES // ACCUMULATE
    fit_steps = pruner.fit_steps(steps)  # IMP trains its later rounds on top of the configured budget
    assert trainer.global_step == fit_steps and [s for s, _ in timeline.rows] == list(range(fit_steps))
    assert timeline.event_steps() == scheduled_event_steps(pruner, steps)
    assert pruner.events == len(timeline.event_steps()) > 0
    if key == "lapp":
        assert_budget_met(cb, trainer)
        return
    assert checker.checked > 0 and checker.revived == []
    assert_target_reached(pruner, pruner.masks.masks, granularity)
    assert_masked_zero(pruner)


# ------------------------------------------------------------------------------------------- 2. a non-finite loss
class NonFiniteAt(Net):
    """`Net` whose loss at optimizer step `bad_step` is multiplied by `value` (NaN or inf): every gradient of
    that step, the pruner's own parameters' included, is non-finite."""

    def __init__(self, bad_step: int, value: float) -> None:
        super().__init__()
        self.bad_step, self.value = bad_step, value

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * self.value if self.trainer.global_step == self.bad_step else loss


class BeforePruner(pl.Callback):
    """Listed before `SparsityCallback`: the masks before the pruner saw step `bad_step`'s gradients, and
    after that step's optimizer step and re-masking; masks and weights finite after every step."""

    def __init__(self, cb: SparsityCallback, bad_step: int) -> None:
        self.cb, self.bad_step = cb, bad_step
        self.before = self.after = None
        self.nonfinite: list[str] = []

    def _masks(self) -> dict[str, torch.Tensor] | None:
        masks = self.cb.pruner.masks
        return None if masks is None else {k: v.detach().clone() for k, v in masks.masks.items()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.bad_step:
            self.before = self._masks()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.bad_step + 1:
            self.after = self._masks()
        tensors = dict(pl_module.named_parameters())
        tensors.update({f"{k}(mask)": v for k, v in (self._masks() or {}).items()})
        tensors.update({f"pruner[{i}]": p for i, p in enumerate(self.cb.pruner.extra_parameters())})
        self.nonfinite += [f"{trainer.global_step}:{k}" for k, v in tensors.items() if not torch.isfinite(v).all()]


class ZeroNonFiniteGrads(pl.Callback):
    """Listed after `SparsityCallback`: replaces non-finite gradients by 0, so the optimizer step after the
    pruner saw them stays finite (what an AMP scaler's skipped step amounts to for the weights)."""

    def __init__(self, cb: SparsityCallback) -> None:
        self.cb, self.steps, self.deferred = cb, [], {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not all(torch.isfinite(g).all() for g in grads):
            self.steps.append(trainer.global_step)
            self.deferred[trainer.global_step] = self.cb.pruner._deferred_step
        for g in grads:
            torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)


def fit_with_bad_step(key: str, granularity: str, bad_step: int, value: float):
    torch.manual_seed(0)
    pruner = make(key, granularity)
    cb = SparsityCallback(pruner, finalize=False)
    watch, checker, timeline, cleaner = BeforePruner(cb, bad_step), ZeroAfterStep(cb), Timeline(cb), None
    cleaner = ZeroNonFiniteGrads(cb)
    trainer = train(NonFiniteAt(bad_step, value), [watch, checker], cb, [timeline, cleaner])
    return pruner, cb, trainer, watch, checker, timeline, cleaner


# A non-finite step must leave every mask as it was: BiP, for one, skips its score step then (a NaN score step
# would make the masks the top-k of NaN). Under an AMP scaler the skipped step runs no post-hook, so only
# non-finite gradients that reach the optimizer step (bf16 or fp32 without a scaler) exercise this.
FORWARD_EVENTS = {"imp", "pdp", "bip"}  # events in `before_forward`, from the weights, before any gradient exists
KNOWN_NON_FINITE_BUGS: dict[str, str] = {}  # pruner -> reason, for cells expected to fail (strict xfail)


@pytest.mark.parametrize(("key", "granularity", "value"), cells("nan", "inf", known=KNOWN_NON_FINITE_BUGS))
def test_a_non_finite_loss_at_an_event_neither_moves_the_masks_nor_corrupts_the_schedule(key, granularity, value):
    """A NaN/inf loss at an update event: the masks do not change on that step's gradients (a gradient-driven
    event is deferred to the next finite step, as after an AMP-skipped step), nothing becomes non-finite, the
    target is still reached and the events are the clean run's, shifted by at most the deferral."""
    clean_pruner, _, _, _, _, clean, _ = fit_with_bad_step(key, granularity, -1, 1.0)
    bad_step = next(s for s in clean.event_steps() if s > 0)
    pruner, cb, trainer, watch, checker, timeline, cleaner = fit_with_bad_step(key, granularity, bad_step, float(value))
    assert cleaner.steps == [bad_step]  # the non-finite gradients reached the optimizer step, only there
    assert watch.nonfinite == []
    assert watch.before is not None and watch.after is not None
    for fqn, mask in watch.before.items():
        assert torch.equal(watch.after[fqn], mask), f"{fqn}: the masks moved on non-finite gradients"

    expected = clean.event_steps()
    if key not in FORWARD_EVENTS:  # an event decided in `before_optimizer_step`: done at the next (finite) step
        assert cleaner.deferred[bad_step] == bad_step
        expected = sorted({*expected, bad_step + 1} - {bad_step})  # merged with the next event if there is one
    assert timeline.event_steps() == expected
    assert pruner.events == len(expected)
    assert trainer.global_step == clean_pruner.fit_steps(clean_pruner.total_steps)

    if key == "lapp":
        assert_budget_met(cb, trainer)
        return
    assert checker.revived == []
    assert_target_reached(pruner, pruner.masks.masks, granularity)
    assert_masked_zero(pruner)


# ------------------------------------------------------------------------------------------- 3. real models
MODELS = [("builtin", "resnet20"), ("timm", "resnet18"), ("torchvision", "mobilenet_v3_small")]
SIZE = 32


class RealNet(pl.LightningModule):
    def __init__(self, source: str, name: str) -> None:
        super().__init__()
        self.net = build_model(source, name, in_chans=3, num_classes=4, image_size=SIZE)
        self.example_input_array = torch.zeros(1, 3, SIZE, SIZE)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def real_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(8, 3, SIZE, SIZE, generator=g), torch.arange(8) % 4), batch_size=2)


REAL_KW = {"gmp": {"update_every": 1}, "granet": {"update_every": 1}, "rigl": {"update_every": 1},
           "set": {"update_every": 1}, "imp": {"rounds": 1}, "lapp": {"update_every": 1}}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("source", "name"), MODELS, ids=[n for _, n in MODELS])
@pytest.mark.parametrize("key", sorted(PRUNERS))
def test_every_pruner_on_a_timm_a_torchvision_and_a_builtin_model(key, source, name):
    """4 optimizer steps (batches of 2 at 32 px) at the pruner's default granularity: masked weights exactly 0
    after every step, the target reached (LAPP: slimmed onto its FLOPs budget)."""
    torch.manual_seed(0)
    granularity = default_granularity(PRUNERS[key])
    pruner = make(key, granularity, **REAL_KW.get(key, {}))
    cb = SparsityCallback(pruner, finalize=False)
    checker = ZeroAfterStep(cb)
    module = RealNet(source, name)
    trainer = train(module, [checker], cb, [], data=real_loader(), max_epochs=1)
    assert trainer.global_step == pruner.fit_steps(4)
    if key == "lapp":
        assert_budget_met(cb, trainer)
        assert module.net(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 4)
        return
    assert checker.checked > 0 and checker.revived == []
    assert_target_reached(pruner, pruner.masks.masks, granularity)
    assert_masked_zero(pruner)
    assert not math.isnan(cb.summary["sparsity"])
