"""Fashion-MNIST (Xiao et al. 2017): 60k/10k 28x28 gray images of 10 clothing classes."""

from __future__ import annotations

import gzip
import logging
import socket
from pathlib import Path

import numpy as np
import torch

from sparsetrain.data.base import DataUnavailableError, TensorDataModule

log = logging.getLogger(__name__)
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian's dataset-fashion-mnist installs them
FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped): magic (2 zero bytes, dtype code, ndim), big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _has_files(directory: Path) -> bool:
    return all((directory / f).exists() for pair in FILES.values() for f in pair)


class FashionMNISTDataModule(TensorDataModule):
    """Fashion-MNIST from the standard idx `.gz` files.

    Looks in `root`, then in the Debian package's directory (`SYSTEM_DIR`), then tries torchvision's
    download into `root` (works on networked machines).

    Args:
        root: Directory holding the four idx `.gz` files.
        **kwargs: See `TensorDataModule`.
    """

    name = "fashion_mnist"
    in_chans, num_classes, native_size = 1, 10, 28
    mean, std = (0.2860,), (0.3530,)
    flip = True

    def __init__(self, root: str = "data/fashion_mnist", **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self._dir: Path | None = None

    def locate(self) -> Path:
        if self._dir is not None:
            return self._dir
        for candidate in (self.root, self.root / "FashionMNIST" / "raw", SYSTEM_DIR):
            if _has_files(candidate):
                self._dir = candidate
                if candidate == SYSTEM_DIR:
                    log.info(
                        "Fashion-MNIST: not in data.root=%s, reading the Debian package's %s", self.root, candidate
                    )
                return candidate
        if self._download():
            self._dir = self.root / "FashionMNIST" / "raw"
            return self._dir
        raise DataUnavailableError(
            f"Fashion-MNIST not found in {self.root} or {SYSTEM_DIR}, and download failed: install the Debian "
            f"package (sudo apt-get install dataset-fashion-mnist) or put the four idx .gz files in {self.root}"
        )

    def _download(self) -> bool:
        from torchvision.datasets import FashionMNIST

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(5)
        try:
            FashionMNIST(str(self.root), train=True, download=True)
            FashionMNIST(str(self.root), train=False, download=True)
            return _has_files(self.root / "FashionMNIST" / "raw")
        except Exception as e:  # noqa: BLE001 - offline, proxy, HTTP errors: all mean "no download"
            log.info("Fashion-MNIST download failed: %s", e)
            return False
        finally:
            socket.setdefaulttimeout(previous)

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        directory = self.locate()
        images, labels = (read_idx(directory / f) for f in FILES[train])
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
