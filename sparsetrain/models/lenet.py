"""LeNet-5 (LeCun et al. 1998), with adaptive pooling so 28 px and 32 px inputs both work."""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn


class LeNet5(nn.Module):
    """conv(6,5x5) → pool → conv(16,5x5) → pool → fc 120 → fc 84 → fc classes."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 5), 1)
        return self.fc(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@register_model
def lenet5(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """LeNet-5."""
    if pretrained:
        raise ValueError("lenet5 has no pretrained weights")
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(k, None)
    return LeNet5(**kwargs)
