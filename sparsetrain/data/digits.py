"""scikit-learn's 8x8 handwritten digits (1797 images, 16 gray levels)."""

from __future__ import annotations

import torch

from sparsetrain.data.base import TensorDataModule


class DigitsDataModule(TensorDataModule):
    """Digits 8x8; there is no official test split, so a seeded 20 % test split is carved first.

    Args:
        test_fraction: Fraction held out as the test set.
        **kwargs: See `TensorDataModule`.
    """

    name = "digits"
    in_chans, num_classes, native_size = 1, 10, 8
    mean, std = (0.3,), (0.38,)
    flip = False

    def __init__(self, test_fraction: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction = test_fraction

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.int64)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))  # fixed test split
        n_test = round(self.test_fraction * len(x))
        idx = perm[n_test:] if train else perm[:n_test]
        return x[idx], y[idx]
