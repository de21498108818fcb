"""Shared machinery of the image-classification data modules.

Small data sets are decoded once into one normalised float tensor per split. They are then batched either
by a standard `DataLoader` or, with `on_device=True`, by `DeviceLoader`, which keeps the tensors on the
accelerator and indexes batches there (per-image loader overhead dominates for 28x28 images). Training
order is a pure function of (seed, epoch) in both modes, so a resumed run sees the same batches.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from sparsetrain.data.augment import random_crop_flip


class DataUnavailableError(RuntimeError):
    """The data set's files are not on this machine (the message says how to get them)."""


class EpochSampler(Sampler[int]):
    """Random order that depends only on (seed, epoch); Lightning calls `set_epoch` every epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class DeviceLoader:
    """Batches of (x, y) indexed from tensors that already live on the training device.

    Under multi-process training each rank takes `perm[rank::world_size]` (equal lengths), the same split
    rule as `DistributedSampler`.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.x)
        if self.shuffle:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            idx = torch.arange(n)
        if self.world_size > 1:
            per_rank = n // self.world_size
            idx = idx[self.rank :: self.world_size][:per_rank]
        return idx.to(self.x.device)

    def __len__(self) -> int:
        n = len(self.x) // self.world_size if self.world_size > 1 else len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        idx = self._indices()
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.x[sel], self.y[sel]
        self.epoch += 1  # plain loops that never call set_epoch still get a new order each pass


def _check(value: Any, ok: bool, key: str, allowed: str) -> None:
    if not ok:
        raise ValueError(f"data.{key} must be {allowed}, got {value!r}")


class TensorDataModule(pl.LightningDataModule):
    """Base for data sets decoded into tensors: splits, normalisation, resizing, loaders, augmentation.

    Subclasses set `name`, `in_chans`, `num_classes`, `native_size`, `mean`, `std` and implement
    `load_split(train: bool) -> (uint8 or float images NCHW in [0, 1] or 0..255, int64 labels)`.

    Args:
        batch_size: Training batch size.
        val_fraction: Fraction of the training set held out (seeded) for validation and checkpoint selection.
        seed: Seed of the split and of the training order.
        num_workers: DataLoader workers (ignored with `on_device`).
        on_device: Keep the tensors on the training device and batch there.
        image_size: Resize to this side length (None = native).
        eval_batch_size: Validation/test batch size (defaults to `batch_size`).
        augment: Random crop (4-px padding) and horizontal flip on training batches, done batched on device.
    """

    name = "tensor"
    in_chans = 1
    num_classes = 10
    native_size = 28
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    flip = True

    def __init__(
        self,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        on_device: bool = False,
        image_size: int | None = None,
        eval_batch_size: int | None = None,
        augment: bool = False,
    ) -> None:
        super().__init__()
        _check(batch_size, isinstance(batch_size, int) and batch_size >= 1, "batch_size", "an integer >= 1")
        _check(val_fraction, 0.0 <= val_fraction < 1.0, "val_fraction", "in [0, 1)")
        _check(num_workers, isinstance(num_workers, int) and num_workers >= 0, "num_workers", "an integer >= 0")
        _check(
            image_size,
            image_size is None or (isinstance(image_size, int) and image_size >= 4),
            "image_size",
            "null or an integer >= 4",
        )
        eval_batch_size = eval_batch_size or batch_size
        _check(
            eval_batch_size,
            isinstance(eval_batch_size, int) and eval_batch_size >= 1,
            "eval_batch_size",
            "an integer >= 1",
        )
        self.batch_size, self.val_fraction, self.seed = batch_size, val_fraction, seed
        self.num_workers, self.on_device, self.augment = num_workers, on_device, augment
        self.eval_batch_size = eval_batch_size
        self.image_size = image_size or self.native_size
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # --------------------------------------------------------------------------------------- decoding
    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if self.image_size != x.shape[-1]:
            x = torch.nn.functional.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=self.image_size < x.shape[-1],
            )
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def prepare_data(self) -> None:
        """Check the files exist (raises `DataUnavailableError` with how to get them)."""
        self.locate()

    def locate(self) -> Any:
        """Find the data on disk; subclasses raise `DataUnavailableError` when it is missing."""
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        x, y = self.load_split(train=True)
        x, y = self._normalise(x), y.long()
        n_val = round(self.val_fraction * len(x))
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        self.splits["train"] = (x[train_idx], y[train_idx])
        self.splits["val"] = (x[val_idx], y[val_idx])
        xt, yt = self.load_split(train=False)
        self.splits["test"] = (self._normalise(xt), yt.long())
        if self.on_device:
            device = self._device()
            self.splits = {k: (a.to(device), b.to(device)) for k, (a, b) in self.splits.items()}

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split as (images, labels) tensors (after `setup`)."""
        return self.splits["train"]

    # --------------------------------------------------------------------------------------- loaders
    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, split: str, train: bool):
        x, y = self.splits[split]
        batch = self.batch_size if train else self.eval_batch_size
        if self.on_device:
            rank, world = self._rank() if train else (0, 1)
            return DeviceLoader(
                x, y, batch, shuffle=train, drop_last=train, seed=self.seed, rank=rank, world_size=world
            )
        sampler = EpochSampler(len(x), self.seed) if train else None
        return DataLoader(
            TensorDataset(x, y),
            batch_size=batch,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if self.augment and trainer is not None and trainer.training:
            x, y = batch
            return random_crop_flip(x, padding=4, flip=self.flip), y
        return batch
