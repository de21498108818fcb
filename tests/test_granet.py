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
            for fqn in pruner.weights:
                grown = (pruner.masks.masks[fqn] != 0) & (before[fqn] == 0)
                if grown.any():
                    param = pruner.masks.params[fqn]
                    assert torch.all(param[grown] == 0)
                    for key in state_keys:
                        assert torch.all(opt.state[param][key][grown] == 0), key
                    checked += 1
            assert metrics["mask/churn"] > 0
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
