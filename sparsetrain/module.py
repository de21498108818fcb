"""LightningModule for image classification around any `nn.Module`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from sparsetrain.optim import build_optimizer, lr_factor, param_groups


class ClassificationModule(pl.LightningModule):
    """Cross-entropy classification with step-based LR schedules.

    Args:
        model: Any classifier mapping images to logits.
        num_classes: Number of classes (for the accuracy metrics).
        optim: Optimizer settings: `name` (sgd|adamw), `lr`, `weight_decay`, `momentum`, `nesterov`, `betas`,
            `no_decay_norm_bias`, `schedule` (cosine|multistep|constant), `warmup` (fraction of all steps),
            `milestones` (fractions), `gamma`, `min_lr_factor`.
        label_smoothing: Cross-entropy label smoothing.
        example_input_shape: `(C, H, W)` of one input, used for FLOP counting and model summaries.
        compile: Run the training, validation and test steps through `torch.compile(model)` (PyTorch 2).
        compile_options: Keyword arguments of `torch.compile` (`backend`, `mode`, `dynamic`, `fullgraph`, ...).

    Compiling: the compiled wrapper is built at the first step, after `SparsityCallback.setup` put the masks and
    parametrizations on the network, and is never registered as a child: `state_dict`, checkpoints, exports and
    resumes keep the network's own keys (no `_orig_mod.` prefix), and `forward` (model summaries, FLOP counting,
    a user's inference) stays eager. Masks change in place at events, which the compiled graph reads as inputs
    without recompiling; a switch of a method's phase (a soft mask enabled or hardened), of train/eval mode or a
    change of the network's structure (finalize, slimming) recompiles once.

    Metrics: `train/loss`, `val/loss`, `val/acc`, `test/loss`, `test/acc`.

    A fit that ends on `max_steps` validates at its last step, wherever that falls in an epoch: a short budget
    (`trainer.max_steps=30` on a long epoch) still reports `val/acc` and gets a best checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optim: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        example_input_shape: tuple[int, int, int] | None = None,
        compile: bool = False,  # noqa: A002 - the config key's name
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if not isinstance(compile, bool):
            raise ValueError(f"model.compile must be true or false, got {compile!r}")
        self.model = model
        self.compile_enabled = compile  # not `self.compile`: that is `nn.Module.compile`
        self.compile_options = dict(compile_options or {})
        self.optim = dict(optim or {"name": "sgd", "lr": 0.1})
        self.label_smoothing = label_smoothing
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        if example_input_shape is not None:
            self.example_input_array = torch.zeros(1, *example_input_shape)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def network(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """What the steps call: the network, or its compiled wrapper when `compile` is on.

        Built lazily and kept outside the module's children (so outside `state_dict`); rebuilt if `model` was
        replaced. Dynamo guards on the network's structure and its tensors' metadata, so in-place mask updates
        reuse the graph and a changed structure recompiles.
        """
        if not self.compile_enabled:
            return self.model
        compiled = self.__dict__.get("_compiled")
        if compiled is None or compiled._orig_mod is not self.model:
            compiled = torch.compile(self.model, **self.compile_options)
            self.__dict__["_compiled"] = compiled  # not `self._compiled = ...`: that would register a child
        return compiled

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.network()(x) if self.compile_enabled else self(x)

    @override
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_compiled", None)  # a compiled wrapper does not pickle; it is rebuilt at the next step
        return state

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self._logits(x), y, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        trainer = self.trainer
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True  # Lightning validates before stopping; at max_steps alone it would not

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self._logits(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        metric.update(logits, y)
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=True)

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc)

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc)

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        groups = param_groups(self, o.get("weight_decay", 0.0), o.get("no_decay_norm_bias", True))
        optimizer = build_optimizer(
            groups,
            o.get("name", "sgd"),
            o["lr"],
            o.get("momentum", 0.9),
            o.get("nesterov", False),
            o.get("betas", (0.9, 0.999)),
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup_steps = round(o.get("warmup", 0.0) * total)
        schedule = o.get("schedule", "cosine")
        milestones = tuple(o.get("milestones", (0.5, 0.75)))
        gamma, floor = o.get("gamma", 0.1), o.get("min_lr_factor", 0.0)
        lr_factor(0, total, schedule, warmup_steps, milestones, gamma, floor)  # validates the schedule name

        def factor(step: int) -> float:
            return lr_factor(step, total, schedule, warmup_steps, milestones, gamma, floor)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
