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


class ResumableEpochs:
    """Lightning's resumable-loader protocol (`state_dict` / `load_state_dict`) for a loader whose order is a
    pure function of (seed, epoch): the checkpoint records how many batches of which epoch were handed out, and
    a run resumed from a checkpoint written mid-epoch skips exactly those, so it trains on the batches the
    uninterrupted run would have. Lightning fetches no batch ahead of a loader with a length, so the count is
    what training consumed when the checkpoint was written.

    `position` is the number of batches of the current pass handed out so far (the data module keys its
    augmentation randomness on it).
    """

    position = 0
    _resume: tuple[int, int] | None = None

    def _epoch(self) -> int:
        """The pass's epoch, from the sampler Lightning sets it on (or its distributed wrapper)."""
        return getattr(self.sampler, "epoch", 0)

    def _set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "batches": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))
        self._set_epoch(self._resume[0])  # before Lightning's `set_epoch`, which restores the same epoch

    def _skip(self) -> int:
        """Batches of this pass to leave out (a resumed mid-epoch checkpoint), once."""
        resume, self._resume = self._resume, None
        return resume[1] if resume is not None and resume[0] == self._epoch() else 0

    def _counted(self, batches):
        """Yield `batches` (an iterator), keeping `position` up to date."""
        for batch in batches:
            self.position += 1
            yield batch


class DeviceLoader(ResumableEpochs):
    """Batches of (x, y) indexed from tensors that already live on the training device.

    The shuffled order comes from an `EpochSampler` in `.sampler`, where Lightning sets the epoch before
    every epoch (a resumed run included; `batch_sampler` is None, as for a `DataLoader` batched by its
    sampler, which is what Lightning looks for). Under multi-process training each rank takes
    `perm[rank::world_size]` (equal lengths), the same split rule as `DistributedSampler`.
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
        self.batch_sampler = None
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.sampler = EpochSampler(len(x), seed)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _indices(self) -> torch.Tensor:
        n = len(self.x)
        idx = torch.tensor(list(self.sampler), dtype=torch.long) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            per_rank = n // self.world_size
            idx = idx[self.rank :: self.world_size][:per_rank]
        return idx.to(self.x.device)

    def __len__(self) -> int:
        n = len(self.x) // self.world_size if self.world_size > 1 else len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        idx, skip = self._indices(), self._skip()
        self.position = skip
        for b in range(skip, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            self.position += 1
            yield self.x[sel], self.y[sel]
        self.set_epoch(self.epoch + 1)  # plain loops that never call set_epoch still get a new order each pass


class ResumableDataLoader(ResumableEpochs, DataLoader):
    """A `DataLoader` over an `EpochSampler` that resumes mid-epoch (see `ResumableEpochs`).

    Skipped batches are drawn from the sampler only (no sample is loaded for them). Under DDP Lightning wraps
    the sampler in a distributed one; the skip then counts this rank's batches, which is what it recorded.
    """

    def __iter__(self):
        """One pass (a generator), its skip decided at the first batch, not at `iter()`: the iterator a run
        trains on is created while Lightning sets up the data (early, for `estimated_stepping_batches`), before a
        resumed checkpoint's loader position reaches the loader (`apply_loader_states`, at train start); decided
        at `iter()`, the skip was always 0."""
        skip = self._skip()
        batches = self._skipping(skip) if skip else super().__iter__()
        self.position = skip
        yield from self._counted(batches)

    def _skipping(self, skip: int):
        """The pass with its first `skip` batches left out, without loading them (one pass: workers as the
        loader's, but not kept alive)."""
        indices = list(self.batch_sampler)[skip:]
        workers = {"prefetch_factor": self.prefetch_factor} if self.num_workers > 0 else {}
        loader = DataLoader(
            self.dataset,
            batch_sampler=indices,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            timeout=self.timeout,
            worker_init_fn=self.worker_init_fn,
            multiprocessing_context=self.multiprocessing_context,
            **workers,
        )
        return iter(loader)


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
        if train:
            return ResumableDataLoader(
                TensorDataset(x, y),
                batch_size=batch,
                sampler=EpochSampler(len(x), self.seed),
                drop_last=True,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
            )
        return DataLoader(
            TensorDataset(x, y),
            batch_size=batch,
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
        # a training batch is (x, y); Lightning's model summary sends `example_input_array` alone through here
        if self.augment and trainer is not None and trainer.training and isinstance(batch, (list, tuple)):
            x, y = batch
            return random_crop_flip(x, padding=4, flip=self.flip, generator=self._augment_generator(x.device)), y
        return batch

    def _augment_generator(self, device: torch.device) -> torch.Generator | None:
        """A generator seeded by (seed, rank, epoch, batch of the epoch): the same crops and flips for the same batch,
        so a run resumed from a mid-epoch checkpoint augments exactly as the uninterrupted run (torch's global
        generator is not in checkpoints)."""
        loader = self.trainer.train_dataloader
        position = getattr(loader, "position", None)
        if position is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(hash((self.seed, self.trainer.global_rank, self.trainer.current_epoch, position)) & (2**62 - 1))
        return g
