"""Checking a run's configuration before anything is built: typed, range-checked settings in one line each.

Hydra composes the YAML files under `conf/`. `validate` checks what needs no torch (the optimizer and model
schemas, seed, the trainer's budget, accelerator and devices, data settings and files, the pruner keys every
method shares), so most mistakes are reported within a second. `check_run` adds what needs torch or a model
registry: the pruner's own constructor (the single source of truth for its keys), whether the accelerator
exists, and whether a timm/torchvision model name is known. `sparsetrain.cli.check_command_line` does all of it
for the command line of `train.py`, before Hydra creates a run directory, so a bad configuration writes nothing.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparsetrain.devices import gpu_count, requested_devices
from sparsetrain.errors import ConfigError, suggest
from sparsetrain.pruner_keys import SharedKeys, check_fraction, default_sparsity  # noqa: F401  (resolver)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class OptimConfig:
    """`conf/optim/*`: optimizer and per-step learning-rate schedule."""

    name: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    no_decay_norm_bias: bool = True
    schedule: str = "cosine"
    warmup: float = 0.0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    min_lr_factor: float = 0.0


@dataclass
class ModelConfig:
    """`conf/model/*`: where the network comes from."""

    source: str = "builtin"
    name: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)


_CHOICES = {
    ("optim", "name"): ("sgd", "adamw"),
    ("optim", "schedule"): ("cosine", "multistep", "constant"),
    ("model", "source"): ("builtin", "timm", "torchvision"),
}
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = (
    "transformer-engine",
    "transformer-engine-float16",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
    "64",
    "32",
    "16",
    "bf16",
)  # Lightning's accepted values (ints 16, 32, 64 too); tests/test_bad_config.py compares them with Lightning's
DATA_FOLDERS = {  # data module class -> (name, folders its `root` must hold unless it downloads), as its locate()
    "CIFAR10DataModule": ("cifar10", ("cifar-10-batches-py",)),
    "CIFAR100DataModule": ("cifar100", ("cifar-100-python",)),
    "ImageNetDataModule": ("imagenet", ("train", "val")),
}


def _merge(schema: type, node: DictConfig, group: str) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"invalid {group} config: {msg}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _get(node: DictConfig, key: str, default: Any, group: str) -> Any:
    """`node.key` resolved, `default` when absent; a value left `???` is an error naming `group.key`."""
    if OmegaConf.is_missing(node, key):  # before `in`, which is False for a ??? value
        raise ConfigError(f"{group}.{key} is required (it is ???)")
    return node.get(key, default)


def validate(cfg: DictConfig) -> DictConfig:
    """Check the composed config without torch; returns it with schema defaults filled in.

    Raises:
        ConfigError: naming the key, the bad value and what is allowed.
    """
    cfg.optim = _merge(OptimConfig, cfg.optim, "optim")
    cfg.model = _merge(ModelConfig, cfg.model, "model")
    if OmegaConf.is_missing(cfg.model, "name"):
        raise ConfigError(f"model={cfg.model.source} needs model.name, e.g. model.name=resnet18")
    for (group, key), allowed in _CHOICES.items():
        value = cfg[group][key]
        if value not in allowed:
            raise ConfigError(f"{group}.{key} must be one of {', '.join(allowed)}; got {value!r}")
    o = cfg.optim
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"optim.momentum must be in [0, 1), got {o.momentum}")
    if not 0 <= o.warmup < 1:
        raise ConfigError(f"optim.warmup is a fraction of all optimizer steps in [0, 1), got {o.warmup}")
    if any(not 0 < m < 1 for m in o.milestones):
        raise ConfigError(f"optim.milestones are fractions of all optimizer steps in (0, 1), got {list(o.milestones)}")
    if not 0 <= cfg.get("label_smoothing", 0.0) < 1:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not _is_int(cfg.get("seed", 0)):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    init = cfg.get("init_from")
    if init is not None and not Path(str(init)).exists():
        raise ConfigError(f"init_from={init} does not exist (a run directory, its export/ or a .ckpt)")
    if cfg.get("ckpt_path"):
        from sparsetrain.checkpoint_files import resolve_checkpoint

        resolve_checkpoint(str(cfg.ckpt_path), "ckpt_path")  # a missing or wrong file, before torch is imported
    every = cfg.get("snapshot_every_n_steps")
    if every is not None and (not _is_int(every) or every < 1):
        raise ConfigError(f"snapshot_every_n_steps must be null or an integer >= 1 optimizer steps, got {every!r}")
    every = cfg.get("checkpoint_every_n_steps")
    if every is not None and (not _is_int(every) or every < 1):
        raise ConfigError(f"checkpoint_every_n_steps must be null or an integer >= 1 optimizer steps, got {every!r}")
    minutes = cfg.get("checkpoint_every_minutes")
    if minutes is not None and (not isinstance(minutes, (int, float)) or isinstance(minutes, bool) or minutes <= 0):
        raise ConfigError(f"checkpoint_every_minutes must be null or a number > 0, got {minutes!r}")
    allow = cfg.get("resume_allow_changes")
    if allow is not None and not isinstance(allow, (list, ListConfig)):
        raise ConfigError(f"resume_allow_changes must be a list of keys, e.g. [trainer.max_epochs], got {allow!r}")
    if cfg.get("trainer") is not None:
        _check_trainer(cfg.trainer)
    if cfg.get("data") is not None:
        _check_data(cfg.data)
    if cfg.get("pruner") is not None:
        _check_shared_pruner_keys(cfg.pruner)
    return cfg


# ------------------------------------------------------------------------------------------------ trainer
def _check_trainer(t: DictConfig) -> None:
    accelerator = _get(t, "accelerator", "auto", "trainer")
    if isinstance(accelerator, str) and accelerator not in ACCELERATORS:
        raise ConfigError(
            f"trainer.accelerator={accelerator!r} is unknown: " + suggest(accelerator, ACCELERATORS, "allowed")
        )
    count = requested_devices(_get(t, "devices", "auto", "trainer"))
    cpus = os.cpu_count() or 1
    if accelerator == "cpu" and count is not None and count > cpus:
        raise ConfigError(
            f"trainer.devices={count} asks for {count} CPU processes but this machine has {cpus} CPU cores; "
            f"use trainer.devices=1..{cpus}"
        )
    precision = _get(t, "precision", "32-true", "trainer")
    if str(precision) not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision!r} is unknown: " + suggest(str(precision), PRECISIONS, "allowed")
        )
    max_epochs, max_steps = _get(t, "max_epochs", None, "trainer"), _get(t, "max_steps", -1, "trainer")
    for key, value in (("max_epochs", max_epochs), ("max_steps", max_steps)):
        if value is not None and (not _is_int(value) or (value < 1 and value != -1)):
            raise ConfigError(f"trainer.{key} must be an integer >= 1 (or -1: no limit), got {value!r}")
    if max_epochs == -1 and max_steps in (None, -1) and not _get(t, "max_time", None, "trainer"):  # None: 1000
        raise ConfigError(
            "training needs a finite budget (pruning schedules are fractions of it): set trainer.max_epochs >= 1 "
            "or trainer.max_steps >= 1"
        )
    accumulate = _get(t, "accumulate_grad_batches", 1, "trainer")
    if not _is_int(accumulate) or accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches must be an integer >= 1, got {accumulate!r}")
    clip = _get(t, "gradient_clip_val", None, "trainer")
    if clip is not None and (not isinstance(clip, (int, float)) or isinstance(clip, bool) or clip < 0):
        raise ConfigError(f"trainer.gradient_clip_val must be null or a number >= 0, got {clip!r}")


def check_accelerator(t: DictConfig) -> None:
    """The accelerator and device count `trainer` asks for exist on this machine (see `gpu_count`)."""
    accelerator = _get(t, "accelerator", "auto", "trainer")
    count = requested_devices(_get(t, "devices", "auto", "trainer"))
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


# ------------------------------------------------------------------------------------------------ data
_DATA_KEYS = (
    ("batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("eval_batch_size", lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    ("val_fraction", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1, "in [0, 1)"),
    ("num_workers", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("image_size", lambda v: v is None or (_is_int(v) and v >= 4), "null or an integer >= 4"),
)


def _check_data(d: DictConfig) -> None:
    for key, ok, allowed in _DATA_KEYS:
        if key in d and not ok(_get(d, key, None, "data")):
            raise ConfigError(f"data.{key} must be {allowed}, got {d[key]!r}")
    target = str(d.get("_target_", "")).rpartition(".")[2]
    if target not in DATA_FOLDERS or d.get("download", False):
        return
    name, folders = DATA_FOLDERS[target]
    if OmegaConf.is_missing(d, "root"):
        raise ConfigError(f"data.root is required for {name}: the folder holding {' and '.join(folders)}")
    root = Path(str(d.get("root", ".")))
    for folder in folders:
        if (root / folder).is_dir():
            continue
        if name == "imagenet":
            raise ConfigError(
                f"ImageNet folder {root / folder} not found: expected {root}/train/<class>/*.JPEG and "
                f"{root}/val/<class>/*.JPEG (set data.root)"
            )
        raise ConfigError(
            f"{name} not found: expected {root / folder} (torchvision's format); set data.download=true on a "
            f"networked machine or extract the archive into {root}"
        )


# ------------------------------------------------------------------------------------------------ pruner
def _check_shared_pruner_keys(p: DictConfig) -> None:
    """The keys every pruner shares, checked by `SharedKeys` itself (no torch); method keys wait for `check_run`."""
    names = [k for k in inspect.signature(SharedKeys.__init__).parameters if k != "self"]
    given = {k: _get(p, k, None, "pruner") for k in names if k in p}
    given = {k: (list(v) if isinstance(v, ListConfig) else v) for k, v in given.items() if v is not None}
    if given.get("granularity", "unstructured") != "nm":
        given.setdefault("sparsity", 0.0)  # a method whose target is another key (a FLOPs budget) leaves it null
    if not ("begin" in given and "end" in given):  # a method's own default for the other one is unknown here
        for key in ("begin", "end"):
            if key in given:
                check_fraction(given.pop(key), key)
    try:
        SharedKeys(**given)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    ratio = _get(p, "max_flops_ratio", None, "pruner")
    if ratio is not None and (not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio <= 1):
        raise ConfigError(f"pruner.max_flops_ratio must be in (0, 1] (final FLOPs / dense FLOPs), got {ratio!r}")


# ------------------------------------------------------------------------------------------------ the run
def builtin_models(conf_dir: Path = CONF_DIR) -> list[str]:
    """Names of the built-in models, from `conf/model/*.yaml` with `source: builtin` (no model import)."""
    names = []
    for path in sorted((conf_dir / "model").glob("*.yaml")):
        model = OmegaConf.load(path).get("model") or {}
        if model.get("source") == "builtin":
            names.append(str(model.get("name")))
    return names


def _check_model_name(model: DictConfig, conf_dir: Path) -> None:
    source, name = model.source, str(model.name)
    if source == "builtin":
        known = builtin_models(conf_dir)
        if known and name not in known:
            raise ConfigError(
                f"unknown builtin model {name!r} (model.name): "
                + suggest(name, known, "builtins")
                + "; for timm or torchvision models use model=timm or model=torchvision"
            )
        return
    if source == "timm":
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model {name!r} (model.name): " + _closest(name, timm.list_models()))
    else:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        if name not in names:
            raise ConfigError(f"unknown torchvision model {name!r} (model.name): " + _closest(name, names))


def _closest(name: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    return f"closest: {', '.join(close)}" if close else "no close name (see the model list of that library)"


def _check_top_level(cfg: DictConfig, conf_dir: Path) -> None:
    """A key no config file declares (`+prunr=gmp`) is a typo, not a setting."""
    declared = OmegaConf.load(conf_dir / "train.yaml")
    known = {str(k) for k in declared if k not in ("defaults", "hydra")}
    known |= {p.name for p in conf_dir.iterdir() if p.is_dir() and p.name not in ("hydra", "pruner_shared")}
    for key in cfg:
        if str(key) not in known and str(key) != "hydra":
            raise ConfigError(
                f"unknown top-level key {key!r}: " + suggest(str(key), sorted(known), "known keys and groups")
            )


def _light_checks(cfg: DictConfig, conf_dir: Path | None) -> None:
    if conf_dir is not None:
        _check_top_level(cfg, conf_dir)
    validate(cfg.copy())


def check_run(cfg: DictConfig, conf_dir: Path | None = CONF_DIR) -> DictConfig:
    """Everything `validate` checks, then what needs torch or a model registry; builds no model and no data.

    The pruner is constructed (its constructor validates its own keys and refuses granularities it does not
    support) and thrown away; the accelerator is looked up; timm/torchvision names are looked up in their
    registries. Cheap checks come first, so the common mistakes cost no torch import.
    """
    if conf_dir is not None:
        _check_top_level(cfg, conf_dir)
    cfg = validate(cfg)
    if conf_dir is not None and cfg.model.source == "builtin":
        _check_model_name(cfg.model, conf_dir)
    if cfg.get("trainer") is not None:
        check_accelerator(cfg.trainer)
    if cfg.get("pruner") is not None:
        from hydra.utils import instantiate

        instantiate(cfg.pruner)  # the constructor raises ValueError naming the key and the allowed values
        from sparsetrain.distributed import check_config

        check_config(cfg)  # a pruner DDP cannot run (LAPP): refused before any process is launched
    if cfg.get("ckpt_path"):
        from sparsetrain.resume import check_resume

        check_resume(cfg)  # the checkpoint exists, is one, and was written with these settings
    if cfg.model.source != "builtin":
        _check_model_name(cfg.model, conf_dir or CONF_DIR)
    return cfg


__all__ = [
    "CONF_DIR",
    "ConfigError",
    "ModelConfig",
    "OptimConfig",
    "builtin_models",
    "check_accelerator",
    "gpu_count",
    "check_run",
    "validate",
]
