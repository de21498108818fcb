"""He et al. (2016) CIFAR ResNets: ResNet-20 (0.27 M parameters) and ResNet-56 (0.85 M).

Three stages of 16/32/64 channels with n BasicBlocks each (depth = 6n + 2). Where the shape changes the
shortcut is a 1x1 conv + BN projection (option B), not the paper's zero-padding option A: a projection is
an ordinary conv, so channel pruning and physical removal treat it like any other layer.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and a residual add."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet for small (28-32 px) inputs."""

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.in_planes = width
        self.layer1 = self._stage(width, n, 1)
        self.layer2 = self._stage(2 * width, n, 2)
        self.layer3 = self._stage(4 * width, n, 2)
        self.fc = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.pop("cache_dir", None)
    return kwargs


@register_model
def resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 (He et al. 2016, CIFAR): 3x3 BasicBlocks, 16/32/64 channels."""
    if pretrained:
        raise ValueError("resnet20 has no pretrained weights")
    return CifarResNet(20, **_kwargs(kwargs))


@register_model
def resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 (He et al. 2016, CIFAR)."""
    if pretrained:
        raise ValueError("resnet56 has no pretrained weights")
    return CifarResNet(56, **_kwargs(kwargs))
