"""`model.compile`: every pruner × granularity trains a `torch.compile`d network, recompiling only when the
forward's structure changes, never at a mask update.

Each cell fits `ResNetTiny` through `ClassificationModule(compile=True)` for 12 optimizer steps with a validation
after every epoch, on the cheap `aot_eager` backend with `dynamic=False`, so a Python scalar in the forward that
changes (a threshold, a temperature) recompiles at every change instead of turning symbolic after one: such a
method would exceed the bound. Checked per cell:

- the compiled network computes what the eager one computes, at every validation (soft masks, hooks and
  parametrizations included: a stale graph would differ);
- masked weights are exactly zero at the end of training where the method enforces its masks on the weights;
- dynamo compiles each frame at most 2·(1 + mask events) times (train and eval mode per phase), and methods whose
  forward carries no mask (hard masks live in the weights) compile exactly twice whatever their events.

One slow cell runs the default inductor backend.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch._dynamo
from pytorch_lightning.callbacks import ModelCheckpoint
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters
from torch._guards import CompileContext

from sparsetrain import SparsityCallback
from sparsetrain.module import ClassificationModule
from tests.helpers.callbacks import StopAfterFirstEpoch
from tests.helpers.fits import quiet_trainer
from tests.helpers.matrix import SLIMMING, cells, make
from tests.helpers.nets import ResNetTiny, loader

# Methods whose forward carries their masks (parametrizations, forward hooks): a phase switch (a soft mask
# enabled, hardened, a network slimmed) changes the traced code and recompiles. The others keep their masks in
# the weights only.
MASKS_IN_FORWARD = frozenset({"pdp", "bip", "lapp"})


class Compiles:
    """A dynamo backend (`base` underneath) recording the compile id of every graph it compiles."""

    def __init__(self, base: str = "aot_eager") -> None:
        self.base, self.ids = lookup_backend(base), []

    def __call__(self, gm: torch.fx.GraphModule, inputs: list[Any]) -> Callable:
        self.ids.append(CompileContext.current_compile_id())
        return self.base(gm, inputs)

    def per_frame(self) -> Counter:
        return Counter(i.frame_id for i in self.ids)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """No graph, cache entry or counter from another test; a recompile limit that never hides a recompile."""
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(recompile_limit=64, accumulated_recompile_limit=256):
        yield
    torch._dynamo.reset()


class Checks(pl.Callback):
    """Training losses; at every validation batch, compiled logits against eager ones; at the end of training,
    masked weights (list after `SparsityCallback`: it runs before, so the masks are not folded yet)."""

    def __init__(self, cb: SparsityCallback | None) -> None:
        self.cb, self.losses, self.compared, self.revived = cb, [], 0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        x = batch[0]
        torch.testing.assert_close(pl_module.network()(x), pl_module.model(x), rtol=1e-5, atol=1e-5)
        self.compared += 1

    def on_train_end(self, trainer, pl_module) -> None:
        pruner = self.cb.pruner if self.cb is not None else None
        if pruner is not None and pruner.masks_weights and pruner.masks is not None:
            masks = pruner.masks
            self.revived = sum(int(masks.params[f].detach()[m == 0].count_nonzero()) for f, m in masks.masks.items())


def compiled_module(compiles: Compiles, **options: Any) -> ClassificationModule:
    return ClassificationModule(
        ResNetTiny(width=8),
        4,
        {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4},
        compile=True,
        compile_options={"backend": compiles, "dynamic": False, **options},
    )


def compiled_fit(key: str | None, granularity: str, compiles: Compiles, **trainer_kw: Any):
    """Fit a compiled `ResNetTiny` 3 epochs (12 steps), validating each epoch; (module, pruner, checks)."""
    module = compiled_module(compiles)
    pruner = make(key, granularity) if key is not None else None
    cb = SparsityCallback(pruner) if pruner is not None else None
    checks = Checks(cb)
    trainer = quiet_trainer(
        max_epochs=3, num_sanity_val_steps=0, limit_val_batches=1, callbacks=[*([cb] if cb else []), checks]
    )
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader(), **trainer_kw)
    return module, pruner, checks


def check_cell(key: str, granularity: str, compiles: Compiles) -> None:
    module, pruner, checks = compiled_fit(key, granularity, compiles)
    assert len(checks.losses) >= 12 and all(torch.isfinite(torch.tensor(checks.losses)))  # IMP: more rounds
    assert checks.compared == len(checks.losses) // 4  # one validation batch per epoch, compiled == eager
    if key not in SLIMMING:
        assert checks.revived == (0 if pruner.masks_weights else None)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == len(compiles.ids) > 0  # the steps ran the compiled network
    per_frame = compiles.per_frame()
    print(f"{key}-{granularity}: events {pruner.events}, graphs {graphs}, per frame {dict(per_frame)}")
    bound = 2 * (1 + pruner.events)
    assert max(per_frame.values()) <= bound, (dict(per_frame), pruner.events)
    if key not in MASKS_IN_FORWARD:
        assert graphs == 2, f"{key} recompiled at a mask update: {graphs} graphs for train + eval"


def compile_cells() -> list:
    """The matrix's cells, with PDP's channel cell in the default suite too: its thresholds are Python floats
    eagerly and a published tensor compiled (`granularity.channel_soft`), the one path of its own."""
    out = cells()
    for i, param in enumerate(out):
        if param.values == ("pdp", "channel"):
            out[i] = pytest.param(*param.values, id=param.id)
    return out


@pytest.mark.parametrize(("key", "granularity"), compile_cells())
def test_every_cell_trains_compiled_and_recompiles_only_when_the_forward_changes(key, granularity):
    check_cell(key, granularity, Compiles())


def test_dense_compiled_fit_compiles_train_and_eval_once():
    compiles = Compiles()
    _, _, checks = compiled_fit(None, "unstructured", compiles)
    assert checks.compared == 3
    assert len(compiles.ids) == 2


@pytest.mark.slow
def test_pdp_cell_on_the_default_inductor_backend():
    """The default backend: PDP's soft mask (the forward's own ops) through inductor's generated kernels."""
    compiles = Compiles("inductor")
    module, pruner, checks = compiled_fit("pdp", "unstructured", compiles)
    assert checks.compared == 3 and pruner.events == 1
    assert max(compiles.per_frame().values()) <= 2 * (1 + pruner.events)


def test_compiled_module_keeps_the_network_keys_and_pickles(tmp_path):
    """No `_orig_mod.` in `state_dict` or checkpoints; an uncompiled module loads them strictly."""
    compiles = Compiles()
    module = compiled_module(compiles)
    plain_keys = set(ClassificationModule(ResNetTiny(width=8), 4).state_dict())
    trainer = quiet_trainer(
        max_steps=2,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)],
    )
    trainer.fit(module, train_dataloaders=loader())
    assert "_compiled" in module.__dict__ and not any("_orig_mod" in k for k in module.state_dict())
    assert set(module.state_dict()) == plain_keys
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    ClassificationModule(ResNetTiny(width=8), 4).load_state_dict(ckpt["state_dict"], strict=True)
    clone = copy.deepcopy(module)  # the compiled wrapper is dropped, rebuilt at the clone's next step
    assert "_compiled" not in clone.__dict__ and clone.network() is not module.network()


def test_compile_is_off_by_default_and_must_be_a_bool():
    module = ClassificationModule(ResNetTiny(width=8), 4)
    assert module.network() is module.model
    with pytest.raises(ValueError, match="model.compile must be true or false"):
        ClassificationModule(ResNetTiny(width=8), 4, compile="yes")


@pytest.mark.slow
def test_resumed_compiled_pdp_channel_run_recompiles_only_at_its_phases(tmp_path):
    """A resume restores PDP's channel thresholds as floats; the next refresh republishes them as a tensor."""
    compiles = Compiles()
    module = compiled_module(compiles)
    first = quiet_trainer(
        max_epochs=3,
        enable_checkpointing=True,
        callbacks=[
            SparsityCallback(make("pdp", "channel")),
            ModelCheckpoint(dirpath=tmp_path, save_last=True),
            StopAfterFirstEpoch(),
        ],
    )
    first.fit(module, train_dataloaders=loader())
    torch._dynamo.reset()
    compiles = Compiles()
    pruner = make("pdp", "channel")
    checks = Checks(SparsityCallback(pruner))
    resumed = quiet_trainer(max_epochs=3, num_sanity_val_steps=0, limit_val_batches=1, callbacks=[checks.cb, checks])
    resumed.fit(
        compiled_module(compiles),
        train_dataloaders=loader(),
        val_dataloaders=loader(),
        ckpt_path=tmp_path / "last.ckpt",
    )
    assert len(checks.losses) == 8 and checks.compared == 2
    assert max(compiles.per_frame().values()) <= 2 * (1 + pruner.events)


def test_model_compile_runs_through_the_config(compose):
    from sparsetrain.app import run

    cfg = compose(
        "+pruner=gmp", "pruner.sparsity=0.5", "++model.compile=true", "++model.compile_options.backend=aot_eager"
    )
    run(cfg)
    assert counters["stats"]["unique_graphs"] >= 1
