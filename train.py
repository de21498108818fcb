"""Train a (sparse) classifier: `python train.py +pruner=granet`. Hydra composes `conf/train.yaml`.

`python train.py --help` lists the pruners and their keys. A configuration mistake, Hydra's included, ends in
one line `error: ...` and exit code 2, before any model or data is built and before a run directory is created
(every job of a sweep is checked by the Hydra callback `sparsetrain.hydra_checks.CheckJobs` before the first
one starts).
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
import sparsetrain.schema  # noqa: F401  (the structured configs `conf/train.yaml` types its groups with)
from sparsetrain.errors import EXIT_CODE, one_line_error

log = logging.getLogger("sparsetrain")
CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Run one job; returns the final validation accuracy so Hydra sweepers can optimise it."""
    try:
        done = finished_result(cfg)
        if done is not None:
            return done
        continue_interrupted_job(cfg)
        from sparsetrain.config import check_run

        check_run(cfg, CONF)  # again inside the job: sweepers other than the basic one choose jobs as they go
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
    recorded = json.loads(results.read_text())
    if "settings" in recorded:  # written before results.json recorded its settings: skipped unchecked
        from sparsetrain.resume import differences, run_settings

        allowed = cfg.get("resume_allow_changes") or ()
        diffs = differences(recorded["settings"], json.loads(json.dumps(run_settings(cfg))), allowed, "results.json")
        if diffs:
            raise ValueError(
                f"skip_done: {results} was written with other settings ({'; '.join(diffs)}): delete it to run the "
                "job again with these, or name the keys in resume_allow_changes=[...] to keep it"
            )
    log.info("skip: %s exists (skip_done=true)", results)
    return recorded.get("val_acc") or 0.0


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


SHOW_FLAGS = ("--help", "-h", "--cfg", "-c")


def with_resolve(argv: list[str]) -> list[str]:
    """`argv` with `--resolve` added to `--help` and `--cfg` (the config is shown with its values resolved)."""
    shows = any(a in SHOW_FLAGS or a.startswith("--cfg=") for a in argv[1:])
    return [*argv, "--resolve"] if shows and "--resolve" not in argv else argv


def cli() -> None:
    """Hand the command line to Hydra; a configuration mistake is one line and exit code 2.

    Hydra's own composition errors are raised to here (`hydra_errors_raised`) and made one line; the job(s) are
    checked by the callback `CheckJobs`, which prints its line and exits itself (Hydra would only warn).
    """
    from sparsetrain.hydra_checks import hydra_errors_raised

    sys.argv = with_resolve(sys.argv)
    try:
        with hydra_errors_raised():
            main()
    except BrokenPipeError:  # `--help | head` closed the pipe: quiet, as Python's docs recommend
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as e:
        message = one_line_error(e, CONF)
        if message is None or os.environ.get("SPARSETRAIN_DEBUG"):
            raise
        sys.stderr.write(f"error: {message}\n")
        sys.exit(EXIT_CODE)


if __name__ == "__main__":
    cli()
