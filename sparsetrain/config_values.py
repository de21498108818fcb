"""Reading one value of a composed config for a check: absent means its default, `???` is an error naming it.

Shared by `sparsetrain.config` and `sparsetrain.trainer_checks`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from sparsetrain.errors import ConfigError


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def get_setting(node: DictConfig, key: str, default: Any, group: str) -> Any:
    """`node.key` resolved, `default` when absent; a value left `???` is an error naming `group.key`."""
    if OmegaConf.is_missing(node, key):  # before `in`, which is False for a ??? value
        raise ConfigError(f"{group}.{key} is required (it is ???)")
    return node.get(key, default)


__all__ = ["get_setting", "is_int"]
