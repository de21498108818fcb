"""`checkpoints/last.ckpt`: always the newest state of a run.

Lightning's `save_last` writes `last.ckpt` only when its own checkpoint triggers (an epoch-end validation by
default), so a run on a step budget, an IMP run whose rounds outlast the epoch count, or a run killed mid-epoch
was left with an old state that resume and export then used. `LatestCheckpoint` writes it

- every `every_n_steps` optimizer steps, or every `every_minutes` of training when no step period is set,
- after every validation (the state then holds what the validation recorded: IMP's round accuracy, the
  best-model tracker),
- at every epoch end without validation, and
- at the end of fit, before the pruner finalizes (so the file is resumable and `sparsetrain.export`
  replays the same finalization the run did).

A checkpoint written mid-epoch resumes mid-epoch: the built-in data loaders implement Lightning's resumable
loader protocol (`sparsetrain.data.base.ResumableEpochs`), so the resumed run trains on the batches the
uninterrupted one would have. Lightning writes each file atomically (a temporary file, then a rename), so a
kill during a save leaves the previous `last.ckpt` intact.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from typing_extensions import override

LAST = "last"


class LatestCheckpoint(ModelCheckpoint):
    """`<dirpath>/last.ckpt`, rewritten at the events in the module docstring.

    Args:
        dirpath: The run's `checkpoints/` folder.
        every_n_steps: Period in optimizer steps; None: by wall time instead.
        every_minutes: Period in minutes of training when `every_n_steps` is None; None with `every_n_steps`
            None: only at validations, epoch ends and the end of fit.
    """

    def __init__(
        self, dirpath: str | Path, every_n_steps: int | None = None, every_minutes: float | None = 10.0
    ) -> None:
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"checkpoint_every_n_steps must be null or an integer >= 1, got {every_n_steps!r}")
        if every_minutes is not None and not every_minutes > 0:
            raise ValueError(f"checkpoint_every_minutes must be null or > 0, got {every_minutes!r}")
        interval = timedelta(minutes=every_minutes) if every_n_steps is None and every_minutes else None
        super().__init__(
            dirpath=str(dirpath),
            filename=LAST,
            monitor=None,
            save_top_k=1,
            save_last=False,
            enable_version_counter=False,  # overwrite: a resumed run in the same folder keeps one last.ckpt
            every_n_train_steps=every_n_steps,
            train_time_interval=interval,
        )
        self.every_n_steps, self.every_minutes = every_n_steps, every_minutes

    @property
    @override
    def state_key(self) -> str:
        return "LatestCheckpoint"  # one per run, whatever its period (a resume may change the period)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        apply_loader_states(trainer)

    def save_now(self, trainer: pl.Trainer, again: bool = False) -> None:
        """Write `last.ckpt` of the current state (`again`: even when this step was saved already)."""
        if again and self._last_global_step_saved == trainer.global_step:
            self._last_global_step_saved = -1
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.save_now(trainer, again=True)  # the validation changed state the step's file lacks

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_save_on_train_epoch_end(trainer):  # no validation follows to write it
            self.save_now(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save_now(trainer, again=True)


def apply_loader_states(trainer: pl.Trainer) -> None:
    """Hand a resumed checkpoint's data-loader positions to the loaders, before the first batch.

    Lightning applies them only when it builds the training loader after restoring the checkpoint. A callback
    or `configure_optimizers` that asks for `trainer.estimated_stepping_batches` (every schedule that is a
    fraction of the run does) builds it before, and the positions were then dropped: a mid-epoch resume
    restarted its epoch from the first batch. Called from `on_train_start` (restored, nothing trained yet);
    a no-op when there is nothing to apply.
    """
    fit_loop = trainer.fit_loop
    if getattr(fit_loop, "_combined_loader_states_to_load", None):
        fit_loop._load_combined_loader_states()  # Lightning's own loader, once: it clears the pending states


__all__ = ["LAST", "LatestCheckpoint", "apply_loader_states"]
