"""The official GraNet code's GMP on the project's run: same model, data, optimizer and LR schedule.

    .venv/bin/python experiments/reference_gmp/reference_gmp.py --core $GRANET_CORE seed=0 pruner.sparsity=0.98 \
        trainer.max_epochs=3 optim.schedule=multistep 'optim.milestones=[0.5,0.75]' data.augment=true \
        trainer.enable_model_summary=false \
        pruner.keep_first_last=false pruner.allocation=global pruner.begin=0 pruner.end=0.5 pruner.update_every=50 \
        logger=csv progress_bar=false hydra.run.dir=experiments/reference_gmp/runs/ref_s98_seed0

Arguments are `train.py`'s overrides (`trainer.enable_model_summary=false`: with `data.augment=true` Lightning's
model summary fails at fit start, in `train.py` too). Everything but `pruner.*` and `hydra.run.dir` builds the
run exactly as `train.py` does (`sparsetrain.app.prepare`: the seeded ResNet-20, `FashionMNISTDataModule`, the
`ClassificationModule` with its optimizer and step LR schedule, the Trainer from `cfg.trainer`); no sparsetrain
pruner is attached. Instead the official `Masking` class (`CIFAR/sparselearning/core.py` of VITA-Group/GraNet,
loaded from `--core` or `$GRANET_CORE`, see `setup.sh`) drives the masks in its GMP mode (`args.method='GMP'`):
`Masking.add_module(network)` masks every 2-D and 4-D parameter (every Conv and the Linear, first and last
included), and `Masking.step()` runs after every optimizer step, as the official `main.py` calls it.

How the run is wired to the official code, and nothing more:
- `Masking.step()` starts with `optimizer.step()`. Lightning steps the real optimizer (closure, LR schedule,
  step counting), so `Masking` gets a view of it whose `step()` does nothing and whose `state` is the real
  one's; `Masking.step()` runs from the real optimizer's step post-hook, i.e. right after the real step, so
  everything after its `optimizer.step()` line (masking weights and momentum, the prune events) is the
  official code's, in the official order.
- `pruner.begin` / `pruner.end` (fractions of all optimizer steps, as in sparsetrain) become the official
  `init_prune_epoch` / `final_prune_epoch` as exact fractions of an epoch (`Fraction`): the official CLI takes
  whole epochs only, its formulas take any number, and a float could round `int(...)` the other way.
- `init_density=1.0` (GMP starts dense; the official CLI's default 0.5 would start the cubic at 50 %),
  `final_density = 1 - pruner.sparsity`, `update_frequency = pruner.update_every`, `multiplier=1`,
  `rm_first=False`.
- The official code moves its masks with `.cuda()`; while `add_module` runs, `Tensor.cuda` sends them to the
  model's device instead (the CPU here).

Writes `results.json` (test/val accuracy, the reached sparsity from the official masks, per-layer densities,
every prune event) and `csv/metrics.csv` into `hydra.run.dir`. Prints a `done:` line like `train.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import sys
import time
from fractions import Fraction
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

log = logging.getLogger("reference_gmp")
PINNED_SHA256 = "17e69473a45b98e5fec5b01c8822375689d89d8d395e817bb35a3180c4df4d72"  # core.py at f338a24 (setup.sh)
PRUNER_KEYS = {"sparsity", "begin", "end", "update_every", "allocation", "keep_first_last", "schedule"}


# ------------------------------------------------------------------------------------------ the official code
def load_core(path: str | os.PathLike) -> tuple[ModuleType, str]:
    """Import the official `sparselearning/core.py` from a file; returns the module and the file's sha256."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: official core.py not found at {path} (see experiments/reference_gmp/setup.sh)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != PINNED_SHA256:
        log.warning("%s is not the pinned version (sha256 %s); results.json records its hash", path, digest)
    spec = importlib.util.spec_from_file_location("granet_official_core", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, digest


class SteppedByLightning:
    """What `Masking` holds as its optimizer: the real optimizer's state and groups; `step()` does nothing
    because `Masking.step()` is called right after Lightning stepped the real optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer

    @property
    def state(self):
        return self._optimizer.state

    @property
    def param_groups(self):
        return self._optimizer.param_groups

    def step(self, *args: Any, **kwargs: Any) -> None:
        return None


class EpochLength:
    """`len(train_loader)` for the official formulas (they only take its length)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


@contextlib.contextmanager
def cuda_calls_to(device: torch.device):
    """`Tensor.cuda()` (the official code's way to place masks) sends tensors to `device` instead."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self.to(device)
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def official_args(sparsity: float, begin: float, end: float, every: int, total: int, per_epoch: int) -> SimpleNamespace:
    """The official `args` for GMP mode with sparsetrain's schedule keys (fractions of all optimizer steps)."""
    return SimpleNamespace(
        method="GMP",
        sparse_init="GMP",  # unused in GMP mode (Masking.init branches on args.method first)
        fix=False,
        update_frequency=int(every),
        init_density=1.0,
        final_density=1.0 - sparsity,
        init_prune_epoch=Fraction(str(begin)) * total / per_epoch,
        final_prune_epoch=Fraction(str(end)) * total / per_epoch,
        multiplier=1,
        rm_first=False,
    )


class OfficialGMP(pl.Callback):
    """Hosts the official `Masking` (GMP mode) in a Lightning fit.

    Args:
        core: The imported official module.
        sparsity, begin, end, update_every: sparsetrain's pruner keys.
        snapshot: Keep a copy of every mask after each prune event (for `smoke.py`).
    """

    def __init__(
        self,
        core: ModuleType,
        sparsity: float,
        begin: float,
        end: float,
        update_every: int,
        snapshot: bool = False,
    ) -> None:
        self.core, self.sparsity, self.begin, self.end, self.every = core, sparsity, begin, end, update_every
        self.snapshot = snapshot
        self.masking = None
        self.events: list[dict[str, Any]] = []
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self._hook = None
        self._trainer: pl.Trainer | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        network = pl_module.model
        optimizer = trainer.optimizers[0]
        total, per_epoch = int(trainer.estimated_stepping_batches), int(trainer.num_training_batches)
        args = official_args(self.sparsity, self.begin, self.end, self.every, total, per_epoch)
        self.args = args
        decay = self.core.CosineDecay(0.5, total)  # the death-rate decay main.py builds; GMP mode ignores its value
        self.masking = self.core.Masking(
            SteppedByLightning(optimizer),
            prune_rate=0.5,
            death_mode="magnitude",
            growth_mode="gradient",
            redistribution_mode="none",
            prune_rate_decay=decay,
            args=args,
            train_loader=EpochLength(per_epoch),
        )
        with cuda_calls_to(next(network.parameters()).device):
            self.masking.add_module(network)
        self._trainer = trainer
        self._hook = optimizer.register_step_post_hook(lambda opt, a, kw: self._after_step())
        log.info(
            "official Masking (GMP) on %d tensors, %d optimizer steps, %d per epoch, init/final_prune_epoch=%s/%s",
            len(self.masking.masks),
            total,
            per_epoch,
            args.init_prune_epoch,
            args.final_prune_epoch,
        )

    def _after_step(self) -> None:
        before = self.active()
        self.masking.step()
        after = self.active()
        if after != before:
            step = self.masking.steps
            event = {"step": step, "sparsity": self.sparsity_now(), "layers": self.layer_density()}
            self.events.append(event)
            if self.snapshot:
                self.snapshots[step] = {k: v.detach().clone() for k, v in self.masking.masks.items()}
            for logger in self._trainer.loggers:
                logger.log_metrics({"sparsity/global": event["sparsity"]}, step=step)

    def active(self) -> int:
        return int(sum(int(m.count_nonzero()) for m in self.masking.masks.values()))

    def sparsity_now(self) -> float:
        total = sum(m.numel() for m in self.masking.masks.values())
        return 1.0 - self.active() / total

    def layer_density(self) -> dict[str, float]:
        return {
            name.removesuffix(".weight"): int(m.count_nonzero()) / m.numel() for name, m in self.masking.masks.items()
        }

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


# ------------------------------------------------------------------------------------------ the run
def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, str], str | None]:
    """(overrides for the project's config, pruner.* keys, hydra.run.dir)."""
    rest, pruner, run_dir = [], {}, None
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep:
            raise SystemExit(f"error: overrides are key=value, got {o!r}")
        if key == "hydra.run.dir":
            run_dir = value
        elif key.startswith("pruner.") or key.startswith("+pruner"):
            name = key.removeprefix("pruner.")
            if name not in PRUNER_KEYS:
                raise SystemExit(f"error: the official GMP takes pruner.{sorted(PRUNER_KEYS)}, not {key}")
            pruner[name] = value
        else:
            rest.append(o)
    return rest, pruner, run_dir


def schedule_keys(pruner: dict[str, str]) -> dict[str, Any]:
    """sparsetrain's GMP keys for the official code; settings it cannot express are refused."""
    if "sparsity" not in pruner:
        raise SystemExit("error: pruner.sparsity is required")
    if pruner.get("allocation", "global") != "global":
        raise SystemExit("error: the official GMP mode is one global magnitude ranking: pruner.allocation=global")
    if pruner.get("keep_first_last", "false").lower() != "false":
        raise SystemExit(
            "error: the official GMP masks every Conv/Linear (rm_first matches other layer names): "
            "pass pruner.keep_first_last=false"
        )
    if pruner.get("schedule", "cubic") != "cubic":
        raise SystemExit("error: the official GMP schedule is cubic")
    return {
        "sparsity": float(pruner["sparsity"]),
        "begin": float(pruner.get("begin", 0.0)),
        "end": float(pruner.get("end", 0.5)),
        "update_every": int(pruner.get("update_every", 50)),
    }


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def make_trainer(parts: dict[str, Any], callbacks: list[pl.Callback], run_dir: Path) -> pl.Trainer:
    """The Trainer `train.py` builds from `cfg.trainer`, with `callbacks`, the run's loggers, no checkpoints."""
    from sparsetrain.app import short_budget
    from sparsetrain.loggers import build_loggers

    cfg = parts["cfg"]
    run_dir.mkdir(parents=True, exist_ok=True)
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=build_loggers(cfg, run_dir),
        default_root_dir=str(run_dir),
        enable_progress_bar=cfg.get("progress_bar", True),
        enable_checkpointing=False,
        **short_budget(cfg.trainer),
    )


def build(overrides: list[str], callbacks: list[pl.Callback], run_dir: Path) -> tuple[pl.Trainer, dict[str, Any]]:
    """The project's run (`sparsetrain.app.prepare`: seed, data, model, module) and its Trainer."""
    from sparsetrain.app import prepare

    parts = prepare(compose(overrides))
    return make_trainer(parts, callbacks, run_dir), parts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", default=os.environ.get("GRANET_CORE"), help="official core.py ($GRANET_CORE)")
    parser.add_argument("overrides", nargs="*", help="train.py overrides (pruner.* as for +pruner=gmp)")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not ns.core:
        raise SystemExit("error: pass --core PATH or set GRANET_CORE (see experiments/reference_gmp/setup.sh)")
    rest, pruner, run_dir = split_overrides(ns.overrides)
    keys = schedule_keys(pruner)
    if run_dir is None:
        raise SystemExit("error: pass hydra.run.dir=DIR (where results.json goes)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    core, digest = load_core(ns.core)
    cb = OfficialGMP(core, **keys)
    trainer, parts = build(rest, [cb], run_dir)
    module, dm, cfg = parts["module"], parts["datamodule"], parts["cfg"]
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_time = time.perf_counter() - start
    val_acc = trainer.callback_metrics.get("val/acc")
    test_acc = float(trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"])
    masks = cb.masking.masks
    weights = dict(module.model.named_parameters())
    zeros = sum(int((weights[n] == 0).sum()) for n in masks)
    total = sum(m.numel() for m in masks.values())
    results = {
        "side": "reference",
        "pruner": "official_gmp",
        "model": cfg.model.name,
        "data": dm.name,
        "seed": cfg.seed,
        "test_acc": test_acc,
        "val_acc": float(val_acc) if val_acc is not None else None,
        "sparsity_target": keys["sparsity"],
        "sparsity": cb.sparsity_now(),
        "weight_zeros_fraction": zeros / total,
        "params_targeted": total,
        "params_nonzero_targeted": cb.active(),
        "train_time_s": round(train_time, 2),
        "steps": int(trainer.global_step),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "schedule": {
            **keys,
            "init_prune_epoch": str(cb.args.init_prune_epoch),
            "final_prune_epoch": str(cb.args.final_prune_epoch),
            "init_density": cb.args.init_density,
        },
        "official_core_sha256": digest,
        "official_core_pinned": digest == PINNED_SHA256,
        "overrides": ns.overrides,
        "events": cb.events,
        "layers": {
            name.removesuffix(".weight"): {"shape": list(m.shape), "density": int(m.count_nonzero()) / m.numel()}
            for name, m in masks.items()
        },
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    log.info(
        "done: test_acc=%.4f sparsity=%.4f steps=%d events=%d train_time=%.0fs -> %s",
        test_acc,
        results["sparsity"],
        results["steps"],
        len(cb.events),
        train_time,
        run_dir / "results.json",
    )


if __name__ == "__main__":
    main()
