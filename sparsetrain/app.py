"""Build a run from a composed Hydra config: data, model, pruner, trainer; fit, finalize, test, report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import Logger

from sparsetrain.accounting import account, module_flops
from sparsetrain.callback import SparsityCallback
from sparsetrain.checkpointing import LatestCheckpoint
from sparsetrain.config import validate
from sparsetrain.dense_reference import dense_reference
from sparsetrain.distributed import trainer_overrides
from sparsetrain.export import export_network
from sparsetrain.init_from import load_initial_weights
from sparsetrain.loggers import build_loggers, finish_wandb, summarize_wandb
from sparsetrain.models import build_model
from sparsetrain.module import ClassificationModule
from sparsetrain.plots import plot_run_safely
from sparsetrain.quiet import quiet
from sparsetrain.restore import run_arch
from sparsetrain.resume import RunSettings, allowed_pruner_changes, check_resume, run_settings
from sparsetrain.targets import select_targets

log = logging.getLogger("sparsetrain")


def output_dir(cfg: DictConfig) -> Path:
    """The Hydra run directory (honours `hydra.run.dir`), or `cfg.output_dir` outside Hydra."""
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def short_budget(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Trainer arguments that follow a `max_steps` budget: a log interval of at most a tenth of it."""
    max_steps = trainer_cfg.get("max_steps") or -1
    every = trainer_cfg.get("log_every_n_steps") or 50
    return {"log_every_n_steps": max(1, min(every, max_steps // 10))} if max_steps > 0 else {}


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate everything a run needs, validating before any training starts."""
    cfg = validate(cfg)
    check_resume(cfg)  # before anything is built: a wrong checkpoint or changed settings fail in one line
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
    if cfg.get("init_from"):  # before the pruner attaches and reparametrizes the weights
        load_initial_weights(network, cfg.init_from, f"model {cfg.model.name}")
    module = ClassificationModule(
        network,
        datamodule.num_classes,
        OmegaConf.to_container(cfg.optim, resolve=True),
        label_smoothing=cfg.get("label_smoothing", 0.0),
        example_input_shape=(datamodule.in_chans, datamodule.image_size, datamodule.image_size),
        compile=bool(cfg.model.get("compile", False)),
        compile_options=_container(cfg.model.get("compile_options")),
    )
    return {"cfg": cfg, "datamodule": datamodule, "network": network, "pruner": pruner, "module": module}


def _container(node: Any) -> dict[str, Any]:
    """A config mapping as a plain dict (empty when absent)."""
    return dict(OmegaConf.to_container(node, resolve=True)) if node else {}


def snapshots(run_dir: Path, every: int) -> ModelCheckpoint:
    """`checkpoints/step<N>.ckpt` after every `every`-th optimizer step, all kept.

    Written after the step's optimizer update and before the next forward, so with `every` = the length of a
    method's round (iterative pruning) each file holds that round's trained network, before the next round
    prunes and rewinds it (`sparsetrain.restore.finalized_network` reads one like any checkpoint).
    """
    return ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="step{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=every,
        save_top_k=-1,
        monitor=None,
    )


def run(cfg: DictConfig, callbacks: list[pl.Callback] | None = None) -> float:
    """Train, finalize, test and write `results.json`; returns the final `val/acc` for sweepers.

    Args:
        cfg: The composed config (`conf/train.yaml`).
        callbacks: Extra Lightning callbacks for this run.
    """
    quiet()
    parts = prepare(cfg)
    cfg, pruner = parts["cfg"], parts["pruner"]
    run_dir = output_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    sparsity_cb = None
    if pruner is not None:
        sparsity_cb = SparsityCallback(pruner, allow_changed=allowed_pruner_changes(cfg))
    callbacks = [
        *(callbacks or []),
        ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="best", monitor="val/acc", mode="max"),
        LatestCheckpoint(
            run_dir / "checkpoints", cfg.get("checkpoint_every_n_steps"), cfg.get("checkpoint_every_minutes")
        ),
        RunSettings(cfg),
        LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.get("snapshot_every_n_steps"):  # kept next to best/last: e.g. every pruning round's network
        callbacks.append(snapshots(run_dir, cfg.snapshot_every_n_steps))
    if cfg.get("progress_bar", True):
        callbacks.append(RichProgressBar())
    if sparsity_cb is not None:
        callbacks.append(sparsity_cb)
    loggers = build_loggers(cfg, run_dir)
    try:
        val_acc = _fit_and_report(cfg, parts, run_dir, callbacks, sparsity_cb, loggers)
    except BaseException:
        finish_wandb(failed=True)
        raise
    finish_wandb(failed=False)
    return val_acc


def _fit_and_report(
    cfg: DictConfig,
    parts: dict[str, Any],
    run_dir: Path,
    callbacks: list[pl.Callback],
    sparsity_cb: SparsityCallback | None,
    loggers: list[Logger],
) -> float:
    """The body of `run` once its loggers exist: fit, finalize, test, results.json, export, plots."""
    dm, network, pruner, module = (parts[k] for k in ("datamodule", "network", "pruner", "module"))
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers,
        default_root_dir=str(run_dir),
        enable_progress_bar=cfg.get("progress_bar", True),
        **short_budget(cfg.trainer),
        **trainer_overrides(cfg.trainer),
    )
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
        "channel_sparsity": summary.get("channel_sparsity"),  # fraction of channels removed (channel runs)
        "train_time_s": round(train_time, 2),
        "steps": int(trainer.global_step),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "pruner_config": pruner.describe() if pruner is not None else None,
        "init_from": cfg.get("init_from"),
        "settings": run_settings(cfg),  # what a study's skip_done compares before it skips this job
        **extra,
        "layers": summary["layers"],
    }
    removed = pruner.removed_channels() if pruner is not None else []
    if trainer.is_global_zero:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
        if cfg.get("export", True):
            export_network(
                network,
                run_dir / "export",
                input_shape=(dm.in_chans, dm.image_size, dm.image_size),
                arch=run_arch(cfg, dm),
                info={"pruner": results["pruner"], "granularity": (results["pruner_config"] or {}).get("granularity")},
                removed=removed,
                dense_counts=(results["params_total"], results["flops_dense"]) if removed else None,
            )
        if cfg.get("plots", True):
            plot_run_safely(run_dir)
        summarize_wandb(loggers, results)
        dense, channels = results["dense_test_acc"], results["channel_sparsity"]
        log.info(
            "done: test_acc=%s sparsity=%.4f%s flops_ratio=%.3f steps=%d train_time=%.0fs%s -> %s",
            f"{test_acc:.4f}" if test_acc is not None else "n/a",
            results["sparsity"],
            f" channel_sparsity={channels:.4f}" if channels is not None else "",
            results["flops_sparse"] / max(1, results["flops_dense"]),
            results["steps"],
            train_time,
            f" (dense reference {dense:.4f})" if dense is not None else "",
            run_dir / "results.json",
        )
    return float(val_acc) if val_acc is not None else float("nan")


__all__ = ["output_dir", "prepare", "run"]
