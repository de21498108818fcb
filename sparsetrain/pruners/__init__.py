"""Pruning methods. Each registers itself under the key of its `conf/pruner/<key>.yaml`.

Every module of this package is imported by `discover()` (called on import and by `list_pruners`), so a new
method is one file here plus one YAML: no `__init__` to edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from sparsetrain.pruner_keys import registry
from sparsetrain.pruners.base import Pruner, register_pruner


def discover() -> None:
    """Import every pruner module of this package (registration happens at class definition)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def list_pruners() -> dict[str, type[Pruner]]:
    """Registered pruners by key (every module of this package imported first, so a new file is found)."""
    discover()
    return dict(registry)


discover()

from sparsetrain.pruners.bip import BiP  # noqa: E402  (public names, for `from ... import`)
from sparsetrain.pruners.granet import SET, GraNet, RigL  # noqa: E402
from sparsetrain.pruners.imp import IMP  # noqa: E402
from sparsetrain.pruners.lapp import LAPP  # noqa: E402
from sparsetrain.pruners.magnitude import GMP, Magnitude  # noqa: E402
from sparsetrain.pruners.pdp import PDP  # noqa: E402


def __getattr__(name: str):
    """Any registered pruner class by its class name (`sparsetrain.pruners.LAPP`), even one added later."""
    for cls in list_pruners().values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GMP",
    "IMP",
    "LAPP",
    "PDP",
    "SET",
    "BiP",
    "GraNet",
    "Magnitude",
    "Pruner",
    "RigL",
    "list_pruners",
    "register_pruner",
]
