"""Structured configs: the types of the config groups, registered in Hydra's ConfigStore.

`conf/train.yaml` merges them into the composed config (the `schema@<group>` entries of its defaults list), so
OmegaConf refuses a value of the wrong type, in the YAML or on the command line, while Hydra composes
(`optim.lr=fast`), and a key the schema does not declare (`optim.momentm=0.9`). Ranges are checked in code
(`sparsetrain.config.validate`), one line each.

`OptimConfig` and `ModelConfig` declare every key of their groups, with defaults, and are merged before the
option (an option sets what it changes). `DataConfig` and `TrainerConfig` declare only the keys every option of
their group has (a data module or `pytorch_lightning.Trainer` takes more, which differ between options); their
values are `???` so merged after the option they type its values and change none. The entries are optional:
a config composed where nothing imported this module (a script using Hydra's compose API on its own) is the
same config, untyped, and `validate` merges `OptimConfig` and `ModelConfig` in again either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

GROUP = "schema"  # ConfigStore group; `conf/train.yaml` places each option at its package (`schema@optim: optim`)


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
    compile: bool = False  # torch.compile the network for training and evaluation (masks first, then compiled)
    compile_options: dict[str, Any] = field(default_factory=dict)  # torch.compile's keywords: backend, mode, ...


@dataclass
class DataConfig:
    """The keys every `conf/data/*` option sets (each data module takes more: root, download, on_device, ...)."""

    batch_size: int = MISSING
    val_fraction: float = MISSING
    image_size: int | None = MISSING


@dataclass
class TrainerConfig:
    """The training budget keys of `conf/trainer/default.yaml`, which every trainer option extends (the other keys
    are `pytorch_lightning.Trainer` arguments, checked by Lightning: `sparsetrain.config.check_trainer`)."""

    max_epochs: int | None = MISSING
    max_steps: int = MISSING
    accumulate_grad_batches: int = MISSING
    gradient_clip_val: float | None = MISSING


SCHEMAS: dict[str, type] = {"optim": OptimConfig, "model": ModelConfig, "data": DataConfig, "trainer": TrainerConfig}


def register() -> None:
    """Store each schema as option `<group>` of the ConfigStore group `schema` (idempotent)."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(group=GROUP, name=name, node=node)


register()

__all__ = ["SCHEMAS", "DataConfig", "ModelConfig", "OptimConfig", "TrainerConfig", "register"]
