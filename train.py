"""Train a (sparse) classifier: `python train.py +pruner=granet`. Hydra composes `conf/train.yaml`."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

log = logging.getLogger("sparsetrain")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Run one job; returns the final validation accuracy so Hydra sweepers can optimise it."""
    from sparsetrain.app import run
    from sparsetrain.errors import one_line_error

    try:
        return run(cfg)
    except Exception as e:  # user errors become one line; anything else keeps its traceback
        message = one_line_error(e)
        if message is None or os.environ.get("SPARSETRAIN_DEBUG"):
            raise
        log.error("error: %s", message)
        sys.exit(2)


if __name__ == "__main__":
    main()
