"""Masks follow the model through every move: device, dtype, memory format, teardown, resume.

On an accelerator, Lightning's teardown moves the module back to the CPU before `on_fit_end`, and moving a
module replaces every buffer object. A pruner that cached its mask tensors then finalized stale CUDA masks
against CPU weights and crashed at the end of every GPU fit. These tests reproduce that class of bug on the
CPU: a move replaces every buffer (`_apply(clone)` or a dtype change) between fit start and fit end, and the
masks the model holds (what a checkpoint saves and what finalize folds in) must be the ones the pruner decided.
"""

from __future__ import annotations

import pytest
import torch

from sparsetrain import SparsityCallback
from sparsetrain.masking import MaskSet, find_mask_buffers, resolve
from tests.helpers.callbacks import ReplaceBuffers, StopAfterFirstEpoch, ZeroAfterStep
from tests.helpers.checks import assert_target_reached, live
from tests.helpers.fits import fit, fit_with_checkpoints
from tests.helpers.matrix import PRUNERS, SLIMMING, cells, make
from tests.helpers.nets import MLP, Net, ResNetTiny, batches, train_plain

STEPS = 12  # 3 epochs of 4 batches

# Every pruner at every granularity it defines, but LAPP (it slims the network: no masks to follow), at budgets
# whose events straddle the moves below. The default suite runs every pruner at its default granularity and GMP
# and PDP at every granularity; the rest of the matrix is marked slow (`make test-all`).
EVERY_GRANULARITY = ("gmp", "pdp")
CELLS = cells(exclude=SLIMMING, every_granularity=EVERY_GRANULARITY)
MASKING = sorted(set(PRUNERS) - SLIMMING)


@pytest.mark.parametrize(("key", "granularity"), CELLS)
def test_masks_the_model_holds_are_the_decided_ones_after_buffers_were_replaced(key, granularity):
    pruner = make(key, granularity)
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


@pytest.mark.parametrize(("key", "granularity"), CELLS)
def test_finalize_after_teardown_replaced_every_buffer(key, granularity):
    pruner = make(key, granularity)
    cb = SparsityCallback(pruner)
    module = fit(cb, ReplaceBuffers(at_step=1))
    assert find_mask_buffers(module.net) == []
    plain = ResNetTiny(in_chans=3, width=8)
    plain.load_state_dict(module.net.state_dict(), strict=True)
    zeros = sum(int((plain.get_submodule(n).weight == 0).sum()) for n in cb.summary["layers"] if n in pruner.targets)
    total = sum(plain.get_submodule(n).weight.numel() for n in pruner.targets)
    assert zeros / total == pytest.approx(cb.summary["sparsity"], abs=1e-6)


@pytest.mark.parametrize("key", MASKING)
def test_a_dtype_change_mid_training_keeps_masks_live(key):
    """`model.double()` after attach: masks become float64 copies; later events must land in them."""
    model = MLP()
    pruner = make(key, "unstructured")
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
    pruner = make("gmp", "unstructured")
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
@pytest.mark.parametrize(("key", "granularity"), CELLS)
@pytest.mark.parametrize("layout", ["bf16-mixed", "channels_last"])
def test_bf16_mixed_and_channels_last_reach_the_target_with_masked_weights_exactly_zero(key, granularity, layout):
    pruner = make(key, granularity)
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


KNOWN_RESUME_BUGS: dict[tuple[str, str], str] = {}  # cells expected to fail (strict xfail), with the reason
RESUME_CELLS = cells(exclude=SLIMMING, every_granularity=EVERY_GRANULARITY, known=KNOWN_RESUME_BUGS)


@pytest.mark.parametrize(("key", "granularity"), RESUME_CELLS)
def test_resume_into_a_moved_model_equals_the_uninterrupted_run(key, granularity, tmp_path):
    full = fit_with_checkpoints(make(key, granularity), tmp_path / "full")
    fit_with_checkpoints(make(key, granularity), tmp_path / "killed", StopAfterFirstEpoch())
    pruner = make(key, granularity)
    mover = ReplaceBuffers(at_step=5)  # the restored buffers are replaced again after the resume
    resumed = fit_with_checkpoints(pruner, tmp_path / "resumed", mover, ckpt_path=tmp_path / "killed" / "last.ckpt")
    assert mover.moves == 2
    for fqn, mask in pruner.mask_dict().items():
        weight, live_mask = live(resumed, fqn)
        full_weight, full_mask = live(full, fqn)
        assert torch.equal(live_mask, mask) and torch.equal(live_mask, full_mask), fqn
        assert torch.allclose(weight, full_weight, atol=1e-6), fqn
