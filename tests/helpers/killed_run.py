"""A run that dies with SIGKILL (no handler, no cleanup) once it reaches an optimizer step.

    python -m tests.helpers.killed_run OUTPUT_DIR KILL_AT_STEP override [override ...]

Used by the resume tests to leave behind exactly what a killed job leaves: the run directory with whatever
`checkpoints/last.ckpt` was written before the kill.
"""

from __future__ import annotations

import os
import signal
import sys

import pytorch_lightning as pl

from tests.helpers.config import CONF_DIR


class KillAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from sparsetrain.app import run

    output_dir, kill_at, overrides = argv[0], int(argv[1]), argv[2:]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.output_dir = output_dir
    run(cfg, callbacks=[KillAt(kill_at)])


if __name__ == "__main__":
    main(sys.argv[1:])
