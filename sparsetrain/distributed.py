"""What a multi-process (DDP) run can use on this machine, and what it cannot run at all.

`conf/trainer/ddp.yaml` asks for `sync_batchnorm: true`: BatchNorm statistics over the global batch. PyTorch
runs `SyncBatchNorm` on CUDA devices only: wrapping it in `DistributedDataParallel` on CPU processes (gloo)
fails at the start of fit (`SyncBatchNorm layers only work with GPU modules`). `trainer_overrides` drops it
where the run's accelerator resolves to anything other than CUDA, with one info line; each rank's BatchNorm
then normalizes over its own share of the batch, as without DDP.

`check_config` refuses, before any process is launched, a pruner that cannot train under DDP (LAPP, which
slims the network mid-training), so the refusal is one line, printed once, before the run directory exists.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("sparsetrain")


def cuda_available() -> bool:
    """Whether Lightning would find CUDA devices (its own check, safe before processes are forked)."""
    from lightning_fabric.accelerators.cuda import CUDAAccelerator

    return CUDAAccelerator.is_available()


def runs_on_cuda(accelerator: Any) -> bool | None:
    """Whether Lightning's `accelerator` setting resolves to CUDA here; None where that is not known.

    `cuda` is CUDA; `gpu` and `auto` are CUDA when CUDA devices exist (otherwise MPS or CPU); `cpu` and `mps` are
    not. Another name (TPU, HPU, XPU) or an `Accelerator` object: None.
    """
    if not isinstance(accelerator, str):
        return None
    name = accelerator.lower()
    if name == "cuda":
        return True
    if name in ("gpu", "auto"):
        return cuda_available()
    if name in ("cpu", "mps"):
        return False
    return None


def world_size(trainer_cfg: Mapping[str, Any]) -> int | None:
    """Processes the trainer config launches (`devices` x `num_nodes`); None where that is not known here.

    `devices: auto` (or -1) is every CUDA device (or the one MPS device) with `accelerator` gpu/cuda/auto and
    one process on CPU, as Lightning counts; another accelerator with `auto` devices: None.
    """
    from sparsetrain.devices import gpu_count, requested_devices

    accelerator = trainer_cfg.get("accelerator", "auto")
    devices = requested_devices(trainer_cfg.get("devices", "auto"))
    if devices is None:
        if accelerator == "cpu":
            devices = 1
        elif accelerator in ("gpu", "cuda", "mps", "auto"):
            devices = max(1, gpu_count(accelerator))
        else:
            return None
    nodes = trainer_cfg.get("num_nodes", 1) or 1
    return devices * nodes if isinstance(nodes, int) else None


def check_config(cfg: Mapping[str, Any]) -> None:
    """Refuse, before any process is launched, a pruner that cannot train in a multi-process run.

    LAPP slims the network mid-training, which `DistributedDataParallel` cannot follow; resuming its slimmed
    checkpoint (`ckpt_path`) is allowed (LAPP itself refuses at the start of fit when that checkpoint was written
    before slimming).

    Raises:
        ConfigError: the pruner and how to run it instead, in one line.
    """
    pruner, trainer = cfg.get("pruner"), cfg.get("trainer")
    if pruner is None or trainer is None or cfg.get("ckpt_path") or not pruner.get("_target_"):
        return
    processes = world_size(trainer)
    if processes is None or processes <= 1:
        return
    from hydra.utils import get_class

    from sparsetrain.errors import ConfigError
    from sparsetrain.pruners.lapp import LAPP

    if issubclass(get_class(pruner._target_), LAPP):
        raise ConfigError(
            f"LAPP slims the network mid-training, which DDP cannot follow, and this trainer runs {processes} "
            "processes: train LAPP on one device (trainer.devices=1, without trainer=ddp), or resume its slimmed "
            "checkpoint under DDP (ckpt_path=...)"
        )


def trainer_overrides(trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `instantiate(cfg.trainer, ...)` that replace settings this machine cannot run.

    `{"sync_batchnorm": False}` when the config asks for it and the accelerator does not resolve to CUDA (one info
    line on rank zero); `{}` otherwise.
    """
    if not trainer_cfg.get("sync_batchnorm", False):
        return {}
    accelerator = trainer_cfg.get("accelerator", "auto")
    if runs_on_cuda(accelerator) is not False:
        return {}
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        log.info(
            "trainer.sync_batchnorm dropped: SyncBatchNorm runs on CUDA devices only and accelerator=%s runs on %s "
            "here; each process's BatchNorm normalizes its own share of the batch",
            accelerator,
            "the CPU (gloo)" if accelerator.lower() in ("cpu", "auto") else "MPS",  # gpu without CUDA: MPS
        )
    return {"sync_batchnorm": False}


__all__ = ["check_config", "cuda_available", "runs_on_cuda", "trainer_overrides", "world_size"]
