"""The pruner protocol: one file + one YAML make a method; loss terms and owned parameters pass through it."""

from __future__ import annotations

import inspect
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from sparsetrain import SparsityCallback
from sparsetrain.pruner_keys import registry
from sparsetrain.pruners import Pruner, list_pruners
from tests.helpers.config import CONF_DIR, FAST
from tests.helpers.fits import fit
from tests.helpers.nets import Net

TOY = '''
"""A toy method: random masks at every event (the whole method is this file)."""
import torch
from sparsetrain.pruners.base import Pruner, register_pruner


@register_pruner("toy_random")
class ToyRandom(Pruner):
    """Random scores, so masks change at every event.

    Args:
        sparsity: Final fraction of zeros.
        temperature: Unused knob, to show a method key reaching the constructor from the CLI.
    """

    def __init__(self, *, sparsity=None, temperature: float = 1.0, **common):
        super().__init__(sparsity=sparsity, **common)
        self.temperature = temperature

    def scores(self):
        return {f: torch.rand(self.masks.param(f).shape, generator=self.generator).to(self.masks.param(f).device)
                for f in self.weights}
'''


def test_a_new_method_is_one_file_plus_one_yaml(tmp_path, monkeypatch):
    """The toy pruner lives outside the package, with its YAML in a second config dir: nothing else is edited."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sparsetrain.app import run

    (tmp_path / "toy_method.py").write_text(textwrap.dedent(TOY))
    (tmp_path / "conf" / "pruner").mkdir(parents=True)
    (tmp_path / "conf" / "pruner" / "toy_random.yaml").write_text(
        "_target_: toy_method.ToyRandom\nsparsity: 0.5\ntemperature: 1.0\nupdate_every: 2\nschedule: linear\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    GlobalHydra.instance().clear()
    overrides = [*FAST, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "+pruner=toy_random", "pruner.temperature=3"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    cfg.output_dir = str(tmp_path / "run")
    try:
        run(cfg)
        assert "toy_random" in list_pruners()
    finally:  # leave the registry as the package defines it
        registry.pop("toy_random", None)
        sys.modules.pop("toy_method", None)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["pruner"] == "toy_random"
    assert results["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert results["pruner_config"]["temperature"] == 3 and results["pruner_config"]["schedule"] == "linear"


def constructor_keywords(cls: type) -> set[str]:
    """Every keyword a pruner class accepts: its own and its bases' signatures, up to the shared keys."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for name, p in inspect.signature(init).parameters.items():
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                names.add(name)
    return names


@pytest.mark.parametrize("key", sorted(list_pruners()))
def test_every_constructor_keyword_is_settable_from_the_cli(key, compose):
    cfg = compose(f"+pruner={key}")
    cls = list_pruners()[key]
    missing = constructor_keywords(cls) - set(cfg.pruner) - set(cls.unused_keys)  # ignored keys are refused anyway
    assert not missing, f"conf/pruner/{key}.yaml lacks {sorted(missing)}: `pruner.<key>=` would fail in Hydra"


@pytest.mark.parametrize("key", sorted(list_pruners()))
def test_pruner_config_is_the_constructor_arguments_in_effect(key):
    cls = list_pruners()[key]
    pruner = cls(**({} if "sparsity" in cls.unused_keys else {"sparsity": 0.6}))
    described = pruner.describe()
    assert described["key"] == key
    assert set(described) - {"key"} == constructor_keywords(type(pruner))
    for name in ("sparsity", "allocation"):  # the value in effect; a key the method ignores is recorded unset
        assert described[name] == (None if name in cls.unused_keys else getattr(pruner, name)), name


class Threshold(Pruner):
    """A learnable-threshold toy: one trainable parameter, a loss term on it, and its own optimizer."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.t = torch.nn.Parameter(torch.tensor(1.0))
        self.own = torch.optim.SGD([self.t], lr=0.1)
        self.steps = 0

    def extra_parameters(self):
        return [self.t]

    def penalty(self):
        return (self.t - 3.0) ** 2  # pulls t towards 3 only through the training loss

    def after_optimizer_step(self, step, optimizer):
        super().after_optimizer_step(step, optimizer)
        self.own.step()
        self.own.zero_grad()
        self.steps += 1


def test_a_loss_term_and_owned_parameters_pass_through_the_callback():
    pruner = Threshold(sparsity=0.5, update_every=2)
    fit(SparsityCallback(pruner))
    assert pruner.steps == 12
    assert float(pruner.t) == pytest.approx(1 + 2 * (1 - 0.8**12), rel=1e-5)  # 12 SGD steps on (t − 3)² from 1


def test_a_loss_term_is_scaled_like_the_loss_under_gradient_accumulation():
    """Two micro-batches per optimizer step: each adds half the term's gradient, as Lightning halves the loss."""
    pruner = Threshold(sparsity=0.5, update_every=2)
    fit(SparsityCallback(pruner), accumulate_grad_batches=2)
    assert pruner.steps == 6
    assert float(pruner.t) == pytest.approx(1 + 2 * (1 - 0.8**6), rel=1e-5)  # not 0.6**6: counted once per step


def test_owned_parameters_in_the_training_optimizer_are_refused():
    pruner = Threshold(sparsity=0.5)

    class Greedy(Net):
        def configure_optimizers(self):
            return torch.optim.SGD([*self.parameters(), *pruner.extra_parameters()], lr=0.1)

    with pytest.raises(ValueError, match="own parameters are in the training optimizer"):
        fit(SparsityCallback(pruner), module=Greedy())


def test_a_second_optimizer_is_refused_in_one_line():
    class TwoOptimizers(Net):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.manual_backward(loss)
            for opt in self.optimizers():
                opt.step()
                opt.zero_grad()

        def configure_optimizers(self):
            half = len(list(self.parameters())) // 2
            params = list(self.parameters())
            return [torch.optim.SGD(params[:half], lr=0.1), torch.optim.SGD(params[half:], lr=0.1)]

    with pytest.raises(ValueError, match="drives one optimizer; configure_optimizers returned 2"):
        fit(SparsityCallback(list_pruners()["gmp"](sparsity=0.5)), module=TwoOptimizers())


def test_the_callback_and_the_app_name_no_method():
    root = Path(__file__).resolve().parent.parent / "sparsetrain"
    text = (root / "callback.py").read_text() + (root / "app.py").read_text()
    for key, cls in list_pruners().items():
        assert f'"{key}"' not in text and cls.__name__ not in text.replace("Pruner", ""), key


class SoftToy(Pruner):
    """A soft-mask toy on the public surface: the granularity's soft mask form, its thresholds ramped with the
    schedule at every step, hardened at the end (what PDP does, without its temperature annealing)."""

    def before_masks(self, targets):
        self.soft = self.granularity_strategy.soft_masks(self.model, targets, gain=1.0)
        self.budgets, self.hard = None, False

    @property
    def masks_weights(self):
        return self.hard  # soft: the masks only report until they harden

    def is_update_step(self, step):
        return False  # no hard decisions: the thresholds move in `before_forward`

    def before_forward(self, step):
        if self.hard or not self.first_forward_of_step(step):
            return
        if self.budgets is None:
            self.budgets = self.soft.budgets(self.masks, self.weights, self.sparsity, self.allocation)
            self.soft.set_enabled(True)
        fraction = self.schedule.sparsity_at(step) / self.sparsity
        self.soft.refresh(self.masks, self.weights, self.budgets, fraction, tau=1.0, normalize=True)

    def on_fit_end(self):
        self.soft.refresh(self.masks, self.weights, self.budgets, 1.0, tau=1.0, normalize=True)
        self.soft.set_enabled(False)
        self.hard = True
        self.masks.apply_to_weights()

    def finalize(self):
        self.masks.remove_with(lambda: self.soft.remove(self.weights))


class BiLevelToy(Pruner):
    """A bi-level toy on the public surface: scores per decision unit of the granularity in their own optimizer,
    stepped by the straight-through gradient ∇_w ℓ ⊙ w summed into the units, projected to the top-k."""

    def on_attach(self):
        units = self.granularity_strategy.unit_scores(self.masks, self.weights)
        self.unit_values = [torch.nn.Parameter(u.clone()) for u in units]
        self.own = torch.optim.SGD(self.unit_values, lr=0.05)
        self.moved = 0.0

    def extra_parameters(self):
        return self.unit_values

    def is_update_step(self, step):
        return False

    def before_optimizer_step(self, step, optimizer):
        per_entry = {f: self.masks.param(f).grad * self.masks.param(f).detach() for f in self.weights}
        units = self.granularity_strategy.to_units(per_entry, self.weights)
        for score, grad in zip(self.unit_values, units, strict=True):
            score.grad = None if grad is None else grad.view(score.shape)
        return super().before_optimizer_step(step, optimizer)

    @torch.no_grad()
    def after_optimizer_step(self, step, optimizer):
        before = [s.clone() for s in self.unit_values]
        self.own.step()
        self.moved += sum(float((s - b).abs().sum()) for s, b in zip(self.unit_values, before, strict=True))
        strategy = self.granularity_strategy
        strategy.apply(self.masks, self.weights, strategy.decide([s.detach() for s in self.unit_values], self.sparsity))
        super().after_optimizer_step(step, optimizer)


@pytest.mark.parametrize("granularity", ["unstructured", "nm", "channel"])
@pytest.mark.parametrize("toy", [SoftToy, BiLevelToy], ids=["soft", "bilevel"])
def test_toy_methods_of_each_mask_kind_run_on_the_public_surface(toy, granularity):
    """Outside the package, each mask kind is a few methods of the public protocol and the granularity's
    surface (no branch on a granularity's name), at every granularity, and reaches its target exactly."""
    kw = {"granularity": granularity} | ({} if granularity == "nm" else {"sparsity": 0.5})
    pruner = toy(update_every=2, **kw)
    cb = SparsityCallback(pruner)
    module = fit(cb)
    weights = [m.weight for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))][1:-1]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert not any(parametrize_names(module))  # finalized: the plain architecture
    assert zeros >= 0.45 if granularity != "channel" else zeros > 0.3, zeros
    if toy is BiLevelToy:
        assert pruner.moved > 0  # the scores learned


def parametrize_names(module: torch.nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if torch.nn.utils.parametrize.is_parametrized(m)]
