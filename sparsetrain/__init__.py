"""sparsetrain: training-time sparsity for PyTorch, as Lightning callbacks and Hydra configs.

Public names are imported lazily, so `import sparsetrain.models` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

import sparsetrain.pruner_keys  # noqa: E402,F401  (registers the YAML resolver `sparsity_default`: configs compose anywhere)
import sparsetrain.schema  # noqa: E402,F401  (registers the structured configs conf/train.yaml merges in)

_EXPORTS = {
    "SparsityCallback": "sparsetrain.callback",
    "ClassificationModule": "sparsetrain.module",
    "MaskSet": "sparsetrain.masking",
    "Pruner": "sparsetrain.pruners",
    "list_pruners": "sparsetrain.pruners",
    "Magnitude": "sparsetrain.pruners",
    "GMP": "sparsetrain.pruners",
    "IMP": "sparsetrain.pruners",
    "GraNet": "sparsetrain.pruners",
    "RigL": "sparsetrain.pruners",
    "SET": "sparsetrain.pruners",
    "PDP": "sparsetrain.pruners",
    "BiP": "sparsetrain.pruners",
    "LAPP": "sparsetrain.pruners",
    "register_pruner": "sparsetrain.pruners",
    "register_granularity": "sparsetrain.granularity",
    "load_exported": "sparsetrain.export",
    "export_network": "sparsetrain.export",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sparsetrain' has no attribute {name!r}")
