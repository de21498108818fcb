"""Silence third-party messages known to be harmless, so a run prints only what a user acts on.

Each filter names one message and says why it is harmless; nothing else is hidden. `quiet()` is applied at the
start of every `sparsetrain.app.run` (idempotent), `quiet_wandb` on the W&B logger it builds.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

# (message regex, category): Python warnings that are harmless in every run.
WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch >= 2.10 deprecates `LeafSpec`; Lightning's `_pytree` still uses it. Nothing for a user to change.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # Torch-Pruning meets a parameter outside nn.Conv/Linear/Norm (a ViT's pos_embed, ConvNeXt's layer scale) and
    # prunes its last dimension with its channel group, which is what coupled channel pruning needs.
    (r"Unwrapped parameters detected", UserWarning),
)
# Starts of Lightning INFO lines with nothing to act on, logged on every fit.
LIGHTNING_INFO = (
    "💡 Tip",  # advertisements for Lightning's cloud products (litlogger, litmodels)
    "Loading `train_dataloader` to estimate number of stepping batches",  # internal bookkeeping
)
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


class _DropLightningInfo(logging.Filter):
    """Drops the records that start with one of `LIGHTNING_INFO`; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_INFO)


def quiet() -> None:
    """Install the filters for this process (idempotent)."""
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningInfo) for f in logger.filters):
            logger.addFilter(_DropLightningInfo())


def quiet_wandb(logger: Any) -> Any:
    """Stop wandb's "The anonymous setting has no effect" warning for a Lightning `WandbLogger`.

    Lightning always passes `anonymous` to `wandb.init` (None unless asked for), and wandb >= 0.19 warns whenever
    the key is present. Removing an unset key changes nothing else.
    """
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger


__all__ = ["quiet", "quiet_wandb"]
