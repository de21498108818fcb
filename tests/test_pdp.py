"""PDP soft masks: the formula, gradients through 'pruned' weights, exact hard mask, N:M."""

import pytest
import torch
from torch import nn

from sparsetrain.granularity import nm_group_view
from sparsetrain.pruners import PDP
from tests.helpers.nets import MLP, batches, train_plain


def _pdp(steps=100, **kw):
    model = MLP()
    kw.setdefault("sparsity", 0.75)
    kw.setdefault("warmup", 0.0)
    kw.setdefault("end", 0.5)
    kw.setdefault("finetune", 0.2)
    kw.setdefault("threshold_every", 1)
    pruner = PDP(**kw)
    pruner.attach(model, steps, torch.zeros(1, 16))
    pruner.on_fit_start(torch.optim.SGD(model.parameters(), lr=0.05), [])
    return model, pruner


def test_soft_mask_equals_the_formula():
    model, pruner = _pdp(tau=0.05)
    pruner.before_forward(60)  # past `end`, before hardening: full budgets, soft mask on
    w = model.fc1.parametrizations.weight.original.detach()
    k = round((1 - pruner.budgets["fc1.weight"]) * w.numel())
    mags = w.abs().reshape(-1).sort(descending=True).values
    t = 0.5 * (mags[k - 1] + mags[k])  # halfway between smallest kept and largest pruned
    tau = 0.05 * (w**2).mean()
    expected = w * torch.sigmoid((w**2 - t**2) / tau)
    assert torch.allclose(model.fc1.weight, expected, atol=1e-6)  # the parametrized weight
    assert torch.allclose(pruner.soft_mask("fc1"), torch.sigmoid((w**2 - t**2) / tau), atol=1e-6)
    assert int((pruner.soft_mask("fc1") >= 0.5).sum()) == k  # m >= 0.5 is exactly the top-k


def test_weights_below_threshold_get_gradient_in_the_soft_phase():
    model, pruner = _pdp()
    pruner.before_forward(60)
    x, y = batches(1, (16,))[0]
    nn.functional.cross_entropy(model(x), y).backward()
    original = model.fc1.parametrizations.weight.original
    below = pruner.soft_mask("fc1") < 0.5
    assert below.any()
    # a hard mask would give exactly zero here; the soft mask lets gradient through (rows of dead ReLU units
    # get none either way, hence not all of them)
    assert torch.count_nonzero(original.grad[below]) > 0.5 * int(below.sum())
    near = below & (pruner.soft_mask("fc1") > 0.05)
    assert near.any() and torch.count_nonzero(original.grad[near]) > 0.5 * int(near.sum())


def test_final_hard_mask_hits_the_target_exactly_and_folds_away():
    model, pruner = _pdp()
    train_plain(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), batches(8, (16,)), 100)
    assert pruner.hardened
    total = sum(pruner.masks.masks[f].numel() for f in pruner.weights)
    active = sum(int(pruner.masks.masks[f].sum()) for f in pruner.weights)
    assert active == round(0.25 * total)  # global budgets: exact to the weight
    expected = {n: int(pruner.masks.masks[f].sum()) for f, n in pruner.weights.items()}
    pruner.finalize()
    plain = MLP()
    plain.load_state_dict(model.state_dict(), strict=True)
    for name, count in expected.items():
        assert torch.count_nonzero(getattr(plain, name).weight) == count


def test_hard_phase_keeps_pruned_weights_at_zero():
    model, pruner = _pdp(finetune=0.4, end=0.5)
    train_plain(
        model,
        pruner,
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4),
        batches(8, (16,)),
        100,
    )
    for f in pruner.weights:
        assert torch.count_nonzero(pruner.masks.params[f][pruner.masks.masks[f] == 0]) == 0


def test_nm_thresholds_per_group_and_exact_groups():
    model, pruner = _pdp(sparsity=None, granularity="nm", n=2, m=4)
    pruner.before_forward(60)
    soft = pruner.soft_mask("fc1")
    assert torch.all(nm_group_view(soft >= 0.5, 4).sum(1) == 2)  # the per-group threshold splits 2 | 2
    train_plain(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05), batches(8, (16,)), 100)
    for f in pruner.weights:
        assert torch.all(nm_group_view(pruner.masks.masks[f] != 0, 4).sum(1) == 2)


def test_ramp_reaches_budget_at_end_whatever_the_budget_and_epsilon_option():
    _, pruner = _pdp(steps=50, warmup=0.2, end=0.6, finetune=0.2)
    assert pruner.progress(9) == 0.0 and pruner.progress(pruner.schedule.end_step) == 1.0
    _, slow = _pdp(steps=50, ramp="epsilon", epsilon=0.1)
    slow.steps_per_epoch = 10
    assert slow.progress(0) == pytest.approx(0.1) and slow.progress(25) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tau": 0}, "tau must be > 0"),
        ({"granularity": "channel", "allocation": "erk"}, "erk is defined for weights"),
        ({"warmup": 0.6, "end": 0.5}, "warmup <= end <= 1 - finetune"),
        ({"ramp": "step"}, "ramp must be one of"),
    ],
)
def test_bad_pdp_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PDP(sparsity=0.9, **kwargs)


def test_channel_soft_masks_are_coupled_differentiable_and_harden_exactly():
    from tests.helpers.nets import ResNetTiny

    torch.manual_seed(0)
    model = ResNetTiny()
    pruner = PDP(
        sparsity=0.5,
        granularity="channel",
        allocation="uniform",
        warmup=0.0,
        end=0.5,
        finetune=0.2,
        threshold_every=1,
        keep_first_last=False,
    )
    pruner.attach(model, 40, torch.zeros(1, 3, 8, 8))
    pruner.on_fit_start(torch.optim.SGD(model.parameters(), lr=0.05), [])
    stream = next(i for i, g in enumerate(pruner.groups) if {"conv1", "conv3"} <= set(g.producers))
    pruner.before_forward(25)  # soft phase at the full budget
    x, y = batches(1, (3, 8, 8))[0]
    nn.functional.cross_entropy(model(x), y).backward()
    m = pruner._channel_state.current[stream]
    assert int((m >= 0.5).sum()) == 4  # half of the 8 coupled channels above threshold
    # the same per-channel factor scales both producers of the residual stream and their BNs
    w1 = model.conv1.parametrizations.weight.original
    assert torch.allclose(model.conv1.weight, w1 * m.detach().view(-1, 1, 1, 1), atol=1e-6)
    assert torch.allclose(model.bn3.weight, model.bn3.parametrizations.weight.original * m.detach(), atol=1e-6)
    assert torch.count_nonzero(w1.grad) == w1.numel()  # every filter gets gradient, "pruned" ones too
    train_plain(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05), batches(4, (3, 8, 8)), 40)
    for g in pruner.groups:
        assert int(pruner._group_alive(g).sum()) == g.size // 2
    expected = {f: int(mask.sum()) for f, mask in pruner.masks.masks.items()}
    pruner.finalize()
    plain = ResNetTiny()
    plain.load_state_dict(model.state_dict(), strict=True)
    for fqn, count in expected.items():
        assert torch.count_nonzero(plain.get_parameter(fqn)) <= count


def test_soft_phase_logs_the_ramp_without_hard_masking_the_weights(compose):
    """Threshold refreshes report sparsity and churn (users watch the ramp), but the weights stay soft."""
    import csv

    from sparsetrain.app import run

    cfg = compose(
        "+pruner=pdp",
        "pruner.sparsity=0.8",
        "pruner.warmup=0.1",
        "pruner.end=0.5",
        "pruner.finetune=0.3",
        "pruner.threshold_every=1",
    )
    run(cfg)
    with open(f"{cfg.output_dir}/csv/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    ramp = [
        (int(r["step"]), float(r["sparsity/global"])) for r in rows if r.get("sparsity/global") and r.get("mask/churn")
    ]
    steps, sparsity = zip(*ramp, strict=True)
    assert len(ramp) >= 5 and list(steps) == sorted(steps)
    assert sparsity[0] < 0.5 < sparsity[-1] and sparsity[-1] == pytest.approx(0.8, abs=1e-3)
    assert all(b >= a - 1e-9 for a, b in zip(sparsity, sparsity[1:], strict=False))  # the ramp only rises


def test_refresh_reports_churn_but_leaves_weights_unmasked_in_the_soft_phase():
    model, pruner = _pdp(steps=100, threshold_every=5)
    pruner.before_forward(30)
    report = pruner.before_optimizer_step(30, pruner.optimizer)
    assert set(report) == {"mask/churn"} and not pruner.masks_weights
    original = model.fc1.parametrizations.weight.original
    hard_zero = pruner.masks.masks["fc1.weight"] == 0
    assert hard_zero.any() and torch.count_nonzero(original.detach()[hard_zero]) == int(hard_zero.sum())
    assert pruner.before_optimizer_step(31, pruner.optimizer) == {}  # reported once per refresh


def test_absolute_tau_equals_the_formula_without_normalisation():
    model, pruner = _pdp(tau=1e-3, tau_normalize=False)
    pruner.before_forward(60)
    w = model.fc1.parametrizations.weight.original.detach()
    t2 = pruner._soft["fc1"].t2
    assert torch.allclose(pruner.soft_mask("fc1"), torch.sigmoid((w**2 - t2) / 1e-3), atol=1e-6)


def test_thresholds_use_no_autograd_no_kthvalue_and_refresh_once_per_optimizer_step(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torch.kthvalue is slow on GPU; PDP must not use it")

    monkeypatch.setattr(torch, "kthvalue", forbidden)
    monkeypatch.setattr(torch.Tensor, "kthvalue", forbidden)
    model, pruner = _pdp(threshold_every=1)
    calls = []
    refresh = pruner.refresh_thresholds
    monkeypatch.setattr(pruner, "refresh_thresholds", lambda fraction: calls.append(fraction) or refresh(fraction))
    for step in range(1, 6):
        for _ in range(3):  # three micro-batches of one optimizer step (gradient accumulation)
            pruner.before_forward(step)
    assert len(calls) == 5
    soft = pruner._soft["fc1"]
    assert not soft.t2.requires_grad and soft.t2.grad_fn is None and soft.inv_tau.grad_fn is None
