"""The pruner contract, on every registered pruner, with a plain training loop."""

import math

import pytest
import torch

from sparsetrain.granularity import nm_group_view
from sparsetrain.pruners import list_pruners
from sparsetrain.pruners.base import Pruner
from tests.helpers.nets import MLP, ResNetTiny, batches, train_plain

STEPS = 40


def _run(key: str, steps: int = STEPS, model=None, shape=(16,), opt="sgd", **kw):
    model = model or MLP()
    kw.setdefault("sparsity", 0.8)
    if key in ("gmp", "granet"):
        kw.setdefault("update_every", 5)
    if key in ("rigl", "set"):
        kw.setdefault("update_every", 5)
    if key == "magnitude":
        kw.setdefault("begin", 0.25)
    pruner = list_pruners()[key](**kw)
    pruner.attach(model, steps, torch.zeros(1, *shape))
    total = pruner.fit_steps(steps)
    optimizer = (
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        if opt == "sgd"
        else torch.optim.AdamW(model.parameters(), lr=1e-2)
    )
    # every optimizer step is checked before the re-masking: a masked weight the step moved fails here
    losses = train_plain(model, pruner, optimizer, batches(8, shape), total, check_zero=True)
    pruner.on_fit_end()
    return model, pruner, losses


SPARSITY_TARGETED = sorted(k for k, cls in list_pruners().items() if "sparsity" not in cls.unused_keys)  # not LAPP


@pytest.mark.parametrize("key", SPARSITY_TARGETED)
@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_reaches_exact_sparsity_and_pruned_weights_stay_zero(key, opt):
    model, pruner, losses = _run(key, opt=opt)
    if key == "imp":  # the configured budget is one round: IMP trains it once dense and once per pruning round
        assert len(losses) == STEPS * (pruner.rounds + 1) and pruner.rounds == 8  # 0.8^8 < 0.2 at 20 % per round
    total = sum(pruner.masks.masks[f].numel() for f in pruner.weights)
    active = sum(int(pruner.masks.masks[f].count_nonzero()) for f in pruner.weights)
    assert active == round(0.2 * total)  # exact to the weight, whatever the allocation (ERK rounds per layer)
    assert pruner.global_sparsity() == 1 - active / total
    for fqn, m in pruner.masks.masks.items():
        assert torch.count_nonzero(pruner.masks.params[fqn][m == 0]) == 0
    assert math.isfinite(losses[-1])


@pytest.mark.parametrize("key", ["gmp", "magnitude", "imp"])
def test_global_allocation_is_exact_to_the_weight(key):
    _, pruner, _ = _run(key)
    total = sum(pruner.masks.masks[f].numel() for f in pruner.weights)
    active = sum(int(pruner.masks.masks[f].sum()) for f in pruner.weights)
    assert active == round(0.2 * total)


def test_uniform_allocation_is_exact_per_layer():
    _, pruner, _ = _run("gmp", allocation="uniform")
    for fqn in pruner.weights:
        m = pruner.masks.masks[fqn]
        assert int(m.sum()) == round(0.2 * m.numel())


@pytest.mark.parametrize("key", ["gmp", "magnitude", "granet"])
def test_nm_groups_are_exact(key):
    _, pruner, _ = _run(key, sparsity=None, granularity="nm", n=2, m=4)
    for fqn in pruner.weights:
        groups = nm_group_view(pruner.masks.masks[fqn] != 0, 4)
        assert torch.all(groups.sum(dim=1) == 2)
    assert pruner.global_sparsity() == pytest.approx(0.5)


def test_nm_conv_groups_run_along_input_channels():
    model = ResNetTiny(width=8)
    _, pruner, _ = _run("gmp", model=model, shape=(3, 8, 8), sparsity=None, granularity="nm", n=2, m=4)
    mask = pruner.masks.masks["conv2.weight"]
    per_position = (mask != 0).permute(0, 2, 3, 1).reshape(-1, 4)  # (out, kh, kw, in) groups of 4 inputs
    assert torch.all(per_position.sum(dim=1) == 2)


def test_gmp_masks_only_shrink_and_have_zero_churn():
    model = MLP()
    pruner = list_pruners()["gmp"](sparsity=0.9, update_every=2)
    pruner.attach(model, 30, torch.zeros(1, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.on_fit_start(opt, [])
    previous = {k: v.clone() for k, v in pruner.masks.masks.items()}
    for step, (x, y) in enumerate(batches(30, (16,))):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        metrics = pruner.before_optimizer_step(step, opt)
        if metrics:
            assert metrics["mask/churn"] == 0.0
        opt.step()
        pruner.after_optimizer_step(step, opt)
        for k, v in pruner.masks.masks.items():
            assert torch.all(v <= previous[k])
            previous[k] = v.clone()


def test_finalized_weights_load_into_the_plain_architecture():
    model, pruner, _ = _run("gmp")
    expected = int(pruner.masks.masks["fc1.weight"].sum())
    pruner.finalize()
    plain = MLP()
    plain.load_state_dict(model.state_dict(), strict=True)
    assert torch.count_nonzero(plain.fc1.weight) == expected


def _continue(model, pruner, optimizer, data, start: int, stop: int) -> list[float]:
    """Steps `start`..`stop` - 1 of a run (train_plain's loop from an arbitrary step); returns the churns."""
    pruner.on_fit_start(optimizer, [])
    churns = []
    for step in range(start, stop):
        x, y = data[step % len(data)]
        pruner.before_forward(step)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        metrics = pruner.before_optimizer_step(step, optimizer)
        if metrics:
            churns.append(metrics["mask/churn"])
        optimizer.step()
        pruner.after_optimizer_step(step, optimizer)
    return churns


@pytest.mark.parametrize(
    "make",
    [
        lambda: list_pruners()["set"](sparsity=0.8, update_every=5, seed=3),
        lambda: list_pruners()["rigl"](sparsity=0.8, update_every=5, regrow_end=1.0),
        lambda: list_pruners()["granet"](sparsity=0.8, update_every=5, growth="momentum"),
        lambda: list_pruners()["gmp"](sparsity=0.8, update_every=5, end=1.0),
    ],
    ids=["set", "rigl", "granet_momentum", "gmp"],
)
def test_a_restored_pruner_continues_exactly_as_the_uninterrupted_one(make):
    """State saved mid-run and restored into new objects (as a resumed process): the rest of the run is identical."""
    steps, cut, data = 24, 12, batches(8, (16,))

    def fresh():
        torch.manual_seed(0)
        model, pruner = MLP(), make()
        pruner.attach(model, steps, torch.zeros(1, 16))
        return model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    full = fresh()
    _continue(*full, data, 0, steps)
    model, pruner, optimizer = fresh()
    _continue(model, pruner, optimizer, data, 0, cut)
    saved = {"pruner": pruner.state_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict()}

    torch.manual_seed(123)  # the global RNG of the new process is elsewhere
    model, pruner = MLP(), make()
    pruner.load_state_dict(saved["pruner"])  # held until attach, as in Lightning
    pruner.attach(model, steps, torch.zeros(1, 16))
    model.load_state_dict(saved["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    optimizer.load_state_dict(saved["optimizer"])
    at_cut = {k: v.clone() for k, v in pruner.masks.masks.items()}
    churns = _continue(model, pruner, optimizer, data, cut, steps)

    assert churns  # update events happened after the cut...
    assert any(not torch.equal(at_cut[k], m) for k, m in pruner.masks.masks.items())  # ...and moved the masks
    assert pruner.events == full[1].events
    for k, m in full[1].masks.masks.items():
        assert torch.equal(pruner.masks.masks[k], m), k
    for (name, p), q in zip(model.named_parameters(), full[0].parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize(
    ("key", "kwargs", "match"),
    [
        ("gmp", {"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
        ("gmp", {"sparsity": 0.9, "granularity": "block"}, "granularity must be one of unstructured, channel, nm"),
        ("gmp", {"sparsity": 0.9, "allocation": "lamp"}, "allocation must be one of uniform, global, erk"),
        ("gmp", {"sparsity": 0.9, "schedule": "exp"}, "schedule must be one of oneshot, linear, cubic"),
        ("gmp", {"sparsity": 0.9, "begin": 0.6, "end": 0.5}, "must not be before"),
        ("gmp", {"sparsity": 0.9, "update_every": 0}, "update_every must be an integer >= 1"),
        ("gmp", {"sparsity": 0.9, "granularity": "nm"}, "contradicts granularity=nm"),
        ("gmp", {"granularity": "nm", "n": 4, "m": 4}, "0 < n < m"),
        ("gmp", {}, "sparsity is required"),
        ("gmp", {"sparsity": 0.5, "granularity": "channel", "allocation": "erk"}, "erk is defined for weights"),
        ("imp", {"sparsity": 0.9, "prune_fraction": 1.2}, "prune_fraction must be in"),
        ("imp", {"sparsity": 0.9, "rewinding": "both"}, "rewinding must be one of weights, lr"),
        ("magnitude", {"sparsity": 0.9, "schedule": "cubic"}, "pruner.schedule is not used by magnitude"),
        ("granet", {"sparsity": 0.9, "granularity": "channel"}, "granularity=channel is not defined"),
        ("granet", {"sparsity": 0.9, "init_density": 0.05}, "below the final density"),
        ("granet", {"sparsity": 0.9, "growth": "best"}, "growth must be one of gradient, random, momentum"),
        ("rigl", {"sparsity": 0.9, "regrow_fraction": 1.5}, r"regrow_fraction must be in \[0, 1\)"),
    ],
)
def test_bad_configs_fail_with_a_clear_message(key, kwargs, match):
    with pytest.raises(ValueError, match=match):
        list_pruners()[key](**kwargs)


def test_registry_matches_pruner_yaml_files():
    from pathlib import Path

    names = {p.stem for p in (Path(__file__).parent.parent / "conf" / "pruner").glob("*.yaml")}
    assert names == set(list_pruners())
    assert all(issubclass(cls, Pruner) for cls in list_pruners().values())
