"""GPU cells of the device matrix: masks on CUDA, bf16-mixed, channels_last, resume, two pruners in one process.

Skipped without CUDA (see conftest); `experiments/gpu/check.sh` runs them on a GPU machine. The CPU tests in
`test_device_moves.py` reproduce the same class of bug (buffers replaced by a move) without a GPU.
"""

from __future__ import annotations

import pytest
import torch

from sparsetrain import SparsityCallback
from sparsetrain.masking import find_mask_buffers
from tests.helpers.callbacks import StopAfterFirstEpoch, ZeroAfterStep
from tests.helpers.checks import assert_target_reached, live
from tests.helpers.fits import fit, fit_with_checkpoints
from tests.helpers.matrix import SLIMMING, make, matrix
from tests.helpers.nets import Net, ResNetTiny, batches, plain_step

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(("key", "granularity"), matrix(exclude=SLIMMING))
def test_fit_on_cuda_finalizes_after_teardown_moved_the_module_to_the_cpu(key, granularity):
    pruner = make(key, granularity)
    cb = SparsityCallback(pruner)
    module = fit(cb, accelerator="cuda")
    assert next(module.parameters()).device.type == "cpu"  # Lightning's teardown moved it back
    assert find_mask_buffers(module.net) == []
    plain = ResNetTiny(in_chans=3, width=8)
    plain.load_state_dict(module.net.state_dict(), strict=True)
    zeros = sum(int((plain.get_submodule(n).weight == 0).sum()) for n in pruner.targets)
    total = sum(plain.get_submodule(n).weight.numel() for n in pruner.targets)
    assert zeros / total == pytest.approx(cb.summary["sparsity"], abs=1e-6)


@pytest.mark.parametrize(("key", "granularity"), matrix(exclude=SLIMMING))
@pytest.mark.parametrize("layout", ["bf16-mixed", "channels_last"])
def test_bf16_mixed_and_channels_last_on_cuda(key, granularity, layout):
    pruner = make(key, granularity)
    module = Net()
    kw = {"precision": "bf16-mixed"} if layout == "bf16-mixed" else {}
    if layout == "channels_last":
        module = module.to(memory_format=torch.channels_last)
    cb = SparsityCallback(pruner, finalize=False)
    checker = ZeroAfterStep(cb)
    fit(cb, checker, module=module, accelerator="cuda", **kw)
    assert checker.checked > 0 and checker.revived == []
    assert_target_reached(pruner, pruner.masks.masks, granularity)


@pytest.mark.parametrize("key", ["gmp", "granet", "pdp"])
def test_resume_on_cuda_equals_the_uninterrupted_run(key, tmp_path):
    full = fit_with_checkpoints(make(key, "unstructured"), tmp_path / "full", accelerator="cuda")
    fit_with_checkpoints(make(key, "unstructured"), tmp_path / "k", StopAfterFirstEpoch(), accelerator="cuda")
    pruner = make(key, "unstructured")
    resumed = fit_with_checkpoints(pruner, tmp_path / "r", ckpt_path=tmp_path / "k" / "last.ckpt", accelerator="cuda")
    for fqn in pruner.mask_dict():
        (w, m), (fw, fm) = live(resumed, fqn), live(full, fqn)
        assert torch.equal(m, fm), fqn
        assert torch.allclose(w, fw, atol=1e-5), fqn


def test_two_pruners_in_sequence_in_one_process():
    """A second fit with another pruner must not see the first one's hooks, buffers or cached tensors."""
    for key in ("gmp", "pdp", "granet"):
        cb = SparsityCallback(make(key, "unstructured"))
        module = fit(cb, accelerator="cuda")
        assert find_mask_buffers(module.net) == []
        assert cb.summary["sparsity"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("key", ["magnitude", "gmp", "granet", "rigl", "set", "pdp"])
def test_no_host_device_sync_on_the_per_step_path(key):
    """Between update events a step must not wait for the GPU (`set_sync_debug_mode("error")` raises if it does)."""
    model = ResNetTiny().cuda()
    pruner = make(key, "unstructured")
    if key == "pdp":
        pruner.threshold_every = 10
    steps = 40
    pruner.attach(model, steps, torch.zeros(1, 3, 8, 8, device="cuda"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.on_fit_start(optimizer, [])
    data = [(x.cuda(), y.cuda()) for x, y in batches(4, (3, 8, 8))]
    for step in range(steps):
        x, y = data[step % len(data)]
        event = pruner.is_update_step(step) or step in (0, steps - 1)
        if key == "pdp":  # PDP's events: threshold refreshes (a top-k per layer) and the hardening step
            event = step >= pruner.warmup_step and ((step - pruner.warmup_step) % 10 == 0 or step >= pruner.harden_step)
        torch.cuda.set_sync_debug_mode(0 if event else "error")
        try:
            plain_step(model, pruner, optimizer, (x, y), step)
        finally:
            torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("granularity", ["unstructured", "nm"])
def test_a_pdp_threshold_refresh_does_not_wait_for_the_gpu(granularity):
    """PDP's threshold refresh (every `threshold_every` steps: a top-k and a spread per layer) leaves everything on
    the device. Three syncs per layer made PDP 16x slower than its step alone when 12 trainings shared a GPU."""
    model = ResNetTiny().cuda()
    pruner = make("pdp", granularity)
    pruner.attach(model, 40, torch.zeros(1, 3, 8, 8, device="cuda"))
    pruner.on_fit_start(torch.optim.SGD(model.parameters(), lr=0.05), [])
    pruner.before_forward(pruner.warmup_step)  # the budgets (one global ranking) and the first refresh
    torch.cuda.set_sync_debug_mode("error")
    try:
        pruner.refresh_thresholds(0.5)
    finally:
        torch.cuda.set_sync_debug_mode(0)
