"""Checking a run's configuration before anything is built: typed, range-checked settings in one line each.

Hydra composes the YAML files under `conf/`, typed by the structured configs of `sparsetrain.schema` (a value of
the wrong type fails while composing). `validate` checks what needs no torch (ranges and choices of the
optimizer and model settings, seed, the trainer's budget and CPU device count, data settings and files, the
pruner keys every method shares), so most mistakes are reported within a second. `check_run` adds what needs
torch or a model registry: the pruner's own constructor (the single source of truth for its keys), whether the
accelerator exists here, the trainer settings as Lightning's own `Trainer` checks them (`check_trainer`), and
whether a timm/torchvision model name is known. `sparsetrain.hydra_checks.CheckJobs` does all of it for every
job of `train.py`'s command, before Hydra creates a run directory, so a bad configuration writes nothing.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparsetrain.config_values import get_setting, is_int
from sparsetrain.errors import ConfigError, suggest
from sparsetrain.pruner_keys import SharedKeys, check_fraction, default_sparsity  # noqa: F401  (resolver)
from sparsetrain.schema import ModelConfig, OptimConfig  # registers the schemas conf/train.yaml merges in
from sparsetrain.trainer_checks import (  # noqa: F401  (public here too)
    check_accelerator,
    check_budget_and_cpus,
    check_trainer,
    lightning_accelerators,
    lightning_precisions,
)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


_CHOICES = {
    ("optim", "name"): ("sgd", "adamw"),
    ("optim", "schedule"): ("cosine", "multistep", "constant"),
    ("model", "source"): ("builtin", "timm", "torchvision"),
}
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
    if not is_int(cfg.get("seed", 0)):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    init = cfg.get("init_from")
    if init is not None:
        if not Path(str(init)).exists():
            raise ConfigError(f"init_from={init} does not exist (a run directory, its export/ or a .ckpt)")
        from sparsetrain.checkpoint_files import init_source

        try:
            init_source(str(init))  # a run that kept no weights fails here, before a sweep's first job starts
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if cfg.get("ckpt_path"):
        from sparsetrain.checkpoint_files import resolve_checkpoint

        resolve_checkpoint(str(cfg.ckpt_path), "ckpt_path")  # a missing or wrong file, before torch is imported
    every = cfg.get("snapshot_every_n_steps")
    if every is not None and (not is_int(every) or every < 1):
        raise ConfigError(f"snapshot_every_n_steps must be null or an integer >= 1 optimizer steps, got {every!r}")
    every = cfg.get("checkpoint_every_n_steps")
    if every is not None and (not is_int(every) or every < 1):
        raise ConfigError(f"checkpoint_every_n_steps must be null or an integer >= 1 optimizer steps, got {every!r}")
    minutes = cfg.get("checkpoint_every_minutes")
    if minutes is not None and (not isinstance(minutes, (int, float)) or isinstance(minutes, bool) or minutes <= 0):
        raise ConfigError(f"checkpoint_every_minutes must be null or a number > 0, got {minutes!r}")
    allow = cfg.get("resume_allow_changes")
    if allow is not None and not isinstance(allow, (list, ListConfig)):
        raise ConfigError(f"resume_allow_changes must be a list of keys, e.g. [trainer.max_epochs], got {allow!r}")
    if cfg.get("trainer") is not None:
        check_budget_and_cpus(cfg.trainer)
    if cfg.get("data") is not None:
        _check_data(cfg.data)
    if cfg.get("pruner") is not None:
        _check_shared_pruner_keys(cfg.pruner)
    return cfg


# ------------------------------------------------------------------------------------------------ data
_DATA_KEYS = (
    ("batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("eval_batch_size", lambda v: v is None or (is_int(v) and v >= 1), "null or an integer >= 1"),
    ("val_fraction", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1, "in [0, 1)"),
    ("num_workers", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    ("image_size", lambda v: v is None or (is_int(v) and v >= 4), "null or an integer >= 4"),
)


def _check_data(d: DictConfig) -> None:
    for key, ok, allowed in _DATA_KEYS:
        if key in d and not ok(get_setting(d, key, None, "data")):
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
    given = {k: get_setting(p, k, None, "pruner") for k in names if k in p}
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
    ratio = get_setting(p, "max_flops_ratio", None, "pruner")
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


def light_checks(cfg: DictConfig, conf_dir: Path | None) -> None:
    """What `check_run` checks without torch (the top-level keys and `validate`), on a copy of `cfg`."""
    if conf_dir is not None:
        _check_top_level(cfg, conf_dir)
    validate(cfg.copy())


def check_run(cfg: DictConfig, conf_dir: Path | None = CONF_DIR) -> DictConfig:
    """Everything `validate` checks, then what needs torch or a model registry; builds no model and no data.

    The pruner is constructed (its constructor validates its own keys and refuses granularities it does not
    support) and thrown away; the accelerator is looked up, and Lightning checks the trainer settings
    (`check_trainer`); timm/torchvision names are looked up in their registries. Cheap checks come first, so
    the common mistakes cost no torch import.
    """
    if conf_dir is not None:
        _check_top_level(cfg, conf_dir)
    cfg = validate(cfg)
    if conf_dir is not None and cfg.model.source == "builtin":
        _check_model_name(cfg.model, conf_dir)
    if cfg.get("trainer") is not None:
        check_accelerator(cfg.trainer)
        check_trainer(cfg.trainer)
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
    "check_run",
    "check_trainer",
    "light_checks",
    "lightning_accelerators",
    "lightning_precisions",
    "validate",
]
