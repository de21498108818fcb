"""Dense reference accuracies that `results.json`'s `dense_test_acc` reports next to a sparse run.

The numbers ship with the package (`dense_references.json`, package data) so the library never reads a study's
files; the study that measures them writes them here (`python -m experiments.studies.dense_reference <study>`, part of
`make study-report`), keyed by `reference_key`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

REFERENCES = Path(__file__).with_name("dense_references.json")  # {reference_key: mean dense test accuracy}


def reference_key(model: str, data: str, epochs: Any, batch_size: Any, optim: str, lr: float) -> str:
    """Key of a dense reference result: the budget and the recipe it was trained with."""
    return f"{model}/{data}/{epochs}ep/b{batch_size}/{optim}-lr{lr:g}"


def dense_reference(cfg: DictConfig, data: str, extended: bool = False) -> float | None:
    """Dense test accuracy of the same budget and recipe from the shipped references (mean over seeds), if any.

    The reference is for whole epochs of one recipe (batch size, optimizer, LR); a run cut short
    (`max_steps`, `limit_train_batches`), trained differently, started from trained weights (`init_from`), or
    `extended` beyond its budget by the pruner (several rounds) has none.
    """
    trainer_cfg = cfg.trainer
    if not REFERENCES.exists() or extended or cfg.get("init_from"):
        return None
    if trainer_cfg.get("max_steps", -1) not in (-1, None) or trainer_cfg.get("limit_train_batches") not in (None, 1.0):
        return None
    key = reference_key(
        cfg.model.name, data, trainer_cfg.get("max_epochs"), cfg.data.get("batch_size"), cfg.optim.name, cfg.optim.lr
    )
    return json.loads(REFERENCES.read_text()).get(key)


__all__ = ["REFERENCES", "dense_reference", "reference_key"]
