"""He et al. (2016) CIFAR ResNets: ResNet-20 (0.27 M parameters) and ResNet-56 (0.85 M).

Three stages of 16/32/64 channels with n BasicBlocks each (depth = 6n + 2), global average pooling and one
Linear `fc`. Where the shape changes (stage 2 and 3 entries) the shortcut is **option B**: a 1x1 conv + BN
projection, not the paper's parameter-free zero-padding option A. A projection is an ordinary conv, so channel
pruning and physical removal treat it like any other layer; it adds ~2.8 k parameters to ResNet-20.

Both are registered in timm's registry, so `timm.create_model("resnet20", num_classes=10, in_chans=1)` works
once `sparsetrain.models` is imported.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn

# Keys timm's create_model always passes to entrypoints; our models have no pretrained weights to use them for.
TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def entrypoint_kwargs(name: str, pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor kwargs from a timm entrypoint call (built-ins have no weights, hence no `pretrained`).

    Args:
        name: Model name, for the error message.
        pretrained: timm's `pretrained` flag; must be False.
        kwargs: The entrypoint's remaining keyword arguments.

    Raises:
        ValueError: When pretrained weights are requested.
    """
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; build it with pretrained=False")
    return {k: v for k, v in kwargs.items() if k not in TIMM_ONLY_KWARGS}


def timm_cfg(first_conv: str, classifier: str, in_chans: int, num_classes: int) -> dict[str, Any]:
    """A timm-style `pretrained_cfg`, so timm tools (and users) find the stem and the head by name."""
    return {
        "num_classes": num_classes,
        "input_size": (in_chans, 32, 32),
        "first_conv": first_conv,
        "classifier": classifier,
        "mean": (0.5,) * in_chans,
        "std": (0.5,) * in_chans,
    }


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with a residual add; `shortcut` is a 1x1 conv + BN projection when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet for small (~28-32 px) inputs: `conv1, bn1, layer1, layer2, layer3, fc`.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...).
        num_classes: Classifier outputs.
        in_chans: Input channels.
        width: Channels of the first stage (the paper's 16); stages use width, 2x and 4x.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.num_features = 4 * width
        self.pretrained_cfg = timm_cfg("conv1", "fc", in_chans, num_classes)
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self._in_planes = width
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
            layers.append(BasicBlock(self._in_planes, planes, s))
            self._in_planes = planes
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Module:
        """The classifier head (timm convention)."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a fresh one with `num_classes` outputs (timm convention)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_model
def resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 (He et al. 2016, CIFAR; option B shortcuts): 3x3 stages of 16/32/64 channels."""
    return CifarResNet(20, **entrypoint_kwargs("resnet20", pretrained, kwargs))


@register_model
def resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 (He et al. 2016, CIFAR; option B shortcuts)."""
    return CifarResNet(56, **entrypoint_kwargs("resnet56", pretrained, kwargs))
