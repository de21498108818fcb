"""GraNet / RigL / SET: the prune-and-regrow machinery on constructed cases."""

import math

import pytest
import torch
from torch import nn

from sparsetrain.pruners import SET, GraNet, RigL
from tests.helpers.nets import MLP, batches, train_plain


class OneLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.body = nn.Linear(8, 8, bias=False)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def _attached(**kw):
    model = OneLayer()
    pruner = GraNet(sparsity=0.5, update_every=1, **kw)
    pruner.attach(model, 100, torch.zeros(1, 4))
    return model, pruner


def test_regrowth_takes_exactly_the_inactive_positions_with_largest_gradient():
    model, pruner = _attached()
    w = model.body.weight
    with torch.no_grad():
        w.copy_(torch.arange(1.0, 65.0).reshape(8, 8))  # |w| increases with the flat index
    mask = torch.zeros(64)
    mask[32:] = 1  # active: the 32 largest
    pruner.masks.set("body.weight", mask.reshape(8, 8))
    pruner.masks.apply_to_weights()
    grad = torch.zeros(64)
    grad[[3, 7, 11, 20]] = torch.tensor([5.0, -9.0, 7.0, 1.0])  # inactive positions with large |grad|
    grad[40] = 100.0  # active: not a candidate
    w.grad = grad.reshape(8, 8)
    pruner.prune_and_regrow(3 / 32)  # ceil(3/32 * 32) = 3 swapped
    new = pruner.masks.masks["body.weight"].reshape(-1)
    assert int(new.sum()) == 32  # density unchanged
    assert set(((new == 0) & (mask == 1)).nonzero().squeeze(1).tolist()) == {32, 33, 34}  # 3 smallest active dropped
    assert set(((new == 1) & (mask == 0)).nonzero().squeeze(1).tolist()) == {3, 7, 11}  # largest |grad| regrown


def test_a_weight_just_pruned_may_come_back_and_keeps_its_value():
    model, pruner = _attached()
    w = model.body.weight
    with torch.no_grad():
        w.copy_(torch.arange(1.0, 65.0).reshape(8, 8))
    mask = torch.zeros(64)
    mask[32:] = 1
    pruner.masks.set("body.weight", mask.reshape(8, 8))
    pruner.masks.apply_to_weights()
    grad = torch.zeros(64)
    grad[32] = 50.0  # the weakest active weight also has the largest gradient
    grad[5] = 10.0
    w.grad = grad.reshape(8, 8)
    pruner.prune_and_regrow(2 / 32)
    new = pruner.masks.masks["body.weight"].reshape(-1)
    assert new[32] == 1 and new[33] == 0 and new[5] == 1
    assert w.reshape(-1)[32] == 33.0  # unchanged, not "new"


@pytest.mark.parametrize(
    ("make_opt", "state_keys"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4), ["momentum_buffer"]),
        (lambda p: torch.optim.AdamW(p, lr=1e-2), ["exp_avg", "exp_avg_sq"]),
    ],
    ids=["sgd_momentum", "adamw"],
)
def test_regrown_weights_and_their_optimizer_state_start_at_zero(make_opt, state_keys):
    torch.manual_seed(0)
    model = MLP()
    pruner = RigL(sparsity=0.8, update_every=3, regrow_end=1.0)
    pruner.attach(model, 30, torch.zeros(1, 16))
    opt = make_opt(model.parameters())
    pruner.on_fit_start(opt, [])
    checked = 0
    for step, (x, y) in enumerate(batches(30, (16,))):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        before = {k: v.clone() for k, v in pruner.masks.masks.items()}
        if pruner.is_update_step(step) and step > 0:
            with torch.no_grad():  # stale values at every inactive position: regrowth must not inherit them
                for fqn, mask in before.items():
                    param = pruner.masks.params[fqn]
                    param[mask == 0] = 1.0
                    for key in state_keys:
                        opt.state[param][key][mask == 0] = 1.0
        metrics = pruner.before_optimizer_step(step, opt)
        if metrics and step > 0:
            n_grown = n_active = 0
            for fqn in pruner.weights:
                grown = (pruner.masks.masks[fqn] != 0) & (before[fqn] == 0)
                n_grown, n_active = n_grown + int(grown.sum()), n_active + int(pruner.masks.masks[fqn].sum())
                if grown.any():
                    param = pruner.masks.params[fqn]
                    assert torch.all(param[grown] == 0)
                    for key in state_keys:
                        assert torch.all(opt.state[param][key][grown] == 0), key
                    checked += 1
            assert metrics["mask/churn"] == pytest.approx(n_grown / n_active)
        opt.step()
        pruner.after_optimizer_step(step, opt)
    assert checked > 0


def test_an_update_event_on_a_step_the_amp_scaler_skips_moves_to_the_next_step():
    torch.manual_seed(0)
    model = MLP()
    pruner = GraNet(sparsity=0.9, update_every=4, end=0.5)
    pruner.attach(model, 40, torch.zeros(1, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.on_fit_start(opt, [])
    end = pruner.schedule.end_step
    assert pruner.schedule.is_event(end)
    for step, (x, y) in enumerate(batches(end + 2, (16,))):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        before = {k: v.clone() for k, v in pruner.masks.masks.items()}
        if step == end:  # an overflow: the scaler would skip this optimizer step
            next(iter(pruner.masks.params.values())).grad[0, 0] = float("inf")
        metrics = pruner.before_optimizer_step(step, opt)
        if step == end:
            assert metrics == {}
            assert all(torch.equal(before[k], m) for k, m in pruner.masks.masks.items())
            assert pruner.global_sparsity() < 0.9
            opt.zero_grad()  # what the scaler's skip amounts to
        if step == end + 1:  # the deferred `end` event: exactly on target
            assert metrics and pruner.global_sparsity() == pytest.approx(0.9, abs=1e-3)
        opt.step()
        pruner.after_optimizer_step(step, opt)


def test_granet_reaches_target_exactly_at_end_and_keeps_regrowing_after():
    model = MLP()
    pruner = GraNet(sparsity=0.9, update_every=4, end=0.5)
    pruner.attach(model, 41, torch.zeros(1, 16))
    end = pruner.schedule.end_step
    assert end == 20 and pruner.schedule.is_event(end)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.on_fit_start(opt, [])
    churn_after_end = []
    for step, (x, y) in enumerate(batches(41, (16,))):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        metrics = pruner.before_optimizer_step(step, opt)
        if step == end - 4:
            assert pruner.global_sparsity() < 0.9
        if step == end:
            assert pruner.global_sparsity() == pytest.approx(0.9, abs=1 / 1000)
        if metrics and step > end:
            churn_after_end.append(metrics["mask/churn"])
            assert pruner.global_sparsity() == pytest.approx(0.9, abs=1 / 1000)
        opt.step()
        pruner.after_optimizer_step(step, opt)
    assert churn_after_end and max(churn_after_end) > 0


def test_zeta_follows_the_cosine_decay():
    _, pruner = _attached(regrow_fraction=0.5, regrow_fraction_min=0.005)
    for t in (0, 25, 50, 75, 100):
        assert pruner.zeta(t) == pytest.approx(0.005 + 0.495 * 0.5 * (1 + math.cos(math.pi * t / 100)))
    rigl = RigL(sparsity=0.9)
    rigl.attach(OneLayer(), 100, torch.zeros(1, 4))
    assert rigl.zeta(0) == pytest.approx(0.3) and rigl.zeta(rigl.regrow_end_step) == pytest.approx(0.0)


def test_sparse_to_sparse_starts_from_an_erk_mask_at_init_density():
    model = MLP()
    pruner = GraNet(sparsity=0.9, init_density=0.5, update_every=5)
    pruner.attach(model, 50, torch.zeros(1, 16))
    assert pruner.global_sparsity() == pytest.approx(0.5, abs=1e-3)
    densities = {n: 1 - s for n, s in pruner.layer_sparsity().items()}
    assert densities["fc1"] == pytest.approx(densities["fc2"], abs=1e-2)  # same shapes, same ERK density
    train_plain(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05), batches(4, (16,)), 50)
    assert pruner.global_sparsity() == pytest.approx(0.9, abs=1e-3)


def test_set_regrows_at_random_with_the_pruners_own_seed():
    masks = []
    for _ in range(2):
        torch.manual_seed(123)  # the global RNG must not matter...
        model = MLP()
        torch.manual_seed(len(masks))  # ...different on purpose between the two runs
        pruner = SET(sparsity=0.8, update_every=5, seed=7)
        pruner.attach(model, 20, torch.zeros(1, 16))
        train_plain(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05), batches(4, (16,)), 20)
        masks.append(pruner.masks.masks["fc1.weight"].clone())
    assert torch.equal(masks[0], masks[1])


# ----------------------------------------------------------------------------------------- fidelity (issue 12)
def test_a_weight_removed_by_the_global_prune_and_regrown_restarts_at_zero_and_counts_as_churn():
    model, pruner = _attached(regrow_fraction=0.05)  # step 1 is both a prune event and a regrow event
    w = model.body.weight
    with torch.no_grad():
        w.copy_(torch.arange(1.0, 65.0).reshape(8, 8))  # |w| increases with the flat index
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.state[w]["momentum_buffer"] = torch.full_like(w, 7.0)
    pruner.on_fit_start(opt, [])
    assert pruner.schedule.is_event(1) and pruner.is_regrow_event(1)
    # the global prune at step 1 removes 2 weights (0 and 1); the per-layer swap then drops ceil(ζ·62) = 4 more
    # (2..5) and regrows the 4 candidates with the largest |grad|: 0 and 1 (just pruned), 4 and 5 (just dropped)
    grad = torch.zeros(64)
    grad[[0, 1, 4, 5, 2, 3]] = torch.tensor([100.0, 90.0, 50.0, 40.0, 1.0, 1.0])
    w.grad = grad.reshape(8, 8)
    metrics = pruner.before_optimizer_step(1, opt)
    mask = pruner.masks.masks["body.weight"].reshape(-1)
    assert mask[[0, 1, 4, 5]].tolist() == [1, 1, 1, 1] and mask[[2, 3]].tolist() == [0, 0]
    flat_w, flat_m = w.detach().reshape(-1), opt.state[w]["momentum_buffer"].reshape(-1)
    assert flat_w[[0, 1]].tolist() == [0.0, 0.0]  # pruned then regrown: a new weight, as the official code
    assert flat_m[[0, 1]].tolist() == [0.0, 0.0]
    assert flat_w[[4, 5]].tolist() == [5.0, 6.0]  # dropped and regrown by the same swap: never left (official)
    assert flat_m[[4, 5]].tolist() == [7.0, 7.0]
    assert metrics["mask/churn"] == pytest.approx(2 / 62)  # the two restarted weights, over 62 active


class Funnel(nn.Module):
    """Targeted layers of different shapes (first and last stay dense), so ERK and uniform differ."""

    def __init__(self) -> None:
        super().__init__()
        self.l0, self.l1, self.l2, self.head = nn.Linear(16, 32), nn.Linear(32, 64), nn.Linear(64, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.l2(self.l1(self.l0(x))))


@pytest.mark.parametrize(
    ("make", "density"),
    [
        (lambda **kw: RigL(sparsity=0.7, **kw), 0.3),
        (lambda **kw: SET(sparsity=0.7, **kw), 0.3),
        (lambda **kw: GraNet(sparsity=0.9, init_density=0.5, **kw), 0.5),
    ],
    ids=["rigl", "set", "granet_sparse_start"],
)
def test_the_random_sparse_start_honours_allocation(make, density):
    from sparsetrain.allocation import erk_densities

    layers = {}
    for allocation in ("uniform", "erk"):
        pruner = make(allocation=allocation)
        pruner.attach(Funnel(), 100, torch.zeros(1, 16))
        layers[allocation] = {n: 1 - s for n, s in pruner.layer_sparsity().items()}
    assert set(layers["uniform"]) == {"l1", "l2"}
    assert layers["uniform"]["l1"] == pytest.approx(density, abs=1 / 2048)
    assert layers["uniform"]["l2"] == pytest.approx(density, abs=1 / 1024)
    erk = erk_densities({"l1": torch.Size([64, 32]), "l2": torch.Size([16, 64])}, 1 - density)
    assert erk["l2"] > erk["l1"] + 0.1  # the two allocations really differ on this net
    assert layers["erk"] == pytest.approx(erk, abs=1e-3)


def test_global_allocation_is_rejected_for_a_random_start_and_is_erk_for_granet():
    for cls in (RigL, SET):
        with pytest.raises(ValueError, match="allocation must be one of uniform, erk; got 'global'"):
            cls(sparsity=0.9, allocation="global")
    granet = GraNet(sparsity=0.9, init_density=0.5)  # the paper's sparse-to-sparse run: ERK start, global pruning
    assert granet.allocation == "global"
    granet.attach(Funnel(), 100, torch.zeros(1, 16))
    erk = GraNet(sparsity=0.9, init_density=0.5, allocation="erk")
    erk.attach(Funnel(), 100, torch.zeros(1, 16))
    assert granet.layer_sparsity() == erk.layer_sparsity()


@pytest.mark.parametrize(("cls", "swapped"), [(GraNet, 4), (RigL, 3), (SET, 3)])
def test_drop_count_rounds_up_for_granet_and_truncates_for_rigl_and_set(cls, swapped):
    model = OneLayer()
    pruner = cls(sparsity=0.5, update_every=1, growth="gradient")
    pruner.attach(model, 100, torch.zeros(1, 4))
    w = model.body.weight
    with torch.no_grad():
        w.copy_(torch.arange(1.0, 65.0).reshape(8, 8))
    mask = torch.zeros(64)
    mask[32:] = 1
    pruner.masks.set("body.weight", mask.reshape(8, 8))
    pruner.masks.apply_to_weights()
    w.grad = torch.arange(64.0, 0.0, -1.0).reshape(8, 8)  # inactive positions have the largest gradients
    pruner.prune_and_regrow(0.1)  # 0.1·32 = 3.2: GraNet ceil → 4 (magnitude_death), RigL int() → 3
    new = pruner.masks.masks["body.weight"].reshape(-1)
    assert int(((new == 0) & (mask == 1)).sum()) == swapped
    assert int(new.sum()) == 32


def _momentum_run(total, stop=None, start=0, state=None, events=None):
    """RigL with growth=momentum on the MLP over `total` steps, run from `start` (restored from `state`) to `stop`."""
    torch.manual_seed(0)
    model = MLP()
    pruner = RigL(sparsity=0.8, update_every=4, regrow_end=1.0, growth="momentum")
    opt_state = None
    if state is not None:
        pruner.load_state_dict(state["pruner"])
        opt_state = state["opt"]
    pruner.attach(model, total, torch.zeros(1, 16))
    if state is not None:
        model.load_state_dict(state["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    pruner.on_fit_start(opt, [])
    data = batches(total, (16,))
    ema = {fqn: torch.zeros_like(pruner.masks.params[fqn]) for fqn in pruner.weights}
    for step in range(start, total if stop is None else stop):
        x, y = data[step]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for fqn in pruner.weights:  # the test's own EMA of the dense gradient (β = 0.9, as RigL's momentum)
            ema[fqn].mul_(0.9).add_(pruner.masks.params[fqn].grad, alpha=0.1)
        before = {k: v.clone() for k, v in pruner.masks.masks.items()}
        metrics = pruner.before_optimizer_step(step, opt)
        if metrics and events is not None:
            after = {k: v.clone() for k, v in pruner.masks.masks.items()}
            events.append((metrics["mask/churn"], before, after, {k: v.clone() for k, v in ema.items()}))
        opt.step()
        pruner.after_optimizer_step(step, opt)
    return model, pruner, opt


def test_momentum_growth_regrows_by_an_ema_of_the_dense_gradient():
    events = []
    _momentum_run(16, events=events)  # events at 4, 8, 12
    assert len(events) == 3
    for churn, before, after, ema in events:
        assert churn > 0  # the old |optimizer momentum| scores re-picked exactly the weights just dropped
        for fqn, new in after.items():
            was = before[fqn] != 0
            dropped = was & (new == 0)
            candidates = ~was | dropped
            regrown = (new != 0) & candidates
            assert int(regrown.sum()) == int(dropped.sum())
            assert not torch.equal(regrown, dropped)
            score = ema[fqn].abs()
            if regrown.any() and (candidates & ~regrown).any():  # regrown = the top |EMA| among the candidates
                assert score[regrown].min() >= score[candidates & ~regrown].max() - 1e-7


def test_momentum_growth_resumes_exactly():
    steps, cut = 16, 8  # the cut lands on an event: a cold EMA would rank by this batch's gradient alone
    _, full, _ = _momentum_run(steps)
    model_a, first, opt_a = _momentum_run(steps, stop=cut)
    state = {"pruner": first.state_dict(), "model": model_a.state_dict(), "opt": opt_a.state_dict()}
    assert set(state["pruner"]["grad_ema"]) == set(first.weights)
    _, resumed, _ = _momentum_run(steps, start=cut, state=state)
    for fqn in full.weights:
        assert torch.equal(resumed.masks.masks[fqn], full.masks.masks[fqn]), fqn


def test_momentum_ema_starts_at_zero_decays_at_0_9_and_skips_a_step_the_amp_scaler_skips():
    model = OneLayer()
    pruner = RigL(sparsity=0.5, update_every=50, growth="momentum")
    pruner.attach(model, 100, torch.zeros(1, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner.on_fit_start(opt, [])
    g = torch.randn(8, 8)
    model.body.weight.grad = torch.full((8, 8), float("inf"))
    pruner.before_optimizer_step(1, opt)  # an overflow: must not poison the average
    assert "body.weight" not in pruner.grad_ema or torch.isfinite(pruner.grad_ema["body.weight"]).all()
    model.body.weight.grad = g.clone()  # dense: inactive positions included
    pruner.before_optimizer_step(2, opt)
    assert torch.allclose(pruner.grad_ema["body.weight"], 0.1 * g)
    model.body.weight.grad = g.clone()
    pruner.before_optimizer_step(3, opt)
    assert torch.allclose(pruner.grad_ema["body.weight"], 0.19 * g)
