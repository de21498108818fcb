"""`SparsityCallback`: drives a pruner from Lightning's training events."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from sparsetrain.accounting import account, module_flops
from sparsetrain.checkpointing import apply_loader_states
from sparsetrain.granularity import left_dense_text
from sparsetrain.pruners.base import Pruner
from sparsetrain.resume import STATE_PREFIX, differences, flatten, pruner_in_checkpoint
from sparsetrain.targets import candidate_layers


def find_network(pl_module: nn.Module) -> tuple[str, nn.Module]:
    """The submodule holding the network: the one child containing every Conv/Linear, else the module itself.

    Masks and reported layer names are relative to it (`layer1.0.conv1`, not `model.layer1.0.conv1`), so a
    finalized network loads into the plain architecture.
    """
    layers = candidate_layers(pl_module)
    for name, child in pl_module.named_children():
        if layers and len(candidate_layers(child)) == len(layers):
            return name, child
    return "", pl_module


def example_input(trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor | None:
    """One input example, for FLOP counting and channel tracing (no data is consumed when avoidable)."""
    x = getattr(pl_module, "example_input_array", None)
    if torch.is_tensor(x):
        return x[:1]
    dm = trainer.datamodule
    if dm is not None and all(hasattr(dm, k) for k in ("in_chans", "image_size")):
        return torch.zeros(1, dm.in_chans, dm.image_size, dm.image_size)
    if trainer.train_dataloader is None:
        # Under `max_steps` Lightning knows the budget without loading the data; load it as it would anyway.
        trainer.fit_loop.setup_data()
    loader = trainer.train_dataloader
    if loader is not None:
        batch = next(iter(loader))
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return x[:1].detach().cpu()
    return None


class SparsityCallback(pl.Callback):
    """Hosts a pruner: attaches masks before the optimizer is built, updates them around optimizer steps,
    logs sparsity and FLOPs, saves the pruner's state in checkpoints and finalizes at the end of fit.

    Example:
        >>> trainer = pl.Trainer(callbacks=[SparsityCallback(pruner)])  # any sparsetrain Pruner

    Args:
        pruner: The pruning method.
        finalize: At the end of fit, fold the masks into the weights and remove the mask buffers, so the
            network is its plain architecture again (what is tested is what ships).
        log_layers: Log `sparsity/<layer>` at every update event.
        example_input: One input batch (for channel coupling and FLOPs). Default: the module's
            `example_input_array`, else the datamodule's `in_chans`/`image_size`, else the first training batch.
        allow_changed: Pruner keys a resumed checkpoint may have been written with other values of (`*`: all).
            Checkpoints record the pruner's settings; by default a resume with different ones is refused.
    """

    def __init__(
        self,
        pruner: Pruner,
        finalize: bool = True,
        log_layers: bool = True,
        example_input: torch.Tensor | None = None,
        allow_changed: Sequence[str] = (),
    ) -> None:
        if not isinstance(pruner, Pruner):
            raise ValueError(f"SparsityCallback needs a sparsetrain Pruner, got {type(pruner).__name__}")
        self.pruner = pruner
        self.do_finalize = finalize
        self.log_layers = log_layers
        self.example_input = example_input
        self.allow_changed = tuple(allow_changed)
        self.network: nn.Module | None = None
        self.flops: tuple[int, dict[str, int]] | None = None
        self.summary: dict[str, Any] | None = None
        self._example: torch.Tensor | None = None
        self._hook = None
        self._warned_manual = False
        self._fit_steps: int | None = None
        self._dead: set[str] = set()

    @property
    @override
    def state_key(self) -> str:
        return f"{STATE_PREFIX}{self.pruner.key}]"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.pruner.masks is not None:
            return
        _, network = find_network(pl_module)
        total = trainer.estimated_stepping_batches  # also loads the train dataloader
        if total == float("inf"):
            raise ValueError(
                "SparsityCallback needs a finite training budget (schedules are fractions of all optimizer steps): "
                "set max_epochs or max_steps on the Trainer"
            )
        given = self.example_input
        self.attach(network, int(total), given[:1].detach().cpu() if given is not None else None, trainer)
        self._before_model_load(pl_module)
        if self.pruner.skipped:
            rank_zero_warn(left_dense_text(self.pruner.skipped, self.pruner.granularity))
        rank_zero_info(
            f"sparsetrain: {type(self.pruner).__name__} on {len(self.pruner.targets)} layers, "
            f"{self.pruner.target_text()}, {int(total)} optimizer steps"
        )

    def attach(
        self, network: nn.Module, total_steps: int, example: torch.Tensor | None, trainer: pl.Trainer | None = None
    ) -> None:
        """The pruner's masks on `network` (`setup` in a fit; `sparsetrain.restore` outside one)."""
        self.network = network
        if example is None and trainer is not None:
            example = example_input(trainer, trainer.lightning_module)
        self._example = example
        self.pruner.attach(network, total_steps, example)

    def restore(self, checkpoint: dict[str, Any], load_weights: Callable[[], None]) -> None:
        """A checkpoint's network and pruner, in the order a resumed fit loads them: the pruner's state shown
        first (`before_model_load`: a slimmed network is rebuilt so the weights fit), then `load_weights()`,
        then the pruner's own state (its recorded settings checked, as on resume).

        In a fit Lightning calls these steps itself (`_load_model_state` from the module's `on_load_checkpoint`,
        the weights, `load_state_dict`); `sparsetrain.restore` calls this outside one, so both replay one path.
        """
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is not None:
            self._load_model_state(state)
        load_weights()
        if state is not None:
            self.load_state_dict(state)

    def _load_model_state(self, state: dict[str, Any]) -> None:
        self.pruner.before_model_load(state["pruner"])

    def end_fit(self) -> dict[str, Any]:
        """What the end of fit does: the pruner's last step, the accounting for results.json (`summary`, taken
        from the masks before they fold), then `finalize` when asked. Returns the summary."""
        self._remove_hook()
        self.pruner.on_fit_end()
        self.summary = self.report()
        if self.do_finalize:
            self.pruner.finalize()
        return self.summary

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The gradient of the pruner's loss term (`penalty()`), added after each backward of the task loss and
        scaled as Lightning scaled that loss: divided by the accumulation, times the AMP scaler's scale."""
        if not pl_module.automatic_optimization:
            if type(self.pruner).penalty is not Pruner.penalty and not self._warned_manual:
                rank_zero_warn(f"{type(self.pruner).__name__}'s loss term is added under automatic optimization only")
                self._warned_manual = True
            return
        term = self.pruner.penalty()
        if term is None or not term.requires_grad:
            return
        term = term / trainer.accumulate_grad_batches
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # fp16 AMP: the loss's own scaling, no host sync
        (scaler.scale(term) if scaler is not None else term).backward()

    def _before_model_load(self, pl_module: pl.LightningModule) -> None:
        """Show the pruner a resumed checkpoint's state before its weights load: a method that changed the
        architecture (a slimmed network) rebuilds it so the weights fit.

        The one wrap of a module hook, unavoidable: Lightning calls the module's `on_load_checkpoint` before it
        loads the weights and the callbacks' only after them, and no callback hook runs in between."""
        if type(self.pruner).before_model_load is Pruner.before_model_load:
            return
        hook, key = pl_module.on_load_checkpoint, self.state_key

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            state = checkpoint.get("callbacks", {}).get(key)
            if state is not None:
                self._load_model_state(state)
            hook(checkpoint)

        pl_module.on_load_checkpoint = on_load_checkpoint
        pl_module._sparsetrain_load_hook = True

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"SparsityCallback drives one optimizer; configure_optimizers returned {len(trainer.optimizers)}"
            )
        optimizer = trainer.optimizers[0]
        owned = {id(p) for p in self.pruner.extra_parameters()}
        if any(id(p) in owned for group in optimizer.param_groups for p in group["params"]):
            raise ValueError(
                f"{type(self.pruner).__name__}'s own parameters are in the training optimizer: the pruner steps "
                "them itself (build the optimizer from the network's parameters only)"
            )
        steps_per_epoch = None
        if trainer.num_training_batches not in (0, float("inf")):
            steps_per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        self.pruner.on_fit_start(optimizer, [c.scheduler for c in trainer.lr_scheduler_configs], steps_per_epoch)
        device = next(self.network.parameters()).device
        if self._example is not None:
            self.flops = module_flops(self.network, self._example.to(device))
        self._extend_fit(trainer)
        self._hook = optimizer.register_step_post_hook(
            lambda opt, args, kwargs: self.pruner.after_optimizer_step(trainer.global_step, opt)
        )

    def _extend_fit(self, trainer: pl.Trainer) -> None:
        """Give pruners that train several rounds the optimizer steps they need (`Pruner.fit_steps`)."""
        budget = int(trainer.estimated_stepping_batches)
        needed = self.pruner.fit_steps(self.pruner.total_steps)
        self._fit_steps = needed if needed > budget else None
        if needed > budget:
            # Lift only the epoch limit here; `max_steps` is set in `on_train_start`, after Lightning restored its
            # loops from a checkpoint. Set before that, it makes the fit "iteration-based", and `FitLoop.restarting`
            # then treats an epoch a checkpoint finished as unfinished: one batch of a fresh epoch runs inside it.
            trainer.fit_loop.max_epochs = -1
            rank_zero_info(
                f"sparsetrain: {self.pruner.key} runs {needed} optimizer steps in all (the first round {budget}, "
                "later rounds from their rewind step)"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        apply_loader_states(trainer)  # `setup` built the training loader before the checkpoint was restored
        if self._fit_steps is not None:
            trainer.fit_loop.epoch_loop.max_steps = self._fit_steps

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.pruner.on_validation(
                {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.pruner.before_forward(trainer.global_step)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        metrics = self.pruner.before_optimizer_step(trainer.global_step, optimizer)
        if metrics:
            self._sync_masks(trainer)
            metrics = {**self.metrics(), **metrics}  # a method's own values win over the generic ones
            self._warn_dead_layers()
            if trainer.is_global_zero:  # straight to the loggers: an event's values at its own step, never throttled
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=trainer.global_step)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("sparsity/global", self.pruner.global_sparsity(), on_epoch=True, rank_zero_only=True)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end_fit()

    def _warn_dead_layers(self) -> None:
        """Warn once per layer that the allocation pruned completely (it disconnects the network)."""
        dead = {n for n, s in self.pruner.layer_sparsity().items() if s >= 1.0} - self._dead
        if dead:
            rank_zero_warn(
                f"sparsetrain: layers pruned to density 0 (the network is cut there): {sorted(dead)}; "
                "lower pruner.sparsity, use allocation=erk/uniform, or exclude them"
            )
            self._dead |= dead

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        written = pruner_in_checkpoint(checkpoint)
        if written is not None and written != self.pruner.key:
            raise ValueError(
                f"the checkpoint was written by SparsityCallback[{written}], not {self.state_key}: "
                "resume with the same pruner"
            )

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hook()  # also when fit ended with an exception
        if pl_module.__dict__.pop("_sparsetrain_load_hook", False):
            pl_module.__dict__.pop("on_load_checkpoint", None)

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _sync_masks(self, trainer: pl.Trainer) -> None:
        """Rank 0's masks on every rank, through Lightning's strategy (events only, never per step).

        Decisions are made from identical data on every rank; this makes it a guarantee.
        """
        if trainer.world_size <= 1:
            return
        masks = self.pruner.masks
        decided = trainer.strategy.broadcast({k: (v != 0).cpu() for k, v in masks.masks.items()}, src=0)
        for fqn, mask in decided.items():
            masks.set(fqn, mask)
        if self.pruner.masks_weights:
            masks.apply_to_weights()

    def metrics(self) -> dict[str, float]:
        """`sparsity/global`, the granularity's own (`channel_sparsity`: what a channel run's `pruner.sparsity`
        targets), `flops/ratio` and (optionally) `sparsity/<layer>`, from the current masks."""
        out = {"sparsity/global": self.pruner.global_sparsity(), **self.pruner.granularity_metrics()}
        acc = self.pruner.accounting(self._example)  # a method's own (a slimmed network), else the masks'
        if acc is None and self.flops is not None:
            acc = account(self.network, self.flops, self.pruner.mask_dict(), self.pruner.targets)
        if acc is not None:
            out["flops/ratio"] = acc["flops_sparse"] / max(1, acc["flops_dense"])
        if self.log_layers:
            out.update({f"sparsity/{k}": v for k, v in self.pruner.layer_sparsity().items()})
        return out

    def report(self) -> dict[str, Any]:
        """Accounting for results.json, from the masks (call before `finalize`) or the pruner's own."""
        out = self.pruner.accounting(self._example)
        if out is None:
            if self.flops is None or self.pruner.masks is None or not self.pruner.masks.masks:
                return self.summary or {}
            out = account(self.network, self.flops, self.pruner.mask_dict(), self.pruner.targets)
            out.update(self.pruner.granularity_metrics())
        out["pruner_state"] = self.pruner.report()
        return out

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "pruner": self.pruner.state_dict(), "config": flatten(self.pruner.describe())}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        recorded = state_dict.get("config")  # absent in checkpoints written before settings were recorded
        if recorded is not None and "*" not in self.allow_changed:
            diffs = differences(recorded, flatten(self.pruner.describe()), self.allow_changed)
            if diffs:
                raise ValueError(
                    f"the checkpoint was written by {type(self.pruner).__name__} with other settings "
                    f"({'; '.join(diffs)}): resume with the same settings, or pass allow_changed=[...] on purpose"
                )
        self.pruner.load_state_dict(state_dict["pruner"])
