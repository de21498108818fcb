"""Masks follow the model through every move: device, dtype, memory format, teardown, resume.

On an accelerator, Lightning's teardown moves the module back to the CPU before `on_fit_end`, and moving a
module replaces every buffer object. A pruner that cached its mask tensors then finalized stale CUDA masks
against CPU weights and crashed at the end of every GPU fit. These tests reproduce that class of bug on the
CPU: a move replaces every buffer (`_apply(clone)` or a dtype change) between fit start and fit end, and the
masks the model holds (what a checkpoint saves and what finalize folds in) must be the ones the pruner decided.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from sparsetrain import SparsityCallback
from sparsetrain.granularity import nm_group_view
from sparsetrain.masking import MaskSet, find_mask_buffers, resolve
from sparsetrain.pruners import list_pruners
from tests.helpers.nets import MLP, ResNetTiny, batches, train_plain

STEPS = 12  # 3 epochs of 4 batches

# Every pruner at every granularity it supports, with budgets whose events straddle the moves below.
CASES = {
    "magnitude": {"begin": 0.5},
    "gmp": {"update_every": 2},
    "imp": {"rounds": 2},
    "granet": {"update_every": 2},
    "rigl": {"update_every": 2},
    "set": {"update_every": 2},
    "pdp": {"threshold_every": 1},
    "bip": {"warmup": 0.25, "finetune": 0.25},
}
GRANULARITIES = {"unstructured": {"sparsity": 0.5}, "nm": {"granularity": "nm"}, "channel": {"sparsity": 0.5}}
REGROWING = {"granet", "rigl", "set"}  # no channel granularity (regrowth is per weight)


def matrix() -> list[tuple[str, str]]:
    return [(k, g) for k in CASES for g in GRANULARITIES if not (g == "channel" and k in REGROWING)]


# The default suite runs every pruner unstructured and every granularity with GMP and PDP; the rest of the
# matrix is marked slow (`make test-all`).
DEFAULT_CELLS = {(k, "unstructured") for k in CASES} | {(k, g) for k in ("gmp", "pdp") for g in ("nm", "channel")}


def cells(known: dict | None = None) -> list:
    """`matrix()` as pytest params: cells outside DEFAULT_CELLS marked slow, known bugs marked strict xfail."""
    out = []
    for k, g in matrix():
        marks = [] if (k, g) in DEFAULT_CELLS else [pytest.mark.slow]
        if known and (k, g) in known:
            marks.append(pytest.mark.xfail(strict=True, reason=known[(k, g)]))
        out.append(pytest.param(k, g, marks=marks, id=f"{k}-{g}"))
    return out


def make_pruner(key: str, granularity: str):
    kw = {**CASES[key], **GRANULARITIES[granularity]}
    if granularity == "channel":
        kw["granularity"] = "channel"
    return list_pruners()[key](**kw)


class Net(pl.LightningModule):
    """ResNetTiny (conv + BN + a residual add: coupled channels) on 8×8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ResNetTiny(in_chans=3, width=8)
        self.example_input_array = torch.zeros(1, 3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.net.fc.weight.dtype))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (32,), generator=g)
    x = torch.randn(32, 3, 8, 8, generator=g) + y.view(-1, 1, 1, 1) * 0.5
    return DataLoader(TensorDataset(x, y), batch_size=8)


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


def fit(cb: SparsityCallback, *callbacks: pl.Callback, module: Net | None = None, **trainer_kw) -> Net:
    """Fit `module` for 3 epochs with `callbacks` listed before the sparsity callback."""
    module = module or Net()
    trainer = pl.Trainer(
        max_epochs=trainer_kw.pop("max_epochs", 3),
        accelerator=trainer_kw.pop("accelerator", "cpu"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, cb],
        **trainer_kw,
    )
    trainer.fit(module, train_dataloaders=loader())
    return module


def live(module: Net, fqn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainable tensor and the mask buffer the model holds now for `fqn` (what a checkpoint saves)."""
    owner, name = resolve(module.net, fqn)
    return owner._parameters[name], owner._buffers[name + "_mask"]


def assert_target_reached(pruner, masks: dict[str, torch.Tensor], granularity: str) -> None:
    weights = {f: masks[f] for f in pruner.weights}
    if granularity == "nm":
        for m in weights.values():
            assert torch.all(nm_group_view(m != 0, 4).sum(dim=1) == 2)
    elif granularity == "unstructured" and pruner.allocation == "global":
        total = sum(m.numel() for m in weights.values())
        assert sum(int(m.count_nonzero()) for m in weights.values()) == total - round(0.5 * total)
    else:  # per-layer rounding (ERK) or channels: within one element / one channel per layer of the target
        total = sum(m.numel() for m in weights.values())
        active = sum(int(m.count_nonzero()) for m in weights.values())
        assert abs(active / total - 0.5) < 0.15, active / total


@pytest.mark.parametrize(("key", "granularity"), cells())
def test_masks_the_model_holds_are_the_decided_ones_after_buffers_were_replaced(key, granularity):
    pruner = make_pruner(key, granularity)
    mover = ReplaceBuffers(at_step=1)
    cb = SparsityCallback(pruner, finalize=False)
    module = fit(cb, mover)
    assert mover.moves == 2
    decided = pruner.mask_dict()
    assert len(find_mask_buffers(module.net)) == len(decided)
    masks = {}
    for fqn in decided:
        weight, masks[fqn] = live(module, fqn)
        assert torch.equal(masks[fqn], decided[fqn])  # the pruner wrote into the model's live buffer
        if pruner.masks_weights:
            assert torch.count_nonzero(weight.detach()[masks[fqn] == 0]) == 0
    assert_target_reached(pruner, masks, granularity)
    assert cb.summary["sparsity"] == pytest.approx(pruner.global_sparsity())


@pytest.mark.parametrize(("key", "granularity"), cells())
def test_finalize_after_teardown_replaced_every_buffer(key, granularity):
    pruner = make_pruner(key, granularity)
    cb = SparsityCallback(pruner)
    module = fit(cb, ReplaceBuffers(at_step=1))
    assert find_mask_buffers(module.net) == []
    plain = ResNetTiny(in_chans=3, width=8)
    plain.load_state_dict(module.net.state_dict(), strict=True)
    zeros = sum(int((plain.get_submodule(n).weight == 0).sum()) for n in cb.summary["layers"] if n in pruner.targets)
    total = sum(plain.get_submodule(n).weight.numel() for n in pruner.targets)
    assert zeros / total == pytest.approx(cb.summary["sparsity"], abs=1e-6)


@pytest.mark.parametrize("key", sorted(CASES))
def test_a_dtype_change_mid_training_keeps_masks_live(key):
    """`model.double()` after attach: masks become float64 copies; later events must land in them."""
    model = MLP()
    pruner = make_pruner(key, "unstructured")
    pruner.attach(model, STEPS, torch.zeros(1, 16))
    model.double()
    data = [(x.double(), y) for x, y in batches(8, (16,))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_plain(model, pruner, optimizer, data, pruner.fit_steps(STEPS))
    pruner.on_fit_end()
    decided = pruner.mask_dict()
    for fqn in decided:
        owner, name = resolve(model, fqn)
        weight, mask = owner._parameters[name], owner._buffers[name + "_mask"]
        assert mask.dtype == torch.float64
        assert torch.equal(mask, decided[fqn])
        assert torch.count_nonzero(weight.detach()[mask == 0]) == 0
    total = sum(decided[f].numel() for f in pruner.weights)
    active = sum(int(decided[f].count_nonzero()) for f in pruner.weights)
    assert abs(active / total - 0.5) <= 0.02
    pruner.finalize()
    assert find_mask_buffers(model) == []


def test_mask_set_reads_live_tensors_after_any_move():
    model = ResNetTiny()
    masks = MaskSet(model, ["conv2.weight", "fc.weight"])
    masks.set("conv2.weight", (torch.arange(8 * 8 * 9).reshape(8, 8, 3, 3) % 2).float())
    for move in (lambda m: m.double(), lambda m: m._apply(lambda t: t.clone()), lambda m: m.float()):
        move(model)
        assert masks.masks["conv2.weight"] is model.conv2.weight_mask
        assert masks.params["conv2.weight"] is model.conv2.weight
        assert masks.masks["fc.weight"] is model.fc.weight_mask
    model.conv2.weight.data.fill_(1.0)
    masks.apply_to_weights()
    assert int(model.conv2.weight.count_nonzero()) == 8 * 8 * 9 // 2
    masks.remove()
    assert find_mask_buffers(model) == []


def test_channels_last_masks_keep_the_memory_format_and_are_enforced():
    model = ResNetTiny().to(memory_format=torch.channels_last)
    pruner = make_pruner("gmp", "unstructured")
    pruner.attach(model, STEPS, torch.zeros(1, 3, 8, 8))
    assert pruner.mask_dict()["conv2.weight"].is_contiguous(memory_format=torch.channels_last)
    data = [(x.to(memory_format=torch.channels_last), y) for x, y in batches(4, (3, 8, 8))]
    train_plain(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), data, STEPS)
    assert pruner.global_sparsity() == pytest.approx(0.5, abs=1e-3)
    for fqn, mask in pruner.masks.masks.items():
        assert torch.count_nonzero(pruner.masks.params[fqn].detach()[mask == 0]) == 0


def bf16_supported() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1))
        return True
    except RuntimeError:
        return False


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no bf16 autocast")
@pytest.mark.parametrize(("key", "granularity"), cells())
@pytest.mark.parametrize("layout", ["bf16-mixed", "channels_last"])
def test_bf16_mixed_and_channels_last_reach_the_target_with_masked_weights_exactly_zero(key, granularity, layout):
    pruner = make_pruner(key, granularity)
    module = Net()
    kw = {"precision": "bf16-mixed"} if layout == "bf16-mixed" else {}
    if layout == "channels_last":
        module = module.to(memory_format=torch.channels_last)
    cb = SparsityCallback(pruner, finalize=False)
    checker = ZeroAfterStep(cb)
    fit(cb, checker, module=module, **kw)
    assert checker.checked > 0 and checker.revived == []
    assert_target_reached(pruner, pruner.masks.masks, granularity)
    for fqn, mask in pruner.masks.masks.items():
        assert torch.count_nonzero(pruner.masks.params[fqn].detach()[mask == 0]) == 0


class StopAfterFirstEpoch(pl.Callback):
    """Ends fit after epoch 0, as if the job had been killed there (`last.ckpt` is written by then)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def fit_with_checkpoints(pruner, ckpt_dir, *callbacks: pl.Callback, ckpt_path=None, accelerator="cpu") -> Net:
    """Fit a freshly seeded module for 3 epochs, writing `last.ckpt` into `ckpt_dir` after every epoch."""
    torch.manual_seed(0)
    module = Net()
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator=accelerator,
        logger=False,
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            *callbacks,
            ModelCheckpoint(dirpath=ckpt_dir, save_last=True),
            SparsityCallback(pruner, finalize=False),
        ],
    )
    trainer.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path)
    return module


KNOWN_RESUME_BUGS: dict[tuple[str, str], str] = {}  # cells expected to fail (strict xfail), with the reason


@pytest.mark.parametrize(("key", "granularity"), cells(KNOWN_RESUME_BUGS))
def test_resume_into_a_moved_model_equals_the_uninterrupted_run(key, granularity, tmp_path):
    full = fit_with_checkpoints(make_pruner(key, granularity), tmp_path / "full")
    fit_with_checkpoints(make_pruner(key, granularity), tmp_path / "killed", StopAfterFirstEpoch())
    pruner = make_pruner(key, granularity)
    mover = ReplaceBuffers(at_step=5)  # the restored buffers are replaced again after the resume
    resumed = fit_with_checkpoints(pruner, tmp_path / "resumed", mover, ckpt_path=tmp_path / "killed" / "last.ckpt")
    assert mover.moves == 2
    for fqn, mask in pruner.mask_dict().items():
        weight, live_mask = live(resumed, fqn)
        full_weight, full_mask = live(full, fqn)
        assert torch.equal(live_mask, mask) and torch.equal(live_mask, full_mask), fqn
        assert torch.allclose(weight, full_weight, atol=1e-6), fqn
