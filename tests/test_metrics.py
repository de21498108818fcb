"""Logged and reported numbers against independent computations: `mask/churn`, `flops_sparse`, `flops/ratio`.

FLOPs are checked two ways. Channel pruning: the masked network is physically slimmed with Torch-Pruning
(the pruned channels removed from every coupled layer) and its FLOPs counted with
`torch.utils.flop_counter.FlopCounterMode`; the report must equal that count exactly. Unstructured: the
expected count is Σ (dense FLOPs of the layer, from its shape) × (nonzero weights / weights) over the
targeted layers plus the dense FLOPs of the others, in exact rational arithmetic. Convention (shared by the
report and both references): FLOPs are those `FlopCounterMode` counts, i.e. conv and matmul
multiply-adds as 2; bias adds, BatchNorm, activations, pooling and residual adds are not counted.
"""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sparsetrain import SparsityCallback
from sparsetrain.pruners import GMP, SET, RigL
from tests.helpers.fits import quiet_trainer
from tests.helpers.nets import Net, loader


class Captured(Logger):
    """Keeps every `log_metrics` call: (step, metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "captured"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))


class MasksAround(pl.Callback):
    """Copies the masks at `on_before_optimizer_step`; listed before and after `SparsityCallback`, the two
    copies are the masks before and after the step's update event."""

    def __init__(self, cb: SparsityCallback) -> None:
        self.cb, self.seen = cb, {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.seen[trainer.global_step] = {f: m.clone() for f, m in self.cb.pruner.mask_dict().items()}


def fit(cb: SparsityCallback, before=(), after=(), logger: Logger | None = None) -> Net:
    """3 epochs of 4 batches; `before`/`after` are listed before/after the sparsity callback."""
    torch.manual_seed(0)
    module = Net()
    trainer = quiet_trainer(max_epochs=3, logger=logger or False, callbacks=[*before, cb, *after])
    trainer.fit(module, train_dataloaders=loader())
    return module


# ----------------------------------------------------------------------------------------- churn
@pytest.mark.parametrize(
    "make",
    [lambda: RigL(sparsity=0.5, update_every=2, regrow_end=1.0), lambda: SET(sparsity=0.5, update_every=2)],
    ids=["rigl", "set"],
)
def test_logged_churn_is_the_fraction_of_active_weights_newly_grown_at_each_event(make):
    cb = SparsityCallback(make(), finalize=False)
    before, after, logger = MasksAround(cb), MasksAround(cb), Captured()
    fit(cb, before=[before], after=[after], logger=logger)
    events = [(step, m["mask/churn"]) for step, m in logger.rows if "mask/churn" in m]
    assert len(events) >= 4
    for step, churn in events:
        old, new = before.seen[step], after.seen[step]
        grown = sum(int(((new[f] != 0) & (old[f] == 0)).sum()) for f in cb.pruner.weights)
        active = sum(int((new[f] != 0).sum()) for f in cb.pruner.weights)
        assert grown > 0
        assert churn == grown / active, (step, churn, grown, active)
    assert len({c for _, c in events}) > 1 and all(0 < c < 1 for _, c in events)


# ----------------------------------------------------------------------------------------- FLOPs
def counted_flops(model: nn.Module, x: torch.Tensor) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def physically_pruned(network: nn.Module, targets, x: torch.Tensor) -> tuple[nn.Module, int]:
    """A copy of a finalized channel-pruned network with its zeroed output channels removed (Torch-Pruning
    removes each channel from every coupled layer: BN, consumers' inputs, residual partners)."""
    import torch_pruning as tp

    slim = copy.deepcopy(network).eval()
    graph = tp.DependencyGraph().build_dependency(slim, example_inputs=x)
    removed = 0
    for name in targets:
        module = slim.get_submodule(name)
        dead = (module.weight.detach().flatten(1) == 0).all(dim=1).nonzero().flatten().tolist()
        if not dead:
            continue
        fn = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
        group = graph.get_pruning_group(module, fn, idxs=dead)
        assert graph.check_pruning_group(group)
        group.prune()
        removed += len(dead)
    return slim, removed


def test_channel_pruned_flops_equal_the_flops_of_the_physically_pruned_network():
    x = torch.zeros(1, 3, 8, 8)
    cb = SparsityCallback(GMP(sparsity=0.5, granularity="channel", update_every=2))
    module = fit(cb)  # finalized: pruned channels are zeros in the plain architecture
    network = module.net
    slim, removed = physically_pruned(network, cb.pruner.targets, x)
    assert removed >= 4 and sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in network.parameters())
    probe = torch.randn(5, 3, 8, 8)
    assert torch.allclose(slim(probe), network.eval()(probe), atol=1e-5)  # the same function, fewer channels
    assert cb.summary["flops_dense"] == counted_flops(copy.deepcopy(Net().net), x)
    assert cb.summary["flops_sparse"] == counted_flops(slim, x) < cb.summary["flops_dense"]


def test_channel_pruned_linear_flops_from_account_equal_the_slim_network():
    from sparsetrain.accounting import account, module_flops
    from tests.helpers.nets import MLP, batches, train_plain

    torch.manual_seed(0)
    model, x = MLP(), torch.zeros(1, 16)
    pruner = GMP(sparsity=0.5, granularity="channel", update_every=2)
    pruner.attach(model, 12, x)
    train_plain(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), batches(4, (16,)), 12)
    report = account(model, module_flops(model, x), pruner.mask_dict(), pruner.targets)
    pruner.finalize()
    slim, removed = physically_pruned(model, pruner.targets, x)
    assert removed > 0
    assert report["flops_sparse"] == counted_flops(slim, x)


def layer_flops(module: nn.Module, out_hw: int) -> int:
    """Dense forward FLOPs of one conv/linear layer for one example, from its shape (multiply-add = 2)."""
    if isinstance(module, nn.Linear):
        return 2 * module.in_features * module.out_features
    kh, kw = module.kernel_size
    return 2 * module.out_channels * (module.in_channels // module.groups) * kh * kw * out_hw * out_hw


def test_unstructured_flops_are_dense_layer_flops_times_density_for_targets_plus_dense_rest():
    logger = Captured()
    cb = SparsityCallback(GMP(sparsity=0.7, update_every=2))
    network = fit(cb, logger=logger).net  # finalized: the zeros are in the weights
    expected, dense = Fraction(0), 0
    for name, module in network.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            flops = layer_flops(module, 8)  # every conv keeps the 8x8 resolution
            w = module.weight.detach()
            density = Fraction(int(w.count_nonzero()), w.numel()) if name in cb.pruner.targets else 1
            assert name in cb.pruner.targets or density == 1
            expected += flops * density
            dense += flops
    assert set(cb.pruner.targets) == {"conv2", "conv3", "conv4"}  # conv1 and fc stay dense
    assert cb.summary["flops_dense"] == dense
    assert cb.summary["flops_sparse"] == round(expected)
    assert cb.summary["flops_sparse"] < dense * 0.5  # the pruned layers carry most of the FLOPs
    ratios = [m["flops/ratio"] for _, m in logger.rows if "flops/ratio" in m]
    assert ratios[-1] == pytest.approx(float(expected / dense), abs=1e-9)
