"""VGG-16 with BatchNorm for 28-32 px inputs, registered in timm as `cifar_vgg16_bn`.

timm and torchvision already own `vgg16_bn` (the 224-px ImageNet net with a 3x4096 classifier), hence the prefix.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn

from sparsetrain.models.cifar_resnet import entrypoint_kwargs, timm_cfg

# 13 convs; the 5th max-pool of ImageNet VGG is replaced by global average pooling.
CFG16: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class CifarVGG(nn.Module):
    """VGG feature stack (3x3 conv + BN + ReLU, 4 max-pools), global average pooling, one Linear `classifier`.

    Global pooling instead of the last max-pool + flatten makes 28 px (-> 2x2 maps) and 32 px inputs both work,
    and `ceil_mode` pools keep odd sizes (28 -> 14 -> 7 -> 4) from shrinking to nothing.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, cfg: list[int | str] | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for v in cfg or CFG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                c_out = int(v)
                layers += [nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c = c_out
        self.num_classes = num_classes
        self.num_features = c
        self.pretrained_cfg = timm_cfg("features.0", "classifier", in_chans, num_classes)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        """The classifier head (timm convention)."""
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a fresh one with `num_classes` outputs (timm convention)."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


@register_model
def cifar_vgg16_bn(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-16-BN for CIFAR-size inputs (classifier Linear(512, num_classes))."""
    return CifarVGG(**entrypoint_kwargs("cifar_vgg16_bn", pretrained, kwargs))
