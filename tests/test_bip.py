"""BiP: the upper-level gradient (with its implicit term) against autograd, scores apart from the weights,
the exported mask as the trained top-k, the dense start and the fixed-mask fine-tune, every granularity,
resume, and the callback on a user's LightningModule."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.func import functional_call

from sparsetrain import SparsityCallback
from sparsetrain.granularity import nm_group_view, nm_mask
from sparsetrain.masking import find_mask_buffers
from sparsetrain.pruners import BiP
from tests.helpers.fits import fit
from tests.helpers.nets import MLP, Net, ResNetTiny, batches, train_plain

X_MLP, X_IMG = torch.zeros(1, 16), torch.zeros(1, 3, 8, 8)


def attached(model: nn.Module, steps: int = 20, example=X_MLP, lr: float = 0.05, **kw):
    """A BiP pruner on `model` with its weight optimizer (SGD, momentum, weight decay), fit started."""
    kw.setdefault("sparsity", 0.5)
    kw.setdefault("warmup", 0.0)
    kw.setdefault("finetune", 0.0)
    pruner = BiP(**kw)
    pruner.attach(model, steps, example)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    pruner.on_fit_start(optimizer, [])
    return pruner, optimizer


def one_backward(model: nn.Module, pruner: BiP, step: int, batch) -> None:
    pruner.before_forward(step)
    x, y = batch
    F.cross_entropy(model(x), y).backward()


def snapshot(tensors) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


# ------------------------------------------------------------------------------------------- the gradients
def test_upper_level_gradient_is_the_papers_implicit_gradient_computed_by_autograd():
    """s.grad = ∇_m ℓ(m⊙θ) − (1/γ)·∇_z ℓ(z) ⊙ ∇_θ ℓ(m⊙θ), each term from an explicit autograd graph."""
    gamma = 0.5
    model = MLP()
    pruner, optimizer = attached(model, gamma=gamma)
    batch = batches(1, (16,))[0]
    one_backward(model, pruner, 0, batch)
    pruner.before_optimizer_step(0, optimizer)

    # the same network written out, with m and θ as leaves and z = m⊙θ for the targeted layers (fc1, fc2)
    leaves = {}
    for name in ("fc1", "fc2"):
        fqn = f"{name}.weight"
        theta = pruner.masks.param(fqn).detach().clone().requires_grad_()
        m = pruner.masks.mask(fqn).clone().requires_grad_()
        z = m * theta
        z.retain_grad()
        leaves[fqn] = (theta, m, z)
    x, y = batch
    h = torch.relu(F.linear(x, model.fc0.weight.detach(), model.fc0.bias.detach()))
    h = torch.relu(F.linear(h, leaves["fc1.weight"][2], model.fc1.bias.detach()))
    h = torch.relu(F.linear(h, leaves["fc2.weight"][2], model.fc2.bias.detach()))
    F.cross_entropy(F.linear(h, model.head.weight.detach(), model.head.bias.detach()), y).backward()

    scores = dict(zip(pruner.score_keys, pruner.extra_parameters(), strict=True))
    for fqn, (theta, m, z) in leaves.items():
        implicit = -(1.0 / gamma) * z.grad * theta.grad
        assert implicit.abs().sum() > 0.05 * m.grad.abs().sum()  # not inert (the released code's is ~1e-4)
        assert torch.allclose(scores[fqn].grad, m.grad + implicit, rtol=1e-5, atol=1e-8), fqn
        # the lower level sees ∇_θ ℓ(m⊙θ): the weight's gradient after the pruner split it
        assert torch.allclose(pruner.masks.param(fqn).grad, theta.grad, rtol=1e-6, atol=1e-9), fqn


class GeluTiny(ResNetTiny):
    """ResNetTiny with GELU: GELU'(0) = 0.5, so a pruned (exactly zero) channel still passes gradient back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn1(self.conv1(x)))
        y = F.gelu(self.bn2(self.conv2(x)))
        x = F.gelu(x + self.bn3(self.conv3(y)))
        x = F.gelu(self.bn4(self.conv4(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_channel_score_gradient_is_the_derivative_in_the_channel_multipliers():
    """Channel scores: ∂ℓ/∂m_c with m_c scaling every output-side slice of the coupled group (the residual stream
    included), plus the implicit term summed over those entries; autograd through a plain copy of the network."""
    gamma = 0.5
    model = GeluTiny()
    with torch.no_grad():  # BN shifts as after training (at init β = 0, and a pruned channel's score gradient is ∝ β)
        for bn in (model.bn1, model.bn2, model.bn3, model.bn4):
            bn.bias.normal_(0.0, 0.1)
    pruner, optimizer = attached(model, example=X_IMG, granularity="channel", gamma=gamma, keep_first_last=False)
    batch = batches(1, (3, 8, 8), batch=8)[0]
    one_backward(model, pruner, 0, batch)
    pruner.before_optimizer_step(0, optimizer)
    keeps = [pruner.granularity_strategy.alive(pruner.masks, g).float().requires_grad_() for g in pruner.groups]

    plain = GeluTiny()
    live = pruner.masks.params  # the trainable tensors (parametrized originals), by plain FQN
    params = {n: (live[n] if n in live else model.get_parameter(n)) for n, _ in plain.named_parameters()}
    params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    z = dict(params)
    for gi, group in enumerate(pruner.groups):
        for piece in group.slices:
            if piece.dim == 0:
                v = torch.ones(params[piece.param].shape[0]).index_put((piece.index,), keeps[gi][piece.root])
                z[piece.param] = z[piece.param] * v.view(-1, *[1] * (params[piece.param].ndim - 1))
    for t in z.values():
        if not t.is_leaf:
            t.retain_grad()
    buffers = {k: b.clone() for k, b in model.named_buffers() if not k.endswith("_mask") and "row_keep" not in k}
    x, y = batch
    F.cross_entropy(functional_call(plain, {**z, **buffers}, (x,)), y).backward()

    scores = pruner.extra_parameters()
    pruned_with_gradient = 0
    for gi, group in enumerate(pruner.groups):
        implicit = torch.zeros(group.size)
        for piece in group.slices:
            if piece.dim == 0:
                entry = (z[piece.param].grad * params[piece.param].grad).reshape(len(params[piece.param]), -1)
                implicit.index_add_(0, piece.root, entry.sum(1)[piece.index])
        expected = keeps[gi].grad - implicit / gamma
        got = scores[gi].grad
        assert implicit.abs().sum() > 0.01 * keeps[gi].grad.abs().sum()
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7), group.name
        pruned_with_gradient += int((got[keeps[gi] == 0] != 0).sum())
    assert pruned_with_gradient > 0  # pruned channels are scored too (consumer columns are not masked in forward)


def test_set_to_none_gradients_and_a_targeted_layer_without_gradient():
    """PyTorch 2 leaves `.grad` None for a layer outside this step's graph; its scores must simply not move."""

    class Skips(MLP):
        def forward(self, x):
            return self.head(torch.relu(self.fc1(torch.relu(self.fc0(x)))))  # fc2 never used

    model = Skips()
    pruner, optimizer = attached(model)
    start = {f: pruner.masks.param(f).detach().abs() for f in pruner.weights}  # the scores' start, at step 0
    train_plain(model, pruner, optimizer, batches(4, (16,)), 6)  # optimizer.zero_grad(): set_to_none
    assert model.fc2.parametrizations.weight.original.grad is None
    after = pruner.trained_scores()
    assert pruner.score_steps == 6
    assert torch.equal(after["fc2.weight"], start["fc2.weight"])  # no momentum, no weight decay without a gradient
    assert not torch.allclose(after["fc1.weight"], start["fc1.weight"])


def test_a_layer_reached_on_some_steps_only_keeps_its_scores_still_on_the_others():
    """Momentum must not move the scores of a layer this step's graph skipped (a zero gradient would)."""

    class Sometimes(MLP):
        use_fc2 = True

        def forward(self, x):
            h = torch.relu(self.fc1(torch.relu(self.fc0(x))))
            return self.head(torch.relu(self.fc2(h)) if self.use_fc2 else h)

    model = Sometimes()
    pruner, optimizer = attached(model, score_momentum=0.9)
    data = batches(4, (16,))
    for step in range(6):
        model.use_fc2 = step % 2 == 0
        x, y = data[step % len(data)]
        optimizer.zero_grad()  # set_to_none
        one_backward(model, pruner, step, (x, y))
        pruner.before_optimizer_step(step, optimizer)
        optimizer.step()
        before = pruner.trained_scores()["fc2.weight"].clone()
        pruner.after_optimizer_step(step, optimizer)
        moved = not torch.equal(before, pruner.trained_scores()["fc2.weight"])
        assert moved == model.use_fc2, f"step {step}: fc2 scores moved={moved} with fc2 used={model.use_fc2}"


def test_after_every_step_the_mask_is_the_top_k_of_the_scores_just_stepped():
    """The next forward uses the projection of the current scores, not of last step's (a mask one step late)."""
    model = MLP()
    pruner, optimizer = attached(model, steps=20, sparsity=0.75, score_lr=5.0)
    data, changes = batches(4, (16,)), 0
    previous = {f: pruner.masks.masks[f].clone() for f in pruner.weights}
    for step in range(20):
        optimizer.zero_grad()
        one_backward(model, pruner, step, data[step % len(data)])
        pruner.before_optimizer_step(step, optimizer)
        optimizer.step()
        pruner.after_optimizer_step(step, optimizer)
        scores = pruner.trained_scores()
        flat = torch.cat([v.reshape(-1) for v in scores.values()])
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(round(0.25 * flat.numel())).indices] = True
        for (fqn, s), k in zip(scores.items(), keep.split([v.numel() for v in scores.values()]), strict=True):
            assert torch.equal(pruner.masks.masks[fqn].bool(), k.view(s.shape)), f"step {step}: {fqn}"
            changes += int(not torch.equal(pruner.masks.masks[fqn], previous[fqn]))
            previous[fqn] = pruner.masks.masks[fqn].clone()
    assert changes >= 3  # the masks really moved during the run


# ------------------------------------------------------------------------------------------- scores vs weights
def test_scores_never_share_storage_and_a_weight_step_leaves_them_unchanged():
    model = MLP()
    pruner, optimizer = attached(model)
    one_backward(model, pruner, 0, batches(1, (16,))[0])
    pruner.before_optimizer_step(0, optimizer)
    scores = pruner.extra_parameters()
    owned = {id(s) for s in scores}
    assert not owned & {id(p) for p in model.parameters()}  # a user's SGD(model.parameters()) never sees them
    for fqn, s in zip(pruner.weights, scores, strict=True):
        w = pruner.masks.param(fqn)
        assert s.untyped_storage().data_ptr() != w.untyped_storage().data_ptr()
    kept = snapshot(scores)
    optimizer.step()  # the lower level only (weight decay and momentum included)
    with torch.no_grad():
        for fqn in pruner.weights:
            pruner.masks.param(fqn).mul_(-3.0)
    assert all(torch.equal(a, b) for a, b in zip(kept, snapshot(scores), strict=True))


def test_score_step_moves_only_the_scores_never_weights_or_batchnorm():
    model = ResNetTiny()
    pruner, optimizer = attached(model, example=X_IMG)
    one_backward(model, pruner, 0, batches(1, (3, 8, 8), batch=8)[0])
    assert model.bn2.weight.grad is not None and model.bn2.weight.grad.abs().sum() > 0
    pruner.before_optimizer_step(0, optimizer)
    params, scores = snapshot(model.parameters()), snapshot(pruner.extra_parameters())
    pruner.after_optimizer_step(0, optimizer)  # the score step alone: the user's optimizer did not step
    assert all(torch.equal(a, b) for a, b in zip(params, snapshot(model.parameters()), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(scores, snapshot(pruner.extra_parameters()), strict=True))
    (group,) = pruner.score_optimizer.param_groups
    assert group["weight_decay"] == pytest.approx(1e-4) and group["momentum"] == pytest.approx(0.9)
    assert {id(p) for p in group["params"]} == {id(s) for s in pruner._scores}


# ------------------------------------------------------------------------------------------- the mask
@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_exported_mask_is_the_top_k_of_the_trained_scores(allocation):
    model = MLP()
    pruner, optimizer = attached(model, steps=30, sparsity=0.75, allocation=allocation, score_lr=2.0)
    train_plain(model, pruner, optimizer, batches(4, (16,)), 30)
    scores = pruner.trained_scores()
    if allocation == "global":
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        top = torch.zeros_like(flat, dtype=torch.bool)
        top[flat.topk(round(0.25 * flat.numel())).indices] = True
        expected = dict(zip(scores, top.split([s.numel() for s in scores.values()]), strict=True))
        expected = {k: v.view(scores[k].shape) for k, v in expected.items()}
    else:
        expected = {}
        for k, s in scores.items():
            keep = torch.zeros(s.numel(), dtype=torch.bool)
            keep[s.reshape(-1).topk(round(0.25 * s.numel())).indices] = True
            expected[k] = keep.view(s.shape)
    if allocation == "global":  # the global top-k is not a per-layer one here (a per-layer export would differ)
        assert len({int(k.sum()) for k in expected.values()}) > 1
    magnitude = {f: pruner.masks.param(f).detach().abs() for f in pruner.weights}
    assert any(not torch.equal(expected[f], _same_density_topk(magnitude[f], expected[f])) for f in expected)
    thetas = {f: pruner.masks.param(f).detach().clone() for f in pruner.weights}
    pruner.finalize()
    assert find_mask_buffers(model) == []
    plain = MLP()
    plain.load_state_dict(model.state_dict(), strict=True)
    for fqn, keep in expected.items():
        w = plain.get_parameter(fqn)
        assert torch.count_nonzero(w[~keep]) == 0, fqn
        assert torch.equal(w[keep], thetas[fqn][keep]), fqn  # kept weights exported as trained
    total = sum(k.numel() for k in expected.values())
    assert sum(int(k.sum()) for k in expected.values()) == round(0.25 * total)


def _same_density_topk(score: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    keep = torch.zeros(score.numel(), dtype=torch.bool)
    keep[score.reshape(-1).topk(int(like.sum())).indices] = True
    return keep.view(score.shape)


def test_the_mask_ranks_the_scores_themselves_not_their_magnitude():
    """A score driven far below zero means "prune" (the relaxation m ∈ [0, 1]); the code's |s| would keep it."""
    model = MLP()
    pruner, optimizer = attached(model)
    data = batches(2, (16,))
    train_plain(model, pruner, optimizer, data, 1)
    s = pruner.extra_parameters()[0]
    with torch.no_grad():
        s[0, :4] = -10.0 * s.abs().max()
    x, y = data[1]
    one_backward(model, pruner, 1, (x, y))
    pruner.before_optimizer_step(1, optimizer)
    optimizer.step()
    pruner.after_optimizer_step(1, optimizer)
    assert torch.count_nonzero(pruner.masks.mask(pruner.score_keys[0])[0, :4]) == 0


@pytest.mark.parametrize("score_init", ["magnitude", "normalized"])
def test_dense_warmup_then_scores_start_from_a_scaled_copy_of_the_weights_then(score_init):
    model = MLP()
    pruner, optimizer = attached(model, steps=20, warmup=0.25, score_init=score_init)  # bi-level from step 5
    data = batches(4, (16,))
    x = data[0][0]
    train_plain(model, pruner, optimizer, data, 5)
    assert pruner.phase == "dense" and pruner.score_steps == 0 and pruner.global_sparsity() == 0.0
    plain = MLP()
    state = {k.replace(".parametrizations.weight.original", ".weight"): v for k, v in model.state_dict().items()}
    plain.load_state_dict({k: v for k, v in state.items() if not k.endswith("_mask")}, strict=True)
    assert torch.equal(model(x), plain(x))  # dense: the parametrization is the identity
    weights = {f: pruner.masks.param(f).detach().abs() for f in pruner.weights}
    pruner.before_forward(5)
    top = max(float(w.max()) for w in weights.values()) if score_init == "normalized" else 1.0
    for fqn, s in pruner.trained_scores().items():
        assert torch.allclose(s, weights[fqn] / top)  # from the weights at step 5, not at attach
    flat = torch.cat([w.reshape(-1) for w in weights.values()])
    threshold = flat.topk(round(0.5 * flat.numel())).values.min()
    for fqn, w in weights.items():
        assert torch.equal(pruner.masks.mask(fqn) != 0, w >= threshold)  # first mask: global magnitude top-k


def test_finetune_fixes_the_mask_and_zeroes_pruned_weights():
    model = MLP()
    pruner, optimizer = attached(model, steps=20, finetune=0.25)  # mask fixed from step 15
    data = batches(4, (16,))
    train_plain(model, pruner, optimizer, data, 15)
    assert pruner.phase == "bilevel" and pruner.score_steps == 15 and not pruner.masks_weights
    masks, scores = snapshot(pruner.masks.mask_list()), snapshot(pruner.extra_parameters())
    for step in range(15, 20):
        x, y = data[step % len(data)]
        pruner.before_forward(step)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        pruner.before_optimizer_step(step, optimizer)
        optimizer.step()
        pruner.after_optimizer_step(step, optimizer)
        for fqn, mask in pruner.masks.masks.items():
            assert torch.count_nonzero(pruner.masks.param(fqn).detach()[mask == 0]) == 0
    assert pruner.phase == "finetune" and pruner.score_steps == 15 and pruner.masks_weights
    assert all(torch.equal(a, b) for a, b in zip(masks, snapshot(pruner.masks.mask_list()), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(scores, snapshot(pruner.extra_parameters()), strict=True))


def test_nm_masks_keep_n_of_every_m_by_the_trained_scores():
    model = MLP()
    pruner, optimizer = attached(model, sparsity=None, granularity="nm", score_lr=2.0)
    train_plain(model, pruner, optimizer, batches(4, (16,)), 20)
    for fqn, s in pruner.trained_scores().items():
        mask = pruner.masks.mask(fqn) != 0
        assert torch.all(nm_group_view(mask, 4).sum(dim=1) == 2)
        assert torch.equal(mask, nm_mask(s, 2, 4))


def test_channel_masks_are_whole_coupled_channels_and_never_the_first_convs_inputs():
    model = ResNetTiny()
    pruner, optimizer = attached(model, example=X_IMG, granularity="channel", keep_first_last=False, score_lr=2.0)
    train_plain(model, pruner, optimizer, batches(4, (3, 8, 8), batch=8), 12)
    keeps = [pruner.granularity_strategy.alive(pruner.masks, g).float() for g in pruner.groups]
    total = sum(g.size for g in pruner.groups)
    assert sum(int(k.sum()) for k in keeps) == round(0.5 * total)
    assert torch.equal(torch.cat(keeps), _channel_topk(pruner))  # the top-k of the trained channel scores
    for gi, group in enumerate(pruner.groups):
        for piece in group.slices:
            mask = pruner.masks.mask(piece.param).movedim(piece.dim, 0)[piece.index]
            alive = mask.reshape(len(piece.index), -1).any(dim=1)
            assert torch.equal(alive, keeps[gi][piece.root] != 0), (group.name, piece.param)
    conv1 = pruner.masks.masks.get("conv1.weight")
    assert conv1 is None or bool(conv1.movedim(1, 0).reshape(3, -1).any(dim=1).all())
    x = batches(1, (3, 8, 8), batch=8)[0][0]
    trained = model.eval()(x)
    pruner.finalize()
    assert torch.allclose(model(x), trained, atol=1e-5)  # consumer columns read zero: the export is the same net


def _channel_topk(pruner: BiP) -> torch.Tensor:
    flat = torch.cat([s for s in pruner.trained_scores().values()])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(round(0.5 * flat.numel())).indices] = True
    return keep.float()


# ------------------------------------------------------------------------------------------- state, callback
def test_resume_from_the_state_dicts_equals_the_uninterrupted_run():
    data = batches(4, (16,))

    def run(model, pruner, optimizer, steps):
        for step in steps:
            x, y = data[step % len(data)]
            pruner.before_forward(step)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            pruner.before_optimizer_step(step, optimizer)
            optimizer.step()
            pruner.after_optimizer_step(step, optimizer)

    torch.manual_seed(0)
    full = MLP()
    pruner, optimizer = attached(full, steps=20, warmup=0.2, score_momentum=0.9, score_lr=2.0)
    run(full, pruner, optimizer, range(20))

    torch.manual_seed(0)
    first = MLP()
    p1, o1 = attached(first, steps=20, warmup=0.2, score_momentum=0.9, score_lr=2.0)
    run(first, p1, o1, range(10))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": o1.state_dict(), "pruner": p1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = MLP()
    p2, o2 = attached(resumed, steps=20, warmup=0.2, score_momentum=0.9, score_lr=2.0)
    resumed.load_state_dict(saved["model"])
    o2.load_state_dict(saved["optim"])
    p2.load_state_dict(saved["pruner"])
    run(resumed, p2, o2, range(10, 20))
    for a, b in zip(pruner.extra_parameters(), p2.extra_parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(torch.equal(pruner.masks.masks[f], p2.masks.masks[f]) for f in pruner.weights)
    full_state, resumed_state = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(full_state[k], resumed_state[k]) for k in full_state)


class ZeroLoss(Net):
    """The same network and data; its training_step's loss carries no signal (the upper level must see that)."""

    def training_step(self, batch, batch_idx):
        return 0.0 * super().training_step(batch, batch_idx)


def test_upper_level_loss_is_the_modules_own_training_step_through_the_callback():
    trained = {}
    for cls in (Net, ZeroLoss):
        torch.manual_seed(0)
        module = cls()
        start = [module.net.get_parameter(f"{n}.weight").detach().abs() for n in ("conv2", "conv3", "conv4")]
        # bi-level for steps 3..8 of 12; the first and last layers kept dense; scores normalised (weight decay's
        # uniform shrink of the weights during the dense steps cancels) and not decayed
        pruner = BiP(
            sparsity=0.5, warmup=0.25, finetune=0.25, keep_first_last=True, score_weight_decay=0.0,
            score_init="normalized",
        )  # fmt: skip
        cb = SparsityCallback(pruner, finalize=False)
        fit(cb, module=module)
        assert pruner.score_steps == 6 and pruner.phase == "done"
        assert cb.summary["sparsity"] == pytest.approx(0.5, abs=1e-6)
        trained[type(module).__name__] = [s.clone() for s in pruner.extra_parameters()]
    assert list(pruner.weights) == ["conv2.weight", "conv3.weight", "conv4.weight"]
    # zero loss: weight decay shrinks every weight alike and no score gradient arrives: s is still |w₀|/max|w₀|
    top = max(float(w.max()) for w in start)
    assert all(torch.allclose(s, w / top, atol=1e-6) for s, w in zip(trained["ZeroLoss"], start, strict=True))
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(*trained.values(), strict=True))


def test_scores_in_the_users_optimizer_are_refused():
    pruner = BiP(sparsity=0.5, warmup=0.25)

    class Greedy(Net):
        def configure_optimizers(self):
            return torch.optim.SGD([*self.parameters(), *pruner.extra_parameters()], lr=0.1)

    with pytest.raises(ValueError, match="own parameters are in the training optimizer"):
        fit(SparsityCallback(pruner), module=Greedy())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"gamma": 0.0}, "pruner.gamma must be a number > 0"),
        ({"score_lr": -0.1}, "pruner.score_lr must be a number > 0"),
        ({"score_momentum": 1.0}, r"pruner.score_momentum must be in \[0, 1\)"),
        ({"score_weight_decay": -1.0}, "pruner.score_weight_decay must be a number >= 0"),
        ({"score_lr_schedule": "cosine"}, "pruner.score_lr_schedule must be one of step, constant"),
        ({"score_init": "random"}, "pruner.score_init must be one of magnitude, normalized"),
        ({"warmup": 0.6, "finetune": 0.4}, "BiP needs warmup < 1 - finetune"),
        ({"warmup": 1.0}, r"pruner.warmup must be in \[0, 1\)"),
        ({"begin": 0.2}, "pruner.begin is not used by bip"),
        ({"update_every": 5}, "pruner.update_every is not used by bip"),
    ],
)
def test_bad_configs_are_refused_in_one_line(kw, match):
    with pytest.raises(ValueError, match=match):
        BiP(sparsity=0.5, **kw)


def test_registered_and_described_with_every_key():
    from sparsetrain.pruners import list_pruners

    assert list_pruners()["bip"] is BiP
    described = BiP(sparsity=0.9).describe()
    assert described["gamma"] == 1.0 and described["score_lr"] == 0.1
    assert described["warmup"] == 0.3 and described["finetune"] == 0.2


# ------------------------------------------------------------------------------------------- the mask moves
def bilevel_churn(**kw) -> float:
    """Fraction of the mask changed over 60 bi-level steps of an MLP pretrained densely for 40 steps."""
    torch.manual_seed(0)
    model, data = MLP(), batches(8, (16,), batch=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for i in range(40):  # the paper prunes a trained network
        x, y = data[i % len(data)]
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    pruner, optimizer = attached(model, steps=60, sparsity=0.9, **kw)
    pruner.before_forward(0)
    start = {k: (m != 0).clone() for k, m in pruner.masks.masks.items()}
    train_plain(model, pruner, optimizer, data, 60)
    return pruner.churn(start)


def test_the_mask_moves_during_the_bilevel_phase_at_the_default_settings():
    """Measured on this setup: 8.9 % of the mask changes with the defaults (the released code's score
    optimizer: momentum 0.9, weight decay 1e-4, β step decay, scores at the weights' scale), 2.6 % with plain
    SGD on normalised scores (the variant whose mask barely moved on ResNet-20: 0.19 % over 40 steps). The
    floor, 5 %, sits between them: BiP degenerating to magnitude pruning plus fine-tuning fails here."""
    assert bilevel_churn() > 0.05
    old = {"score_momentum": 0.0, "score_weight_decay": 0.0, "score_lr_schedule": "constant"}
    old["score_init"] = "normalized"
    assert bilevel_churn(**old) < 0.05  # the floor separates the two (a check of the check)


def test_score_lr_decays_over_the_bilevel_phase_only():
    """β ×0.1 at 50 % and ×0.01 at 75 % of the bi-level phase (steps 10..29 here), whatever the weights' LR."""
    pruner, _ = attached(MLP(), steps=40, warmup=0.25, finetune=0.25)
    assert [pruner.score_lr_at(s) for s in (10, 19, 20, 24, 25, 29)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    constant, _ = attached(MLP(), steps=40, warmup=0.25, score_lr_schedule="constant")
    assert constant.score_lr_at(39) == 0.1


def test_the_switch_to_finetune_zeroes_pruned_weights_and_their_optimizer_state_before_the_next_forward():
    """During the bi-level phase pruned weights keep their values and momentum (a mask step may revive them);
    the fixed-mask fine-tune must start from exactly the masked network, without momentum pushing pruned
    weights (re-masking after the step alone would hide one forward on unmasked weights)."""
    model = MLP()
    pruner, optimizer = attached(model, steps=20, finetune=0.25)  # mask fixed from step 15
    train_plain(model, pruner, optimizer, batches(4, (16,)), 15)
    pruned = {fqn: mask == 0 for fqn, mask in pruner.masks.masks.items()}
    assert any(pruner.masks.param(f).detach()[p].abs().sum() > 0 for f, p in pruned.items())  # alive before
    pruner.before_forward(15)  # the switch, before step 15's forward
    for fqn, p in pruned.items():
        weight = pruner.masks.param(fqn)
        assert torch.count_nonzero(weight.detach()[p]) == 0, f"{fqn}: pruned weights reach the forward"
        momentum = optimizer.state[weight]["momentum_buffer"]
        assert torch.count_nonzero(momentum[p]) == 0, f"{fqn}: pruned weights keep their momentum"


def test_churn_is_logged_every_50_bilevel_steps_and_at_the_end_of_the_phase():
    model = MLP()
    pruner, optimizer = attached(model, steps=130, warmup=0.0)
    pruner.on_fit_start(optimizer, [])
    logged, data = [], batches(4, (16,))
    for step in range(130):
        x, y = data[step % len(data)]
        pruner.before_forward(step)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if "mask/churn" in pruner.before_optimizer_step(step, optimizer):
            logged.append(step)
        optimizer.step()
        pruner.after_optimizer_step(step, optimizer)
    assert logged == [0, 50, 100, 129]  # the start (0), every 50 steps, the last bi-level step
