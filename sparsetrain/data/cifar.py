"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparsetrain.data.base import DataUnavailableError, TensorDataModule


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10 (`root/cifar-10-batches-py`, the python pickle batches torchvision reads).

    Args:
        root: Parent directory of the extracted archive.
        download: Let torchvision download the archive (networked machines).
        augment: Random crop (4-px padding) + horizontal flip on training batches.
        **kwargs: See `TensorDataModule`.
    """

    name = "cifar10"
    in_chans, num_classes, native_size = 3, 10, 32
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    folder = "cifar-10-batches-py"

    def __init__(self, root: str = "data/cifar", download: bool = False, augment: bool = True, **kwargs) -> None:
        super().__init__(augment=augment, **kwargs)
        self.root, self.download = Path(root), download

    def _dataset(self, train: bool):
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if self.num_classes == 10 else CIFAR100
        return cls(str(self.root), train=train, download=self.download)

    def locate(self) -> Path:
        path = self.root / self.folder
        if not path.is_dir() and not self.download:
            raise DataUnavailableError(
                f"{self.name} not found: expected {path} (torchvision's format); set data.download=true on a "
                f"networked machine or extract the archive into {self.root}"
            )
        return path

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self.locate()
        try:
            ds = self._dataset(train)
        except RuntimeError as e:
            raise DataUnavailableError(f"{self.name} in {self.root} is unreadable: {e}") from None
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
        return x, torch.tensor(ds.targets, dtype=torch.int64)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (`root/cifar-100-python`)."""

    name = "cifar100"
    num_classes = 100
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    folder = "cifar-100-python"
