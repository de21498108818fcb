"""Train a (sparse) classifier: `python train.py +pruner=granet`. Hydra composes `conf/train.yaml`.

`python train.py --help` lists the pruners and their keys. A configuration mistake, Hydra's included, ends in
one line `error: ...` and exit code 2, before any model or data is built and before a run directory is created.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import sparsetrain.cli  # noqa: F401  (resolvers: `sparsity_default` for --cfg/--resolve, the pruner list for --help)
from sparsetrain.errors import EXIT_CODE, one_line_error

log = logging.getLogger("sparsetrain")
CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Run one job; returns the final validation accuracy so Hydra sweepers can optimise it."""
    done = finished_result(cfg)
    if done is not None:
        return done
    continue_interrupted_job(cfg)
    try:
        from sparsetrain.config import check_run

        check_run(cfg, CONF)  # again inside the job: sweepers other than the basic one choose jobs late
        from sparsetrain.app import run

        return run(cfg)
    except Exception as e:  # user errors become one line; anything else keeps its traceback
        message = one_line_error(e, CONF)
        if message is None or os.environ.get("SPARSETRAIN_DEBUG"):
            raise
        log.error("error: %s", message)
        sys.exit(EXIT_CODE)


def finished_result(cfg: DictConfig) -> float | None:
    """With `skip_done`, the recorded `val_acc` of a job whose run directory already holds `results.json` (the job
    is not run again, so a study's sweep resumes where it stopped); None when the job must run."""
    if not cfg.get("skip_done"):
        return None
    from hydra.core.hydra_config import HydraConfig

    results = Path(HydraConfig.get().runtime.output_dir) / "results.json"
    if not results.exists():
        return None
    log.info("skip: %s exists (skip_done=true)", results)
    return json.loads(results.read_text()).get("val_acc") or 0.0


def continue_interrupted_job(cfg: DictConfig) -> None:
    """With `skip_done`, a job stopped before its end (its `checkpoints/last.ckpt` but no `results.json`) resumes
    from that checkpoint instead of starting over."""
    if not cfg.get("skip_done") or cfg.get("ckpt_path"):
        return
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        log.info("resuming the interrupted job from %s", run_dir / "checkpoints" / "last.ckpt")
        with open_dict(cfg):
            cfg.ckpt_path = str(run_dir)


def cli() -> None:
    """Check the command line (one line and exit 2 on a mistake), then hand it to Hydra."""
    from sparsetrain.cli import check_command_line

    try:
        sys.argv = check_command_line(sys.argv, CONF)
    except Exception as e:
        message = one_line_error(e, CONF)
        if message is None or os.environ.get("SPARSETRAIN_DEBUG"):
            raise
        sys.stderr.write(f"error: {message}\n")
        sys.exit(EXIT_CODE)
    main()


if __name__ == "__main__":
    cli()
