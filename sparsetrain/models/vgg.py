"""VGG-16 with BatchNorm for 28-32 px inputs (registered as `cifar_vgg16_bn`; timm/torchvision own `vgg16_bn`)."""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn

CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class CifarVGG(nn.Module):
    """VGG feature stack (3x3 conv + BN + ReLU, 4 max-pools), global average pooling, one Linear classifier.

    Global pooling (instead of the last max-pool + flatten) makes 28 px and 32 px inputs both work.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, cfg: list | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for v in cfg or CFG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


@register_model
def cifar_vgg16_bn(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-16-BN for CIFAR-size inputs."""
    if pretrained:
        raise ValueError("cifar_vgg16_bn has no pretrained weights")
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(k, None)
    return CifarVGG(**kwargs)
