"""The trainer's settings checked before a run: the budget and CPU device count without torch
(`check_budget_and_cpus`), what the machine has (`check_accelerator`), and the rest as Lightning's own `Trainer`
checks it (`check_trainer`: its precision and accelerator lists, its accelerator connector).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import typing
import warnings
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sparsetrain.config_values import get_setting, is_int
from sparsetrain.devices import gpu_count, requested_devices
from sparsetrain.errors import ConfigError, suggest


def check_budget_and_cpus(t: DictConfig) -> None:
    """The budget and the device count, without torch; `check_trainer` asks Lightning about the rest."""
    accelerator = get_setting(t, "accelerator", "auto", "trainer")
    count = requested_devices(get_setting(t, "devices", "auto", "trainer"))
    cpus = os.cpu_count() or 1
    if accelerator == "cpu" and count is not None and count > cpus:
        raise ConfigError(
            f"trainer.devices={count} asks for {count} CPU processes but this machine has {cpus} CPU cores; "
            f"use trainer.devices=1..{cpus}"
        )
    max_epochs, max_steps = get_setting(t, "max_epochs", None, "trainer"), get_setting(t, "max_steps", -1, "trainer")
    for key, value in (("max_epochs", max_epochs), ("max_steps", max_steps)):
        if value is not None and (not is_int(value) or (value < 1 and value != -1)):
            raise ConfigError(f"trainer.{key} must be an integer >= 1 (or -1: no limit), got {value!r}")
    if max_epochs == -1 and max_steps in (None, -1) and not get_setting(t, "max_time", None, "trainer"):  # None: 1000
        raise ConfigError(
            "training needs a finite budget (pruning schedules are fractions of it): set trainer.max_epochs >= 1 "
            "or trainer.max_steps >= 1"
        )
    accumulate = get_setting(t, "accumulate_grad_batches", 1, "trainer")
    if not is_int(accumulate) or accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches must be an integer >= 1, got {accumulate!r}")
    clip = get_setting(t, "gradient_clip_val", None, "trainer")
    if clip is not None and (not isinstance(clip, (int, float)) or isinstance(clip, bool) or clip < 0):
        raise ConfigError(f"trainer.gradient_clip_val must be null or a number >= 0, got {clip!r}")


def check_accelerator(t: DictConfig) -> None:
    """The accelerator and device count `trainer` asks for exist on this machine (see `gpu_count`)."""
    accelerator = get_setting(t, "accelerator", "auto", "trainer")
    count = requested_devices(get_setting(t, "devices", "auto", "trainer"))
    if accelerator not in ("gpu", "cuda", "mps", "auto") or (accelerator == "auto" and (count or 1) <= 1):
        return  # CPU counts are checked in `validate`; auto with one device always finds one
    available = gpu_count(accelerator)
    if accelerator == "auto" and available == 0:  # auto falls back to CPU processes
        cpus = os.cpu_count() or 1
        if count is not None and count > cpus:
            raise ConfigError(
                f"trainer.devices={count} with accelerator=auto: this machine has no GPU and {cpus} CPU cores; "
                f"use trainer.devices=1..{cpus}"
            )
        return
    if available == 0:
        kind = {"mps": "Apple MPS device", "cuda": "CUDA GPU"}.get(accelerator, "GPU (CUDA or MPS)")
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no {kind}; use trainer.accelerator=cpu or auto"
        )
    if count is not None and count > available:
        raise ConfigError(
            f"trainer.devices={count} but this machine has {available} GPU{'s' if available > 1 else ''}; "
            f"use trainer.devices=1..{available} or -1 (all)"
        )


LIGHTNING_KEYS = ("accelerator", "strategy", "devices", "num_nodes", "precision", "sync_batchnorm")


def _literals(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return list(args)
    return [value for arg in args for value in _literals(arg)]


def lightning_precisions() -> list[str]:
    """The values `pytorch_lightning.Trainer(precision=...)` declares (its signature's literals), as strings."""
    import pytorch_lightning as pl

    declared = typing.get_type_hints(pl.Trainer.__init__)["precision"]
    return list(dict.fromkeys(str(value) for value in _literals(declared)))


def lightning_accelerators() -> list[str]:
    """The names `Trainer(accelerator=...)` takes: Lightning's accelerator registry, `auto` and `gpu`."""
    from pytorch_lightning.accelerators import AcceleratorRegistry

    return sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's device lines, tips and warnings muted (a Trainer made only to be checked)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _lightning_refuses(settings: dict[str, Any]) -> Exception | None:
    """What `pytorch_lightning.Trainer(**settings)` raises (its accelerator connector checks them), else None."""
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        with _quiet():
            pl.Trainer(**settings, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[])
    except (ValueError, TypeError, MisconfigurationException) as e:
        return e
    return None


def check_trainer(t: DictConfig) -> None:
    """The Trainer's accelerator, strategy, devices, nodes and precision, as Lightning's Trainer checks them.

    An unknown precision or accelerator name is reported with Lightning's own list (close matches first); any
    other refusal of a throwaway `pytorch_lightning.Trainer` (built and dropped: no logger, no model) is Lightning's
    message, naming the key that alone makes the difference. Keys not given keep Lightning's defaults.
    """
    import pytorch_lightning as pl

    settings = OmegaConf.to_container(t, resolve=True)
    known = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    for key in settings:
        if key != "_target_" and key not in known:
            raise ConfigError(
                f"trainer.{key} is not an argument of pytorch_lightning.Trainer: "
                + suggest(str(key), sorted(known), "Trainer arguments")
            )
    given = {k: settings[k] for k in LIGHTNING_KEYS if k in settings}
    precision = given.get("precision")
    if precision is not None and str(precision) not in (precisions := lightning_precisions()):
        raise ConfigError(
            f"trainer.precision={precision!r} is unknown: " + suggest(str(precision), precisions, "allowed")
        )
    accelerator = given.get("accelerator")
    if isinstance(accelerator, str) and accelerator not in (accelerators := lightning_accelerators()):
        raise ConfigError(
            f"trainer.accelerator={accelerator!r} is unknown: " + suggest(accelerator, accelerators, "allowed")
        )
    error = _lightning_refuses(given)
    if error is None:
        return
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    for key in given:
        if _lightning_refuses({k: v for k, v in given.items() if k != key}) is None:
            raise ConfigError(f"trainer.{key}={given[key]!r} is refused by Lightning: {reason}")
    shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
    raise ConfigError(f"trainer ({shown}) is refused by Lightning: {reason}")


__all__ = [
    "LIGHTNING_KEYS",
    "check_accelerator",
    "check_budget_and_cpus",
    "check_trainer",
    "lightning_accelerators",
    "lightning_precisions",
]
