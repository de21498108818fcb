"""LAPP's lightweight bypass: a low-rank 1×1 branch beside each pruned k×k conv, folded away at slimming.

The paper's abstract says only that a lightweight bypass is added to every conv to be pruned, before
training, to keep the pruned layer's expressive power. Our design (not verifiable from the paper): a linear
branch `up(down(x))` of two 1×1 convs with rank r = ⌈ratio·out_channels⌉ and the conv's stride, added to the
conv's output. `up` starts at zero (the network starts as the plain architecture) and is a producer of the
conv's output channels, so it is pruned with them; `down` reads the conv's input channels, so it shrinks
with them. Being linear and centred, the branch equals a rank-r update of the kernel's centre tap
(a 1×1 conv with stride s samples the input where a k×k conv with padding (k−1)/2 has its centre), so at
slimming it is folded into the conv exactly (W[:, :, c, c] += U·D): the deployed network is the plain
architecture, and the bypass costs FLOPs (≈ 2r/(k²·min(in, out)) of its conv) only while it trains.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Bypassed(nn.Module):
    """A conv and its low-rank 1×1 bypass: `conv(x) + bypass_up(bypass_down(x))`."""

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        super().__init__()
        self.conv = conv
        factory = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        self.bypass_down = nn.Conv2d(conv.in_channels, rank, 1, stride=conv.stride, bias=False, **factory)
        self.bypass_up = nn.Conv2d(rank, conv.out_channels, 1, bias=False, **factory)
        nn.init.zeros_(self.bypass_up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.bypass_up(self.bypass_down(x))

    @torch.no_grad()
    def folded(self) -> nn.Conv2d:
        """The conv with the bypass added into its centre tap (computes what this module computes)."""
        up = self.bypass_up.weight.flatten(1)  # (out, r)
        down = self.bypass_down.weight.flatten(1)  # (r, in)
        kh, kw = self.conv.kernel_size
        self.conv.weight[:, :, kh // 2, kw // 2] += (up @ down).to(self.conv.weight.dtype)
        return self.conv


def foldable(conv: nn.Module) -> bool:
    """Whether a bypass beside `conv` can be folded into it exactly (dense, odd kernel, centred padding)."""
    if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return conv.padding == "same" and all(k % 2 == 1 for k in conv.kernel_size) and conv.stride == (1, 1)
    return all(
        k % 2 == 1 and k > 1 and p == (k - 1) // 2 * d
        for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation, strict=True)
    )


def add_bypasses(model: nn.Module, names: list[str], ratio: float) -> list[str]:
    """Wrap each foldable conv of `names` in `Bypassed` (in place). Returns the wrapped names."""
    wrapped = []
    for name in names:
        conv = model.get_submodule(name)
        if not foldable(conv):
            continue
        parent_name, _, child = name.rpartition(".")
        rank = max(1, math.ceil(ratio * conv.out_channels))
        setattr(model.get_submodule(parent_name), child, Bypassed(conv, rank))
        wrapped.append(name)
    return wrapped


def fold_bypasses(model: nn.Module) -> int:
    """Replace every `Bypassed` by its folded conv (in place). Returns how many were folded."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, Bypassed)]
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.folded())
    return len(found)


def plain_name(fqn: str, wrapped: set[str]) -> str | None:
    """The FQN a parameter has once bypasses are folded (None: a bypass parameter, gone after folding)."""
    for name in wrapped:
        prefix = f"{name}."
        if fqn.startswith(prefix):
            rest = fqn[len(prefix) :]
            if rest.startswith("bypass_"):
                return None
            if rest.startswith("conv."):
                return prefix + rest[len("conv.") :]
    return fqn


__all__ = ["Bypassed", "add_bypasses", "fold_bypasses", "foldable", "plain_name"]
