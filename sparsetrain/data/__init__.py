"""Lightning DataModules: Fashion-MNIST (default), digits, CIFAR-10/100, ImageNet folders, fake data."""

from sparsetrain.data.base import (
    DataUnavailableError,
    DeviceLoader,
    EpochSampler,
    ResumableDataLoader,
    TensorDataModule,
)
from sparsetrain.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from sparsetrain.data.digits import DigitsDataModule
from sparsetrain.data.fake import FakeDataModule
from sparsetrain.data.fashion_mnist import FashionMNISTDataModule
from sparsetrain.data.imagenet import ImageNetDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DataUnavailableError",
    "DeviceLoader",
    "DigitsDataModule",
    "EpochSampler",
    "FakeDataModule",
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "ResumableDataLoader",
    "TensorDataModule",
]
