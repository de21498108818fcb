"""Random but learnable images: for tests and benchmarks, no files needed."""

from __future__ import annotations

import torch

from sparsetrain.data.base import TensorDataModule


class FakeDataModule(TensorDataModule):
    """Gaussian images whose mean depends on the label (so a small net learns in a few steps).

    Args:
        num_samples: Training-set size (validation is carved from it).
        num_test: Test-set size.
        in_chans: Channels.
        image_size: Side length.
        num_classes: Classes.
        **kwargs: See `TensorDataModule`.
    """

    name = "fake"
    mean, std = (0.0,), (1.0,)

    def __init__(
        self,
        num_samples: int = 512,
        num_test: int = 128,
        in_chans: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        **kwargs,
    ) -> None:
        for key, value in (
            ("num_samples", num_samples),
            ("num_test", num_test),
            ("in_chans", in_chans),
            ("num_classes", num_classes),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{key} must be an integer >= 1, got {value!r}")
        self.native_size = image_size
        super().__init__(image_size=image_size, **kwargs)
        self.num_samples, self.num_test = num_samples, num_test
        self.in_chans, self.num_classes = in_chans, num_classes
        self.mean, self.std = (0.0,) * in_chans, (1.0,) * in_chans

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_samples if train else self.num_test
        g = torch.Generator().manual_seed(self.seed * 2 + int(train) + 17)
        y = torch.randint(0, self.num_classes, (n,), generator=g)
        centers = torch.randn(
            self.num_classes,
            self.in_chans,
            self.image_size,
            self.image_size,
            generator=torch.Generator().manual_seed(99),
        )
        x = centers[y] * 0.5 + torch.randn(n, self.in_chans, self.image_size, self.image_size, generator=g)
        return x, y
