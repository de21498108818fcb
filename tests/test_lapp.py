"""LAPP: the bypass folds exactly, the thresholds learn from the task and the FLOPs term, the network is
physically slimmed at `end` onto the budget (measured by the FLOP counter) and training continues on it with
the kept channels' optimizer state, resume before and after slimming, and the run's export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sparsetrain import SparsityCallback
from sparsetrain.pruners import list_pruners
from sparsetrain.pruners.lapp_bypass import Bypassed, add_bypasses, fold_bypasses, foldable
from tests.helpers.callbacks import StopAfterFirstEpoch
from tests.helpers.fits import fit, fit_with_checkpoints
from tests.helpers.nets import ResNetTiny, batches

LAPP = list_pruners()["lapp"]
X = torch.zeros(1, 3, 8, 8)


def flops(model: nn.Module, x: torch.Tensor = X) -> int:
    with FlopCounterMode(display=False) as counter:
        model.eval()(x)
    model.train()
    return counter.get_total_flops()


def quick(**kw):
    kw = {"max_flops_ratio": 0.5, "end": 0.5, "update_every": 1, "threshold_lr": 0.05, **kw}
    return LAPP(**kw)


# ------------------------------------------------------------------------------------------- the bypass
@pytest.mark.parametrize(("kernel", "stride", "dilation"), [(3, 1, 1), (3, 2, 1), (5, 1, 1), (3, 1, 2)])
def test_the_bypass_folds_into_the_centre_tap_exactly(kernel, stride, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, kernel, stride=stride, padding=(kernel - 1) // 2 * dilation, dilation=dilation)
    wrapped = Bypassed(conv, rank=3)
    nn.init.normal_(wrapped.bypass_up.weight)  # starts at zero; make the branch matter
    x = torch.randn(2, 6, 11, 11)
    expected = wrapped(x)
    assert not torch.allclose(expected, conv(x))
    assert torch.allclose(wrapped.folded()(x), expected, atol=1e-5)


def test_only_convs_a_bypass_can_fold_into_get_one():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=0),  # not centred
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.Conv2d(8, 8, 1),  # 1×1: nothing to add
    )
    assert [foldable(m) for m in net] == [True, False, False, False]
    assert add_bypasses(net, ["0", "1", "2", "3"], 0.25) == ["0"]
    assert isinstance(net[0], Bypassed) and net[0].bypass_down.out_channels == 2
    assert fold_bypasses(net) == 1 and isinstance(net[0], nn.Conv2d)


# ------------------------------------------------------------------------------------------- thresholds
def attached(steps: int = 20, **kw):
    torch.manual_seed(0)
    net = ResNetTiny(width=8)
    pruner = quick(**kw)
    pruner.attach(net, steps, X)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    pruner.on_fit_start(optimizer, [], 4)
    return net, pruner, optimizer


def test_thresholds_are_the_pruners_own_parameters_and_get_gradients_from_task_and_flops():
    net, pruner, optimizer = attached()
    (theta,) = pruner.extra_parameters()
    assert not any(p is theta for g in optimizer.param_groups for p in g["params"])
    x, y = batches(1, (3, 8, 8))[0]
    pruner.before_forward(0)
    F.cross_entropy(net(x), y).backward()
    task = theta.grad.clone()
    assert task.abs().sum() > 0  # the straight-through mask passes the task's gradient to the thresholds

    theta.grad = None
    pruner.before_forward(5)  # the budget has tightened below 1; nothing is pruned yet
    net(x)
    assert pruner._budget < 1.0
    pruner.penalty().backward()
    assert (theta.grad < 0).all()  # every threshold is pushed up: more FLOPs to remove


def test_the_flops_term_is_the_measured_flops_of_the_hard_masks():
    """F(m) of the hard masks equals the FLOP counter on the network slimmed with those masks."""
    net, pruner, optimizer = attached(bypass_ratio=0.0)
    with torch.no_grad():
        pruner.theta.fill_(1.0)  # about half the channels of every group below threshold
    keeps = pruner.hard_keeps()
    predicted = float(pruner.flops_ratio([k.float() for k in keeps]))
    assert 0.2 < predicted < 0.9
    dense = flops(ResNetTiny(width=8))
    pruner.max_flops_ratio = predicted + 1e-6  # the budget these masks meet: the projection keeps them
    pruner.slim()
    assert flops(net) / dense == pytest.approx(predicted, abs=1e-6)


# ------------------------------------------------------------------------------------------- slimming
class Watch(pl.Callback):
    """Records the network's parameters right after slimming and the optimizer at the end of fit."""

    def __init__(self, cb: SparsityCallback) -> None:
        self.cb, self.at_slim = cb, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.at_slim is None and self.cb.pruner.slimmed:
            self.at_slim = {k: v.detach().clone() for k, v in pl_module.net.named_parameters()}

    def on_train_end(self, trainer, pl_module) -> None:
        self.optimizer_params = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]
        self.optimizer_state = trainer.optimizers[0].state


def test_fit_slims_at_end_onto_the_budget_and_keeps_training_the_smaller_network():
    cb = SparsityCallback(quick(max_flops_ratio=0.6))
    watch = Watch(cb)
    module = fit(cb, watch)  # slims before the first batch of step 6 of 12
    pruner = cb.pruner
    assert pruner.slimmed and watch.at_slim is not None
    dense = flops(ResNetTiny(width=8))
    measured = flops(module.net) / dense
    assert measured <= 0.6 and measured == pytest.approx(cb.summary["flops_sparse"] / cb.summary["flops_dense"])
    assert cb.summary["flops_dense"] == dense
    assert sum(p.numel() for p in module.net.parameters()) < sum(p.numel() for p in ResNetTiny(width=8).parameters())
    assert not any(isinstance(m, Bypassed) for m in module.net.modules())
    # the optimizer holds exactly the slimmed parameters, with state of their shape, and they trained on
    live = list(module.net.parameters())
    assert {id(p) for p in watch.optimizer_params} == {id(p) for p in live}
    for p in live:
        assert watch.optimizer_state[p]["momentum_buffer"].shape == p.shape
    after = dict(module.net.named_parameters())
    assert any(not torch.equal(after[k], v) for k, v in watch.at_slim.items())
    rates = cb.summary["pruner_state"]["lapp"]["layer_channel_pruning"]
    assert rates and all(0.0 <= r < 1.0 for r in rates.values()) and max(rates.values()) > 0


def test_slimming_carries_the_kept_channels_optimizer_state_over():
    """After slimming, every parameter's momentum is the old momentum at the kept entries (ResNetTiny's
    coupling written out by hand: conv1/bn1/conv3/bn3 share the residual channels, conv2/bn2 and conv4/bn4
    their own)."""
    net, pruner, optimizer = attached(bypass_ratio=0.0)
    for step, (x, y) in enumerate(batches(3, (3, 8, 8))):
        pruner.before_forward(step)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    old = {}
    for name, p in net.named_parameters():
        plain = name.replace(".parametrizations", "").replace(".original", "")
        old[plain] = (p.detach().clone(), optimizer.state[p]["momentum_buffer"].clone())
    with torch.no_grad():
        pruner.theta.fill_(1.0)
    pruner.slim()
    removed = {r.root: set(r.indices) for r in pruner.removals}
    sizes = {"conv1": 8, "conv2": 8, "conv4": 16}
    kept = {g: torch.tensor([i for i in range(n) if i not in removed.get(g, set())]) for g, n in sizes.items()}
    dims = {  # parameter -> group of dim 0, group of dim 1
        "conv1.weight": ("conv1", None), "bn1.weight": ("conv1", None), "bn1.bias": ("conv1", None),
        "conv2.weight": ("conv2", "conv1"), "bn2.weight": ("conv2", None), "bn2.bias": ("conv2", None),
        "conv3.weight": ("conv1", "conv2"), "bn3.weight": ("conv1", None), "bn3.bias": ("conv1", None),
        "conv4.weight": ("conv4", "conv1"), "bn4.weight": ("conv4", None), "bn4.bias": ("conv4", None),
        "fc.weight": (None, "conv4"), "fc.bias": (None, None),
    }  # fmt: skip
    assert removed, "the test needs channels removed"
    for name, p in net.named_parameters():
        weight, momentum = old[name]
        for dim, group in enumerate(dims[name]):
            if group is not None:
                weight, momentum = weight.index_select(dim, kept[group]), momentum.index_select(dim, kept[group])
        assert torch.equal(p.detach(), weight), name
        assert torch.equal(optimizer.state[p]["momentum_buffer"], momentum), name


@pytest.mark.parametrize("end", [0.25, 0.75], ids=["killed-after-slimming", "killed-before-slimming"])
def test_resume_equals_the_uninterrupted_run(end, tmp_path):
    full = fit_with_checkpoints(quick(end=end), tmp_path / "full")
    killed = quick(end=end)
    fit_with_checkpoints(killed, tmp_path / "killed", StopAfterFirstEpoch())
    ckpt = torch.load(tmp_path / "killed" / "last.ckpt", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("SparsityCallback"))["pruner"]
    assert state["slimmed"] == (end == 0.25)  # epoch 0 is steps 0-3: slimmed at step 3, or later at step 9
    pruner = quick(end=end)
    resumed = fit_with_checkpoints(pruner, tmp_path / "resumed", ckpt_path=tmp_path / "killed" / "last.ckpt")
    assert pruner.slimmed
    a, b = dict(full.net.named_parameters()), dict(resumed.net.named_parameters())
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and torch.allclose(a[k], b[k], atol=1e-6), k


# ------------------------------------------------------------------------------------------- config and run
@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_flops_ratio": 0.0}, "max_flops_ratio must be in (0, 1]"),
        ({"max_flops_ratio": 1.5}, "max_flops_ratio must be in (0, 1]"),
        ({"granularity": "unstructured"}, "channels only"),
        ({"sparsity": 0.5}, "pruner.sparsity is not used by lapp"),
        ({"tau": 0}, "pruner.tau must be a positive number"),
        ({"bypass_ratio": -0.1}, "pruner.bypass_ratio must be in [0, 1]"),
    ],
)
def test_bad_values_fail_in_one_line(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        LAPP(**kw)


def test_a_run_reports_the_slimmed_network_and_exports_what_it_trained(compose):
    from sparsetrain.app import run
    from sparsetrain.export import load_exported

    cfg = compose("+pruner=lapp", "pruner.max_flops_ratio=0.5", "pruner.update_every=2", "trainer.max_epochs=2")
    run(cfg)
    results = json.loads((Path(cfg.output_dir) / "results.json").read_text())
    ratio = results["flops_sparse"] / results["flops_dense"]
    assert 0.4 < ratio <= 0.5 and results["lapp"]["flops_ratio"] == pytest.approx(ratio)
    assert results["removed_channels"] and 0 < results["channel_sparsity"] < 1
    exported = load_exported(f"{cfg.output_dir}/export")
    spec = json.loads((Path(cfg.output_dir) / "export" / "model.json").read_text())
    assert spec["flops"] == results["flops_sparse"] and spec["flops_dense"] == results["flops_dense"]
    assert sum(p.numel() for p in exported.parameters()) == results["params_nonzero"]


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("timm", "mobilenetv3_small_050"),
        pytest.param("torchvision", "resnet18", marks=pytest.mark.slow),  # ~10 s each on 2 cores
        pytest.param("torchvision", "mobilenet_v3_small", marks=pytest.mark.slow),
    ],
)
def test_timm_and_torchvision_cnns_are_slimmed_onto_the_budget(source, name):
    """Depthwise convs (MobileNets: their channels follow the pointwise conv before them), squeeze-excite
    and residual stages, through the pruner protocol; the FLOPs measured on the slimmed network."""
    from sparsetrain.models import build_model
    from tests.helpers.nets import train_plain

    torch.manual_seed(0)
    x = torch.zeros(1, 3, 32, 32)
    model = build_model(source, name, in_chans=3, num_classes=10, image_size=32)
    dense = flops(model, x)
    pruner = quick(max_flops_ratio=0.6, end=0.5)
    pruner.attach(model, 4, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruner.on_fit_start(optimizer, [], 4)
    train_plain(model, pruner, optimizer, batches(4, (3, 32, 32), classes=10, batch=2), 4)
    assert pruner.slimmed and not any(isinstance(m, Bypassed) for m in model.modules())
    measured = flops(model, x) / dense
    assert measured <= 0.6 and measured == pytest.approx(pruner.report()["lapp"]["flops_ratio"])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ------------------------------------------------------------------------------------------- mechanisms that must work
def train_steps(net, pruner, optimizer, steps: int) -> None:
    """The callback's loop by hand: the FLOPs term added to the task loss, the thresholds' own step."""
    data = batches(4, (3, 8, 8))
    for step in range(steps):
        x, y = data[step % len(data)]
        pruner.before_forward(step)
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        penalty = pruner.penalty()
        (loss if penalty is None else loss + penalty).backward()
        pruner.before_optimizer_step(step, optimizer)
        optimizer.step()
        pruner.after_optimizer_step(step, optimizer)


def test_the_thresholds_learn_the_budget_before_slimming():
    """The hard masks, before any projection, meet the tightened budget: the thresholds trained. With thresholds
    that never step, every channel stays above 0.5 and the slimming's projection would do all the pruning."""
    net, pruner, optimizer = attached(steps=40, end=0.75, max_flops_ratio=0.5)  # slimmed at step 30
    start = pruner.theta.detach().clone()
    train_steps(net, pruner, optimizer, 30)
    assert not pruner.slimmed
    _, ratio, budget, _ = pruner.history[-1]  # the last event before slimming (step 29)
    assert budget == pytest.approx(0.5, abs=0.01)
    assert ratio < 0.65, f"hard masks at {ratio:.3f} of the dense FLOPs, budget {budget:.3f}"
    assert not torch.allclose(pruner.theta.detach(), start)


def test_the_budget_tightens_progressively():
    """Cubic from 1 at `begin` to `max_flops_ratio` at `end`: nothing is cut at once."""
    net, pruner, optimizer = attached(steps=40, end=0.75, max_flops_ratio=0.5)
    train_steps(net, pruner, optimizer, 30)
    steps, ratios, budgets = ([h[i] for h in pruner.history] for i in range(3))
    assert budgets[0] == pytest.approx(1.0) and budgets[-1] == pytest.approx(0.5, abs=0.01)
    assert all(a >= b for a, b in zip(budgets, budgets[1:], strict=False)) and len(set(budgets)) > 10
    assert ratios[1] > 0.9  # the first steps keep (nearly) everything


def test_the_flops_term_pulls_back_when_the_masks_cut_below_the_budget():
    """Two-sided: under the budget the term pushes the thresholds down (channels return); a one-sided hinge
    would leave an over-pruned network there."""
    net, pruner, optimizer = attached()
    with torch.no_grad():
        pruner.theta.fill_(1.0)  # about half the channels below threshold; the budget at step 0 is 1
    pruner.before_forward(0)
    net(batches(1, (3, 8, 8))[0][0])
    assert float(pruner.flops_ratio([k.float() for k in pruner.hard_keeps()])) < 0.9
    penalty = pruner.penalty()
    assert penalty > 0
    penalty.backward()
    assert (pruner.theta.grad > 0).any()  # descent lowers these thresholds: more FLOPs kept


def test_every_group_keeps_a_channel_whatever_the_thresholds():
    net, pruner, optimizer = attached(max_flops_ratio=0.05, min_keep=0.0)
    with torch.no_grad():
        pruner.theta.fill_(100.0)  # above every score
    assert all(int(k.sum()) == 1 for k in pruner.hard_keeps())
    pruner.slim()
    out = net(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    assert all(m.weight.shape[0] >= 1 for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_thresholds_budget_and_flops_are_logged_until_slimming_and_the_final_ratio_after(compose):
    """`lapp/threshold_mean`, `flops/ratio`, `flops/budget` at least every 10 threshold steps until the network
    is slimmed, then the slimmed network's measured ratio once (metric names users rely on)."""
    import csv

    cfg = compose(
        "+pruner=lapp", "pruner.max_flops_ratio=0.5", "pruner.end=0.5", "trainer.max_epochs=-1", "trainer.max_steps=60",
        "test=false", "export=false",
    )  # fmt: skip
    from sparsetrain.app import run

    run(cfg)
    rows = list(csv.DictReader((Path(cfg.output_dir) / "csv" / "metrics.csv").open()))
    events = [(int(r["step"]), r) for r in rows if r.get("lapp/threshold_mean")]
    steps = [s for s, _ in events]
    assert steps[0] == 0 and all(b - a <= 10 for a, b in zip(steps, steps[1:], strict=False)) and steps[-1] >= 20
    assert all(r["flops/ratio"] and r["flops/budget"] for _, r in events)
    assert len({r["lapp/threshold_mean"] for _, r in events}) >= 3  # the thresholds learn
    after = [r for r in rows if r.get("flops/ratio") and not r.get("lapp/threshold_mean") and int(r["step"]) >= 30]
    result = json.loads((Path(cfg.output_dir) / "results.json").read_text())
    assert after and float(after[0]["flops/ratio"]) == pytest.approx(result["flops_sparse"] / result["flops_dense"])


def test_min_keep_is_a_density_floor_of_every_group_through_the_projection():
    net, pruner, optimizer = attached(max_flops_ratio=0.4, min_keep=0.25)
    with torch.no_grad():
        pruner.theta.fill_(100.0)  # above every score
    assert all(int(k.sum()) == math.ceil(0.25 * len(k)) for k in pruner.hard_keeps())
    keeps = pruner.project(pruner.hard_keeps())  # under the budget: the projection restores channels, never below
    assert all(int(k.sum()) >= math.ceil(0.25 * len(k)) for k in keeps)
    with torch.no_grad():
        pruner.theta.fill_(-100.0)  # below every score: the projection drops channels down to the floor at most
    keeps = pruner.project(pruner.hard_keeps())
    assert all(int(k.sum()) >= math.ceil(0.25 * len(k)) for k in keeps)
    assert pruner.flops_ratio([k.float() for k in keeps]) <= 0.4 + 1e-9


def test_a_floor_above_the_budget_is_lowered_until_the_budget_fits():
    """The FLOPs budget is the constraint, the floor a preference: a floor that alone would exceed the budget is
    lowered (with a warning) to the highest one that fits, and the slimmed network still meets the budget."""
    with pytest.warns(UserWarning, match=r"min_keep=0.5 keeps 0\.\d+ of the dense FLOPs, above max_flops_ratio=0.3"):
        net, pruner, optimizer = attached(max_flops_ratio=0.3, min_keep=0.5)
    floors = [f / size for f, size in zip(pruner._floors, pruner._sizes, strict=True)]
    assert 0.2 < max(floors) < 0.5
    assert pruner.flops_ratio([torch.tensor(f) * torch.ones(1) for f in floors]) <= 0.3 + 1e-9
    with torch.no_grad():
        pruner.theta.fill_(-100.0)
    keeps = pruner.project(pruner.hard_keeps())
    assert pruner.flops_ratio([k.float() for k in keeps]) <= 0.3 + 1e-9
