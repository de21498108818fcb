"""ImageNet, or any ImageFolder tree with `train/` and `val/` class folders."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from sparsetrain.data.base import DataUnavailableError, EpochSampler, ResumableDataLoader


class ImageNetDataModule(pl.LightningDataModule):
    """ImageFolder data with the standard ImageNet transforms.

    Train: RandomResizedCrop(image_size) + horizontal flip; eval: Resize(image_size/0.875) + CenterCrop.
    `val/` is the test set; validation is carved (seeded) from `train/`.

    Args:
        root: Directory with `train/<class>/*` and `val/<class>/*`.
        batch_size: Training batch size.
        val_fraction: Fraction of `train/` held out for validation.
        seed: Split and order seed.
        num_workers: Decoding workers.
        image_size: Crop size (224).
        eval_batch_size: Validation/test batch size.
        num_classes: Used only when `root/train` does not exist yet.
        on_device: Not supported (ImageNet does not fit on a device).
    """

    name = "imagenet"
    in_chans = 3
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(
        self,
        root: str,
        batch_size: int = 256,
        val_fraction: float = 0.01,
        seed: int = 0,
        num_workers: int = 8,
        image_size: int | None = 224,
        eval_batch_size: int | None = None,
        num_classes: int = 1000,
        on_device: bool = False,
    ) -> None:
        super().__init__()
        if on_device:
            raise ValueError("data.on_device is not supported for imagenet (decode with workers instead)")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"data.batch_size must be an integer >= 1, got {batch_size!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction!r}")
        self.root, self.batch_size, self.val_fraction, self.seed = Path(root), batch_size, val_fraction, seed
        self.num_workers, self.image_size = num_workers, image_size or 224
        self.eval_batch_size = eval_batch_size or batch_size
        train = self.root / "train"
        self.num_classes = sum(1 for p in train.iterdir() if p.is_dir()) if train.is_dir() else num_classes

    def prepare_data(self) -> None:
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise DataUnavailableError(
                    f"ImageNet folder {self.root / split} not found: expected {self.root}/train/<class>/*.JPEG and "
                    f"{self.root}/val/<class>/*.JPEG (set data.root)"
                )

    def _transforms(self, train: bool):
        from torchvision import transforms as T  # noqa: N812

        normalize = T.Normalize(self.mean, self.std)
        if train:
            return T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
        return T.Compose(
            [T.Resize(int(self.image_size / 0.875)), T.CenterCrop(self.image_size), T.ToTensor(), normalize]
        )

    def setup(self, stage: str | None = None) -> None:
        from torchvision.datasets import ImageFolder

        self.prepare_data()
        train_aug = ImageFolder(str(self.root / "train"), transform=self._transforms(True))
        train_eval = ImageFolder(str(self.root / "train"), transform=self._transforms(False))
        perm = torch.randperm(len(train_aug), generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_val = round(self.val_fraction * len(perm))
        self.train_set = Subset(train_aug, perm[n_val:])
        self.val_set = Subset(train_eval, perm[:n_val])
        self.test_set = ImageFolder(str(self.root / "val"), transform=self._transforms(False))

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(  # a mid-epoch resume skips the batches already trained on
            self.train_set,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(self.train_set), self.seed),
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=True,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.eval_batch_size, num_workers=self.num_workers)
