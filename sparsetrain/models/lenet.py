"""LeNet-5 (LeCun et al. 1998), registered in timm as `lenet5`.

An adaptive average pool to 5x5 before the first Linear makes 28 px (MNIST) and 32 px (the paper) inputs both
work, with the paper's 400-input fc layer either way.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn

from sparsetrain.models.cifar_resnet import entrypoint_kwargs, timm_cfg


class LeNet5(nn.Module):
    """conv1 (6, 5x5, pad 2) -> pool -> conv2 (16, 5x5) -> pool -> fc1 120 -> fc2 84 -> fc (classes)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = 84
        self.pretrained_cfg = timm_cfg("conv1", "fc", in_chans, num_classes)
        self.conv1 = nn.Conv2d(in_chans, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc = nn.Linear(84, num_classes)

    def get_classifier(self) -> nn.Module:
        """The classifier head (timm convention)."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a fresh one with `num_classes` outputs (timm convention)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 5), 1)
        return self.fc(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@register_model
def lenet5(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """LeNet-5 (conv 6, conv 16, fc 120, fc 84, fc classes)."""
    return LeNet5(**entrypoint_kwargs("lenet5", pretrained, kwargs))
