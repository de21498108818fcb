"""Build a run from a composed Hydra config: data, model, pruner, trainer; fit, finalize, test, report."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import CSVLogger

from sparsetrain.accounting import account, module_flops
from sparsetrain.callback import SparsityCallback, pruner_in_checkpoint
from sparsetrain.config import validate
from sparsetrain.export import export_network
from sparsetrain.models import build_model
from sparsetrain.module import ClassificationModule
from sparsetrain.restore import run_arch
from sparsetrain.targets import select_targets

log = logging.getLogger("sparsetrain")
DENSE_REFERENCE = Path(__file__).resolve().parent.parent / "experiments" / "dense_reference.json"


def output_dir(cfg: DictConfig) -> Path:
    """The Hydra run directory (honours `hydra.run.dir`), or `cfg.output_dir` outside Hydra."""
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def wandb_mode() -> str:
    """`online` only when the user configured an API key; never blocks without a network."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """CSV always; W&B when configured (offline unless a key is set)."""
    loggers: list = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is not None and wandb_cfg.get("enabled", True):
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(
            WandbLogger(
                project=wandb_cfg.get("project", "sparsetrain"),
                name=wandb_cfg.get("name"),
                save_dir=str(run_dir),
                offline=wandb_mode() != "online",
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


def reference_key(model: str, data: str, epochs: Any, batch_size: Any, optim: str, lr: float) -> str:
    """Key of a dense reference result: the budget and the recipe it was trained with."""
    return f"{model}/{data}/{epochs}ep/b{batch_size}/{optim}-lr{lr:g}"


def dense_reference(cfg: DictConfig, data: str, extended: bool = False) -> float | None:
    """Dense test accuracy of the same budget and recipe from the committed reference (mean over seeds), if any.

    The reference is for whole epochs of one recipe (batch size, optimizer, LR); a run cut short
    (`max_steps`, `limit_train_batches`), trained differently, or `extended` beyond its budget by the pruner
    (several rounds) has none.
    """
    trainer_cfg = cfg.trainer
    if not DENSE_REFERENCE.exists() or extended:
        return None
    if trainer_cfg.get("max_steps", -1) not in (-1, None) or trainer_cfg.get("limit_train_batches") not in (None, 1.0):
        return None
    key = reference_key(
        cfg.model.name, data, trainer_cfg.get("max_epochs"), cfg.data.get("batch_size"), cfg.optim.name, cfg.optim.lr
    )
    return json.loads(DENSE_REFERENCE.read_text()).get(key)


def check_resume(ckpt_path: str, pruner_key: str | None) -> None:
    """Fail in one line when a checkpoint is resumed with another pruner than the one that wrote it.

    Hydra does not restore a run's config from its checkpoint, so the user repeats the overrides; a missing
    or different `+pruner=` would otherwise fail deep inside the state-dict load (or, with the same mask
    buffers, silently continue another method's masks).
    """
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    wrote = pruner_in_checkpoint(torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True))
    if wrote != pruner_key:
        raise ValueError(
            f"ckpt_path was written by a run with {f'+pruner={wrote}' if wrote else 'no pruner'}, but this run has "
            f"{f'+pruner={pruner_key}' if pruner_key else 'none'}: repeat the original run's overrides when resuming"
        )


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate everything a run needs, validating before any training starts."""
    cfg = validate(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    pruner = instantiate(cfg.pruner) if cfg.get("pruner") else None  # bad pruner keys fail before any data loads
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    datamodule.prepare_data()
    network = build_model(
        cfg.model.source,
        cfg.model.name,
        in_chans=datamodule.in_chans,
        num_classes=datamodule.num_classes,
        image_size=datamodule.image_size,
        **cfg.model.kwargs,
    )
    module = ClassificationModule(
        network,
        datamodule.num_classes,
        OmegaConf.to_container(cfg.optim, resolve=True),
        label_smoothing=cfg.get("label_smoothing", 0.0),
        example_input_shape=(datamodule.in_chans, datamodule.image_size, datamodule.image_size),
    )
    return {"cfg": cfg, "datamodule": datamodule, "network": network, "pruner": pruner, "module": module}


def run(cfg: DictConfig, callbacks: list[pl.Callback] | None = None) -> float:
    """Train, finalize, test and write `results.json`; returns the final `val/acc` for sweepers.

    Args:
        cfg: The composed config (`conf/train.yaml`).
        callbacks: Extra Lightning callbacks for this run.
    """
    parts = prepare(cfg)
    cfg, dm, network, pruner, module = (parts[k] for k in ("cfg", "datamodule", "network", "pruner", "module"))
    run_dir = output_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    sparsity_cb = SparsityCallback(pruner) if pruner is not None else None
    callbacks = [
        *(callbacks or []),
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"), filename="best", monitor="val/acc", mode="max", save_last=True
        ),
        LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.get("progress_bar", True):
        callbacks.append(RichProgressBar())
    if sparsity_cb is not None:
        callbacks.append(sparsity_cb)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=build_loggers(cfg, run_dir),
        default_root_dir=str(run_dir),
        enable_progress_bar=cfg.get("progress_bar", True),
    )
    if cfg.get("ckpt_path"):
        check_resume(cfg.ckpt_path, pruner.key if pruner is not None else None)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    train_time = time.perf_counter() - start
    val_acc = trainer.callback_metrics.get("val/acc")
    extended = pruner is not None and pruner.fit_steps(pruner.total_steps) != pruner.total_steps
    test_acc = None
    if cfg.get("test", True):
        test_acc = float(trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"])
    if sparsity_cb is not None:
        summary = dict(sparsity_cb.summary or {})
        extra = summary.pop("pruner_state", {})
    else:
        example = module.example_input_array.to(next(network.parameters()).device)
        layers = select_targets(network)
        summary, extra = account(network, module_flops(network, example), {}, layers), {}
    results = {
        "pruner": pruner.key if pruner is not None else None,
        "model": cfg.model.name,
        "data": dm.name,
        "seed": cfg.seed,
        "test_acc": test_acc,
        "val_acc": float(val_acc) if val_acc is not None else None,
        "dense_test_acc": dense_reference(cfg, dm.name, extended),
        **{k: summary[k] for k in ("sparsity", "params_total", "params_nonzero", "flops_dense", "flops_sparse")},
        "train_time_s": round(train_time, 2),
        "steps": int(trainer.global_step),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "pruner_config": pruner.describe() if pruner is not None else None,
        **extra,
        "layers": summary["layers"],
    }
    if trainer.is_global_zero:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
        if cfg.get("export", True):
            export_network(
                network,
                run_dir / "export",
                input_shape=(dm.in_chans, dm.image_size, dm.image_size),
                arch=run_arch(cfg, dm),
                info={"pruner": results["pruner"], "granularity": (results["pruner_config"] or {}).get("granularity")},
            )
        dense = results["dense_test_acc"]
        log.info(
            "done: test_acc=%s sparsity=%.4f flops_ratio=%.3f steps=%d train_time=%.0fs%s -> %s",
            f"{test_acc:.4f}" if test_acc is not None else "n/a",
            results["sparsity"],
            results["flops_sparse"] / max(1, results["flops_dense"]),
            results["steps"],
            train_time,
            f" (dense reference {dense:.4f})" if dense is not None else "",
            run_dir / "results.json",
        )
    return float(val_acc) if val_acc is not None else float("nan")


__all__ = ["check_resume", "dense_reference", "output_dir", "prepare", "reference_key", "run"]
