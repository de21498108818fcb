"""A run's loggers from the `logger` config group (`conf/logger/*.yaml`): CSV always, W&B when configured.

Kept apart from `app.py` because W&B needs its own bookkeeping: a mode that never blocks without a network, one
W&B run per sweep job, and a run id kept in the run directory so a resumed run continues its W&B run.
"""

from __future__ import annotations

import os
import secrets
import string
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from sparsetrain.quiet import quiet_wandb

WANDB_ID_FILE = "wandb_id.txt"  # in the run directory: a run resumed from its checkpoint continues this W&B run


def wandb_mode() -> str:
    """`online` only when the user configured an API key; never blocks without a network."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def hydra_job() -> tuple[str | None, list[str]]:
    """`(sweep group, this job's overrides)` from Hydra; `(None, [])` outside Hydra.

    The group is the sweep directory's last two parts (`2024-01-01/12-00-00`) in a multirun, None in a single run.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except ValueError:
        return None, []
    group = "/".join(Path(str(hc.sweep.dir)).parts[-2:]) if hc.mode == RunMode.MULTIRUN else None
    return group, [str(o) for o in hc.overrides.task]


def wandb_run_id(run_dir: Path, ckpt_path: str | None) -> tuple[str, bool]:
    """This run's W&B id and whether it continues an earlier run.

    A run resumed from `ckpt_path` continues the W&B run of the run directory that holds the checkpoint
    (`<run>/checkpoints/x.ckpt` -> `<run>/wandb_id.txt`), or of its own directory; any other run gets a new id.
    Rank zero records the id in `run_dir/wandb_id.txt`.
    """
    found = None
    if ckpt_path:
        for d in (Path(ckpt_path).resolve().parent.parent, run_dir):
            if (d / WANDB_ID_FILE).is_file():
                found = (d / WANDB_ID_FILE).read_text().strip() or None
                if found:
                    break
    alphabet = string.ascii_lowercase + string.digits  # W&B's own id alphabet and length
    run_id = found or "".join(secrets.choice(alphabet) for _ in range(8))
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / WANDB_ID_FILE).write_text(run_id + "\n")
    return run_id, found is not None


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """CSV always (`run_dir/csv/metrics.csv`); W&B when `cfg.logger.wandb` is set (offline unless a key is set)
    and `WANDB_MODE` is not `disabled` (W&B's own off switch, honoured before wandb is imported: a machine
    without wandb installed runs with it).

    The W&B run is this job's own: in a multirun sweep its `group` is the sweep and its name the job's overrides
    (`logger.wandb.group`/`name` override both); resumed from a checkpoint, it continues the checkpoint's run.
    """
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is not None and wandb_cfg.get("enabled", True) and wandb_mode() != "disabled":
        group, overrides = hydra_job()
        run_id, resumed = wandb_run_id(run_dir, cfg.get("ckpt_path"))
        loggers.append(
            quiet_wandb(
                WandbLogger(
                    project=wandb_cfg.get("project", "sparsetrain"),
                    name=wandb_cfg.get("name") or " ".join(overrides) or None,
                    group=wandb_cfg.get("group") or group,
                    id=run_id,
                    resume="allow" if resumed else None,
                    save_dir=str(run_dir),
                    offline=wandb_mode() != "online",
                    config=OmegaConf.to_container(cfg, resolve=True),
                )
            )
        )
    return loggers


def summarize_wandb(loggers: list[Logger], results: Mapping[str, Any]) -> None:
    """Put the numeric results (test accuracy, sparsity, FLOPs, ...) in the W&B run's summary, if there is one."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            scalars = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            logger.experiment.summary.update(scalars)


def finish_wandb(failed: bool) -> None:
    """End this process's W&B run, so the next job of a sweep (same process) starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


__all__ = ["WANDB_ID_FILE", "build_loggers", "finish_wandb", "summarize_wandb", "wandb_mode", "wandb_run_id"]
