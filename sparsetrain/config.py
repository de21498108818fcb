"""Structured-config schemas: typed, range-checked settings, so bad values fail before any training.

Hydra composes the YAML files under `conf/`; `validate` merges the parts that have a schema into their
dataclass (wrong types and unknown keys fail there) and checks ranges, raising `ConfigError` with one line.
Pruner keys are validated by the pruner constructors themselves (they are the single source of truth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparsetrain.pruner_keys import default_sparsity  # noqa: F401  (registers the `sparsity_default` resolver)


class ConfigError(ValueError):
    """A user-facing configuration error (printed as one line by `train.py`)."""


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


def _merge(schema: type, node: DictConfig, group: str) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"invalid {group} config: {msg}") from None


def validate(cfg: DictConfig) -> DictConfig:
    """Check the composed config; returns it with schema defaults filled in.

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
    if not isinstance(cfg.get("seed", 0), int):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    return cfg
