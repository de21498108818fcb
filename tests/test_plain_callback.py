"""Every pruner at every granularity it defines, through the plain callback on a user's own LightningModule
that declares no example input and gets its data straight from `trainer.fit` (no datamodule).

The matrix: trainer budget (`max_steps` only, `max_epochs` only) x the network's shape (a module with layers
as attributes, one flat `nn.Sequential`, a module holding nested Sequentials, torchvision's ResNet-18) x
method x granularity. Each cell checks what a user gets: during training the network holds no module of
ours without a forward of its own (a child added to a Sequential becomes a layer); at the end the finalized
network is the plain architecture (loads into a fresh one with `strict=True`, computes the same), the weights
its masks pruned are exactly zero at the target, and the sparse FLOPs are below dense. LAPP's network is
slimmed instead: the same module types, fewer channels, fewer measured FLOPs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from sparsetrain import SparsityCallback
from sparsetrain.data import EpochSampler, ResumableDataLoader
from sparsetrain.granularity import nm_group_view
from sparsetrain.masking import find_mask_buffers
from sparsetrain.pruners import GMP, PDP, list_pruners
from tests.helpers.callbacks import StopAfterFirstEpoch
from tests.helpers.fits import quiet_trainer
from tests.helpers.matrix import BUDGETS, DEFAULT_BUDGET, GRANULARITIES, matrix
from tests.helpers.nets import NestedSeqNet, ResNetTiny, UserModule, batches, loader, seq_net, train_plain

# name -> (builds the user's network, input side in pixels)
SHAPES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "module": (lambda: ResNetTiny(in_chans=3, width=8), 8),  # layers as attributes, a residual add
    "sequential": (seq_net, 8),  # the network is one flat nn.Sequential
    "nested": (NestedSeqNet, 8),  # Sequentials inside Sequentials, a residual block around one
    "torchvision": (lambda: torchvision.models.resnet18(num_classes=4), 32),  # weights=None: no download
}
# 4 batches per epoch: `max_steps=6` ends inside the second epoch; no budget names the other key
TRAINER_BUDGETS = {"steps": {"max_steps": 6}, "epochs": {"max_epochs": 2}}
# Unmarked: every method x granularity on a flat Sequential under `max_steps` only (the Sequential crash and the
# missing example input this file was written for), on nested Sequentials and on the attribute-style module
# under `max_epochs`, plus ResNet-18 under `max_steps` for the two methods that reparametrize the network at
# channel granularity (PDP's soft channel masks, LAPP's bypass and slimming). Everything else is `slow`:
# 0.1-0.5 s per tiny cell, 3-20 s per ResNet-18 cell on 2 CPU cores.
FAST_SHAPES = {("steps", "sequential"), ("epochs", "nested"), ("epochs", "module")}
FAST_TORCHVISION = {("steps", "pdp", "channel"), ("steps", "lapp", "channel")}


def images(side: int) -> DataLoader:
    if side == 8:
        return loader()
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (32,), generator=g)
    x = torch.randn(32, 3, side, side, generator=g) + y.view(-1, 1, 1, 1) * 0.5
    return DataLoader(TensorDataset(x, y), batch_size=8)


def pruner_kwargs(key: str, granularity: str) -> dict:
    """The matrix's budget and granularity (LAPP: its defaults with `DEFAULT_BUDGET`), less a key it ignores."""
    cls = list_pruners()[key]
    kw = {**BUDGETS.get(key, DEFAULT_BUDGET), **GRANULARITIES[granularity], "granularity": granularity}
    if "sparsity" in cls.unused_keys:
        kw.pop("sparsity", None)
    return kw


def plain_cells() -> list:
    """Trainer budget × network shape × the method matrix's (key, granularity), with this file's slow split."""
    out = []
    for budget in TRAINER_BUDGETS:
        for shape in SHAPES:
            for key, granularity in matrix():
                fast = (budget, shape) in FAST_SHAPES or (
                    shape == "torchvision" and (budget, key, granularity) in FAST_TORCHVISION
                )
                marks = [] if fast else [pytest.mark.slow]
                cell = (budget, shape, key, granularity)
                out.append(pytest.param(*cell, marks=marks, id="-".join(cell)))
    return out


class ForeignModules(pl.Callback):
    """At the first training batch (masks, hooks and bypasses attached): the network's modules that are not
    the user's layers, not under a parametrization, and have no forward of their own."""

    def __init__(self, plain: nn.Module) -> None:
        self.plain = {n for n, _ in plain.named_modules()}
        self.found: dict[str, str] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.found is None:
            self.found = {
                n: type(m).__name__
                for n, m in pl_module.backbone.named_modules()
                if n not in self.plain
                and "parametrizations" not in n.split(".")
                and type(m).forward is nn.Module.forward
            }


def measured_flops(net: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()(x)
    return counter.get_total_flops()


@pytest.mark.parametrize(("budget", "shape", "key", "granularity"), plain_cells())
def test_every_method_and_granularity_through_the_plain_callback(budget, shape, key, granularity, trainer):
    build, side = SHAPES[shape]
    torch.manual_seed(0)
    plain = build()
    network = build()
    network.load_state_dict(plain.state_dict())
    module = UserModule(network)
    pruner = list_pruners()[key](**pruner_kwargs(key, granularity))
    decided: dict[str, torch.Tensor] = {}
    finalize = pruner.finalize

    def finalize_and_keep_the_masks() -> None:  # the hard masks finalize folds in (gone after it)
        if pruner.masks is not None:
            decided.update({fqn: m.detach().clone() for fqn, m in pruner.mask_dict().items()})
        finalize()

    pruner.finalize = finalize_and_keep_the_masks
    cb = SparsityCallback(pruner)
    foreign = ForeignModules(plain)
    fitted = trainer(**TRAINER_BUDGETS[budget], callbacks=[foreign, cb])
    fitted.fit(module, train_dataloaders=images(side))

    budget_steps = TRAINER_BUDGETS[budget].get("max_steps") or 4 * TRAINER_BUDGETS[budget]["max_epochs"]
    assert fitted.global_step == pruner.fit_steps(budget_steps)  # IMP: every round
    assert foreign.found == {}, f"modules without a forward inside the user's network: {foreign.found}"
    net = module.backbone
    x = torch.randn(2, 3, side, side)
    out = net.eval()(x)
    assert out.shape == (2, 4) and torch.isfinite(out).all()  # the finalized (or slimmed) network runs
    assert find_mask_buffers(net) == [] and not any(parametrize.is_parametrized(m) for m in net.modules())
    assert [type(m) for m in net.modules()] == [type(m) for m in plain.modules()]  # nothing added or left
    hooks = ("_forward_pre_hooks", "_forward_hooks", "_load_state_dict_pre_hooks")
    assert not [(n, h) for n, m in net.named_modules() for h in hooks if getattr(m, h)]  # none left either
    summary = cb.summary
    assert summary["flops_sparse"] < summary["flops_dense"]

    if key == "lapp":  # slimmed during training: the same layers with fewer channels, fewer measured FLOPs
        assert pruner.slimmed and decided == {}
        shrunk = [
            n
            for n, m in net.named_modules()
            if isinstance(m, nn.Conv2d) and m.out_channels < plain.get_submodule(n).out_channels
        ]
        assert shrunk
        assert measured_flops(net, x[:1]) == summary["flops_sparse"] < measured_flops(plain, x[:1])
        return

    fresh = build()
    fresh.load_state_dict(net.state_dict(), strict=True)  # the plain architecture
    assert torch.allclose(fresh.eval()(x), out, atol=1e-6)
    assert decided and set(pruner.weights) <= set(decided)
    for fqn, mask in decided.items():
        weight = net.get_parameter(fqn).detach()
        assert torch.count_nonzero(weight[mask == 0]) == 0, fqn  # pruned weights are exactly zero
    targets = {fqn: decided[fqn] for fqn in pruner.weights}
    total = sum(m.numel() for m in targets.values())
    active = sum(int(m.count_nonzero()) for m in targets.values())
    assert 1 - active / total == pytest.approx(summary["sparsity"], abs=1e-9)  # what the run reported
    zeros = sum(int((net.get_parameter(f) == 0).sum()) for f in targets)
    assert zeros >= total - active  # (more where a weight regrown at 0 was not trained since)
    if granularity == "unstructured":  # global allocation: the exact count
        assert active == total - round(0.5 * total)
    elif granularity == "nm":  # 2 of every 4 consecutive inputs in every layer it applies to
        for fqn, m in targets.items():
            assert torch.all(nm_group_view(m != 0, 4).sum(dim=1) == 2), fqn
    else:  # whole output channels: about half of them gone, and the weights of each entirely zero
        assert summary["channel_sparsity"] == pytest.approx(0.5, abs=0.2)
        dead = sum(int((m.flatten(1) == 0).all(dim=1).sum()) for m in targets.values())
        assert dead >= 0.25 * sum(m.shape[0] for m in targets.values())


def test_an_example_input_can_be_given(trainer):
    x = torch.zeros(1, 3, 8, 8)
    cb = SparsityCallback(list_pruners()["gmp"](sparsity=0.5, granularity="channel", update_every=2), example_input=x)
    trainer(max_steps=4, callbacks=[cb]).fit(UserModule(ResNetTiny(in_chans=3, width=8)), train_dataloaders=loader())
    assert cb._example is not None and cb._example.shape == x.shape


# ------------------------------------------------------------------------------------------- PDP's channel state
def channel_pdp() -> PDP:
    # thresholds refreshed at steps 1, 3, 5, ...: a run killed after step 3 trains step 4 on the checkpoint's
    return PDP(sparsity=0.5, granularity="channel", warmup=0.1, end=0.5, finetune=0.2, threshold_every=2)


def fit_sequential(pruner: PDP, ckpt_dir: Path, *callbacks: pl.Callback, ckpt_path: Path | None = None) -> nn.Module:
    torch.manual_seed(0)
    module = UserModule(seq_net())
    trainer = quiet_trainer(
        max_epochs=3,
        deterministic=True,
        enable_checkpointing=True,
        callbacks=[*callbacks, ModelCheckpoint(dirpath=ckpt_dir, save_last=True), SparsityCallback(pruner)],
    )
    trainer.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path)
    return module.backbone


def test_pdp_channel_thresholds_are_pruner_state_and_a_sequential_resumes_exactly(tmp_path):
    """The thresholds live in the pruner's checkpoint state; the network's holds the user's entries, masks
    and parametrized originals only, and a run resumed from it equals the uninterrupted one."""
    full = fit_sequential(channel_pdp(), tmp_path / "full")
    fit_sequential(channel_pdp(), tmp_path / "killed", StopAfterFirstEpoch())
    ckpt = torch.load(tmp_path / "killed" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    plain = set(seq_net().state_dict())
    network = {
        k.removeprefix("backbone.").replace(".parametrizations", "").replace(".original", "")
        for k in ckpt["state_dict"]
        if not k.endswith("_mask")
    }
    assert network == plain
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("SparsityCallback"))["pruner"]
    t2, inv_tau = state["channel"]["t2"], state["channel"]["inv_tau"]
    assert len(t2) == len(inv_tau) > 0 and all(t > 0 for t in t2) and all(i != 1.0 for i in inv_tau)
    pruner = channel_pdp()
    resumed = fit_sequential(pruner, tmp_path / "resumed", ckpt_path=tmp_path / "killed" / "last.ckpt")
    assert pruner.hardened
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_a_checkpoint_holding_pdp_channel_thresholds_in_the_network_still_loads():
    """Checkpoints written when the thresholds were a child module's buffers (`pdp_channel_state.t2_<i>`)
    load into the network with `strict=True`, and the thresholds reach the pruner."""
    x = torch.randn(4, 3, 8, 8)
    net, pruner = seq_net(), channel_pdp()
    pruner.attach(net, 12, x[:1])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    train_plain(net, pruner, optimizer, batches(4, (3, 8, 8)), 3)
    assert not pruner.hardened and pruner.soft.state.enabled
    legacy = dict(net.state_dict())
    for i, (t2, inv_tau) in enumerate(zip(pruner.soft.state.t2, pruner.soft.state.inv_tau, strict=True)):
        legacy[f"pdp_channel_state.t2_{i}"] = torch.tensor(t2)
        legacy[f"pdp_channel_state.inv_tau_{i}"] = torch.tensor(inv_tau)
    legacy_state = {k: v for k, v in pruner.state_dict().items() if k != "channel"}

    restored_net, restored = seq_net(), channel_pdp()
    restored.attach(restored_net, 12, x[:1])
    restored_net.load_state_dict(legacy, strict=True)
    restored.load_state_dict(legacy_state)
    assert restored.soft.state.t2 == pruner.soft.state.t2
    assert restored.soft.state.inv_tau == pruner.soft.state.inv_tau
    net.eval(), restored_net.eval()
    with torch.no_grad():
        assert torch.equal(restored_net(x), net(x))  # the same soft channel masks


# --------------------------------------------------------------------------------- a user's loader, mid-epoch
class SaveAndStopAt(pl.Callback):
    """Write a checkpoint right after optimizer step `step` and stop there: what a job killed just after a
    periodic mid-epoch save leaves behind."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def users_loader(resumable: bool) -> DataLoader:
    """The 32 images of `loader()` shuffled each epoch: sparsetrain's resumable loader over its (seed, epoch)
    sampler, or a plain shuffling `DataLoader`."""
    dataset = loader().dataset
    if resumable:
        return ResumableDataLoader(dataset, sampler=EpochSampler(len(dataset), seed=0), batch_size=8)
    return DataLoader(dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))


def fit_gmp(resumable: bool, *callbacks: pl.Callback, ckpt_path: Path | None = None) -> nn.Module:
    torch.manual_seed(0)
    module = UserModule(seq_net())
    gmp = GMP(sparsity=0.75, begin=0.0, end=0.8, update_every=2)
    trainer = quiet_trainer(max_steps=10, deterministic=True, callbacks=[*callbacks, SparsityCallback(gmp)])
    trainer.fit(module, train_dataloaders=users_loader(resumable), ckpt_path=ckpt_path)
    return module.backbone


@pytest.mark.parametrize("resumable", [True, False], ids=["ResumableDataLoader", "plain DataLoader"])
def test_a_users_loader_resumes_mid_epoch_exactly_only_when_it_is_resumable(resumable, tmp_path):
    """A run stopped after step 6 (inside its second epoch of 4 batches) and resumed to step 10 equals the
    uninterrupted run with `sparsetrain.data.ResumableDataLoader`: it skips the 2 batches the epoch had trained
    on. A plain `DataLoader` restarts the epoch at its first batch (Lightning warns that it is not resumable), so
    the same steps and masks' schedule train on other batches, as the README says."""
    full = fit_gmp(resumable).state_dict()
    fit_gmp(resumable, SaveAndStopAt(tmp_path / "mid.ckpt", step=6))
    assert torch.load(tmp_path / "mid.ckpt", weights_only=False)["global_step"] == 6
    resumed = fit_gmp(resumable, ckpt_path=tmp_path / "mid.ckpt").state_dict()
    assert full.keys() == resumed.keys()
    same = all(torch.equal(full[k], resumed[k]) for k in full)
    assert same == resumable
