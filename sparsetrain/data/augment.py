"""Batched data augmentation on the device (no per-image Python)."""

from __future__ import annotations

import torch


def random_crop_flip(
    x: torch.Tensor, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of a batch (N, C, H, W), on x's device.

    `generator` (on x's device) makes the draw reproducible; None uses torch's global generator.
    """
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    rows = dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h)  # (n, h)
    cols = dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w)  # (n, w)
    if flip:
        flipped = torch.rand(n, device=x.device, generator=generator) < 0.5
        cols = torch.where(flipped.view(n, 1), cols.flip(1), cols)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()
