"""PDP soft masks: the formula, gradients through 'pruned' weights, exact hard mask, N:M, channels, the
temperature's scale per granularity and a continuous switch to the hard mask.

`.venv/bin/python -m tests.test_pdp` prints the separation and hardening numbers the tests assert on.
"""

import pytest
import torch
from torch import nn

from sparsetrain.granularity import nm_group_view
from sparsetrain.pruners import PDP
from tests.helpers.nets import MLP, ResNetTiny, batches, train_plain

GRANULARITIES = ("unstructured", "nm", "channel")


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


def _iqr(x: torch.Tensor) -> torch.Tensor:
    ordered = x.reshape(-1).sort().values
    last = ordered.numel() - 1
    return ordered[round(0.75 * last)] - ordered[round(0.25 * last)]


def test_soft_mask_equals_the_formula():
    model, pruner = _pdp(tau=0.05)
    pruner.before_forward(60)  # past `end`, before hardening: full budgets, soft mask on, τ annealing
    w = model.fc1.parametrizations.weight.original.detach()
    k = round((1 - pruner.budgets["fc1.weight"]) * w.numel())
    mags = w.abs().reshape(-1).sort(descending=True).values
    t = 0.5 * (mags[k - 1] + mags[k])  # halfway between smallest kept and largest pruned
    # τ relative to the interquartile range of w², annealed geometrically from `end` (50) to 0.01·τ at the
    # last soft step (79): at step 60 a third of the way
    tau = 0.05 * 0.01 ** ((60 - 50) / (79 - 50)) * _iqr(w**2)
    assert pruner.tau_at(50) == 0.05 and pruner.tau_at(79) == pytest.approx(0.05 * 0.01)
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
    # ε: the budget fraction gained per threshold refresh (a period in optimizer steps), not per epoch, so
    # the ramp is the same whatever the epoch length or the total budget (the paper's: it may not finish)
    for steps in (50, 1000):
        _, slow = _pdp(steps=steps, ramp="epsilon", epsilon=0.1, threshold_every=10, warmup=0.0)
        slow.steps_per_epoch = 3
        assert slow.progress(0) == pytest.approx(0.1) and slow.progress(25) == pytest.approx(0.3)
        assert slow.progress(95) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tau": 0}, "tau must be > 0"),
        ({"granularity": "channel", "allocation": "erk"}, "erk is defined for weights"),
        ({"warmup": 0.6, "end": 0.5}, "warmup <= end <= 1 - finetune"),
        ({"ramp": "step"}, "ramp must be one of"),
        ({"tau_final": 0}, "tau_final must be in"),
        ({"tau_final": 2.0}, "tau_final must be in"),
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
    m = pruner.soft.current()[stream]
    assert int((m >= 0.5).sum()) == 4  # half of the 8 coupled channels above threshold
    # the same per-channel factor scales both producers of the residual stream and their BNs
    w1 = model.conv1.parametrizations.weight.original
    assert torch.allclose(model.conv1.weight, w1 * m.detach().view(-1, 1, 1, 1), atol=1e-6)
    assert torch.allclose(model.bn3.weight, model.bn3.parametrizations.weight.original * m.detach(), atol=1e-6)
    assert torch.count_nonzero(w1.grad) == w1.numel()  # every filter gets gradient, "pruned" ones too
    train_plain(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05), batches(4, (3, 8, 8)), 40)
    for g in pruner.groups:
        assert int(pruner.granularity_strategy.alive(pruner.masks, g).sum()) == g.size // 2
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
    model, pruner = _pdp(tau=1e-3, tau_normalize=False, tau_final=1.0)
    pruner.before_forward(60)
    w = model.fc1.parametrizations.weight.original.detach()
    t2 = pruner.soft.soft["fc1"].t2
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
    soft = pruner.soft.soft["fc1"]
    assert not soft.t2.requires_grad and soft.t2.grad_fn is None and soft.inv_tau.grad_fn is None


@pytest.mark.parametrize("granularity", ["unstructured", "nm"])
@pytest.mark.parametrize("tau_normalize", [True, False])
def test_a_threshold_refresh_reads_nothing_back_to_the_host(monkeypatch, granularity, tau_normalize):
    """A refresh leaves its thresholds on the device: no `.item()`, `float()`, `bool()` or `.tolist()` of a tensor
    (on a GPU each is a sync, and a refresh did three per layer). The CPU stand-in for the GPU test's
    `set_sync_debug_mode("error")`; the thresholds still move with the weights."""
    kw = {"granularity": granularity, "sparsity": 0.5} if granularity == "nm" else {}
    model, pruner = _pdp(tau_normalize=tau_normalize, **kw)
    pruner.before_forward(10)
    before = {n: (s.t2.clone(), s.inv_tau.clone()) for n, s in pruner.soft.soft.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)

    def host_read(*args, **kwargs):
        raise AssertionError("a threshold refresh read a tensor back to the host")

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    pruner.refresh_thresholds(pruner.progress(20))
    monkeypatch.undo()
    for name, soft in pruner.soft.soft.items():
        assert not torch.equal(soft.t2, before[name][0]), name
        if tau_normalize:
            assert not torch.equal(soft.inv_tau, before[name][1]), name


# ------------------------------------------------------------------------------ τ scale and hardening
def _soft_phase(granularity: str, seed: int = 0, **kw):
    """A small net trained through PDP's soft phase, stopped right before the hardening step.

    Returns the model, the pruner and a fixed batch to measure the network's function on.
    """
    torch.manual_seed(seed)
    if granularity == "channel":
        model, shape = ResNetTiny(), (3, 8, 8)
        kw = {"sparsity": 0.5, "granularity": "channel", "allocation": "uniform", "keep_first_last": False, **kw}
    elif granularity == "nm":
        model, shape = MLP(), (16,)
        kw = {"granularity": "nm", "n": 2, "m": 4, **kw}
    else:
        model, shape = MLP(), (16,)
        kw = {"sparsity": 0.75, **kw}
    pruner = PDP(**{"warmup": 0.1, "end": 0.5, "finetune": 0.2, "threshold_every": 1, **kw})
    pruner.attach(model, 100, torch.zeros(1, *shape))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_plain(model, pruner, optimizer, batches(8, shape, seed=seed), min(pruner.harden_step, 100))
    return model, pruner, batches(1, shape, seed=99, batch=64)[0][0]


def _soft_masks(model: nn.Module, pruner: PDP, x: torch.Tensor) -> torch.Tensor:
    """Every unit's current soft mask: one per weight, or per channel (computed by a forward, as training)."""
    if pruner.granularity == "channel":
        model.eval()  # the masks do not depend on the mode; eval leaves the BN statistics alone
        with torch.no_grad():
            model(x)
        model.train()
        return torch.cat(pruner.soft.current()).detach()
    return torch.cat([pruner.soft_mask(name).reshape(-1) for name in pruner.weights.values()])


def _logit_change(model: nn.Module, pruner: PDP, x: torch.Tensor, train: bool = False) -> float:
    """Relative change of the logits on a fixed batch across the hardening step.

    Eval mode by default (BN running statistics: the function that ships with finetune=0); `train` uses the
    batch statistics, as the next training step does.
    """
    model.train(train)
    with torch.no_grad():
        before = model(x)
        pruner.before_forward(pruner.harden_step)
        assert pruner.hardened
        after = model(x)
    model.train()
    return float((after - before).norm() / before.norm())


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_one_tau_separates_kept_from_pruned_in_every_granularity(granularity):
    """τ is relative to the spread of the scores each threshold compares, so τ = 1 means the same for
    weights, channel scores and N:M groups.

    Relative to the layer's mean w², channel scores (means over whole filters) all sat at m ≈ 0.45–0.6 and
    the middle N:M ranks at 0.58 | 0.44: the median unit had |m − 0.5| ≈ 0.04 (channel), 0.08 (N:M), and
    kept and pruned channels differed by 0.12 on average.
    """
    model, pruner, x = _soft_phase(granularity, tau_final=1.0)  # the nominal τ all through
    m = _soft_masks(model, pruner, x)
    assert m[m >= 0.5].mean() - m[m < 0.5].mean() >= 0.2
    assert float((m - 0.5).abs().median()) >= 0.1  # at least half of the units have m outside (0.4, 0.6)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_annealing_takes_the_soft_masks_to_0_and_1_before_they_harden(granularity):
    """The paper's mask reaches 0/1 by itself (its absolute τ is small); ours anneals τ from `end` on."""
    model, pruner, x = _soft_phase(granularity)
    m = _soft_masks(model, pruner, x)
    assert m[m >= 0.5].mean() >= 0.9 and m[m < 0.5].mean() <= 0.1


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_hardening_leaves_the_function_unchanged(granularity):
    """The switch to the hard mask changed the logits by 6 % (unstructured), 7 % (2:4) and 38 % (channel;
    15× in eval mode, whose BN statistics saw the masked channels); annealed and folded, it is continuous."""
    model, pruner, x = _soft_phase(granularity)
    assert _logit_change(model, pruner, x) < 0.01


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_hardening_folds_the_soft_mask_into_the_kept_weights(granularity):
    """Without annealing many kept units still have m < 1: hardening keeps their effective value w·m
    (and zeroes the pruned ones) instead of jumping to w."""
    model, pruner, x = _soft_phase(granularity, tau_final=1.0)
    m = _soft_masks(model, pruner, x)  # (a forward: the channel masks of the current weights)
    assert m[m >= 0.5].min() < 0.9  # the fold has something to keep

    def effective() -> dict[str, torch.Tensor]:  # what the forward uses: the parametrized value where there is one
        out = {}
        for fqn in pruner.masks.masks:
            owner, _, name = fqn.rpartition(".")
            out[fqn] = getattr(model.get_submodule(owner), name).detach().clone()
        return out

    before = effective()
    pruner.harden()
    after = effective()
    for fqn, mask in pruner.masks.masks.items():
        assert torch.allclose(after[fqn], before[fqn] * mask, atol=1e-6), fqn


def test_a_run_resumed_after_its_last_step_hardens_like_the_uninterrupted_one():
    """With finetune=0 the mask hardens at fit end, after the last forward: a run restored from a checkpoint
    of its last step folds the same annealed masks (the annealing factor is pruner state, not a buffer)."""
    model, pruner, x = _soft_phase("unstructured", finetune=0.0)
    assert not pruner.hardened and pruner.tau_at(99) == pytest.approx(0.01)
    resumed_model = MLP()
    resumed = PDP(sparsity=0.75, warmup=0.1, end=0.5, finetune=0.0, threshold_every=1)
    resumed.attach(resumed_model, 100, torch.zeros(1, 16))
    resumed_model.load_state_dict(model.state_dict())
    resumed.load_state_dict(pruner.state_dict())
    pruner.on_fit_end()
    resumed.on_fit_end()
    for name in pruner.weights.values():
        assert torch.equal(getattr(resumed_model, name).weight, getattr(model, name).weight), name


def _report() -> None:
    """Print what the tests above assert on (separation at nominal and annealed τ; logit change)."""
    import inspect

    nominal = {"tau_final": 1.0} if "tau_final" in inspect.signature(PDP).parameters else {}
    for granularity in GRANULARITIES:
        for label, kw in (("nominal tau", nominal), ("defaults", {})):
            model, pruner, x = _soft_phase(granularity, **kw)
            m = _soft_masks(model, pruner, x)
            eval_change = _logit_change(model, pruner, x)
            model, pruner, x = _soft_phase(granularity, **kw)  # the same run again, measured in train mode
            train_change = _logit_change(model, pruner, x, train=True)
            print(
                f"{granularity:12s} {label:11s}  kept {float(m[m >= 0.5].mean()):.3f}  pruned "
                f"{float(m[m < 0.5].mean()):.3f}  median |m-0.5| {float((m - 0.5).abs().median()):.3f}  "
                f"logit change at hardening: eval {eval_change:.2%}, train {train_change:.2%}"
            )


if __name__ == "__main__":
    _report()


def test_global_allocation_sets_per_layer_budgets_from_one_magnitude_ranking():
    """The paper's rule: r_l from the global magnitude threshold at the end of warm-up. A layer whose weights
    are larger keeps more of them; a uniform allocation (every layer at `sparsity`) fails here."""
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        model.fc1.weight.mul_(1.5)  # fc1 ranks higher in the global ranking
    pruner = PDP(sparsity=0.75, warmup=0.0, end=0.5, finetune=0.2, threshold_every=1)
    pruner.attach(model, 40, torch.zeros(1, 16))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    flat = torch.cat([pruner.masks.param(f).detach().abs().reshape(-1) for f in pruner.weights])
    threshold = flat.kthvalue(round(0.75 * flat.numel())).values
    expected = {n: float((pruner.masks.param(f).detach().abs() <= threshold).float().mean()) for f, n in
                pruner.weights.items()}  # fmt: skip
    train_plain(model, pruner, optimizer, batches(8, (16,)), 40)
    assert pruner.hardened
    reached = pruner.layer_sparsity()
    assert expected["fc1"] < 0.65 and expected["fc2"] > 0.85  # far from uniform 0.75 in both directions
    for name, sparsity in expected.items():
        assert reached[name] == pytest.approx(sparsity, abs=0.02), name
