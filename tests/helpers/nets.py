"""Tiny networks, their data and a plain training loop for fast, real tests."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class MLP(nn.Module):
    """Linear-only net: stem, two hidden layers, classifier."""

    def __init__(self, d_in: int = 16, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.fc0 = nn.Linear(d_in, hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = torch.relu(self.fc0(x))
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.head(x)


class ResNetTiny(nn.Module):
    """Conv + BN + a residual add: the smallest net with coupled channels."""

    def __init__(self, in_chans: int = 3, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv4 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(x + self.bn3(self.conv3(y)))
        x = torch.relu(self.bn4(self.conv4(x)))
        return self.fc(x.mean(dim=(2, 3)))


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def seq_net(in_chans: int = 3, width: int = 8, classes: int = 4) -> nn.Sequential:
    """A user's network as one flat `nn.Sequential` (its type exactly `nn.Sequential`): a child added to it
    becomes a layer of the forward."""
    return nn.Sequential(
        *conv_bn_relu(in_chans, width),
        *conv_bn_relu(width, width),
        *conv_bn_relu(width, 2 * width, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, classes),
    )


class Residual(nn.Module):
    """`relu(x + body(x))` around a user's `nn.Sequential` body (couples the body's output channels to x)."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class NestedSeqNet(nn.Module):
    """A module holding nested `nn.Sequential`s: stages of blocks (one residual), a Sequential head."""

    def __init__(self, in_chans: int = 3, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        body = nn.Sequential(
            *conv_bn_relu(width, width), nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        )
        self.features = nn.Sequential(
            nn.Sequential(*conv_bn_relu(in_chans, width)),
            nn.Sequential(Residual(body), nn.Sequential(*conv_bn_relu(width, 2 * width, stride=2))),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def batches(n: int, shape: tuple[int, ...], classes: int = 4, seed: int = 0, batch: int = 16):
    """A fixed list of learnable random batches (class-dependent mean shift)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, classes, (batch,), generator=g)
        x = torch.randn(batch, *shape, generator=g) + y.view(-1, *[1] * len(shape)).float() * 0.5
        out.append((x, y))
    return out


def revived(pruner) -> dict[str, int]:
    """Masked weights that are not exactly zero, per parameter FQN (empty while a soft mask is not enforced).

    Call it right after `optimizer.step()` and before `pruner.after_optimizer_step` re-masks: that is where a
    gradient or an optimizer state that was not masked shows, before the re-masking hides it.
    """
    if not pruner.masks_weights:
        return {}
    out = {}
    for fqn, mask in pruner.masks.masks.items():
        n = int(torch.count_nonzero(pruner.masks.params[fqn].detach()[mask == 0]))
        if n:
            out[fqn] = n
    return out


def train_plain(
    model: nn.Module, pruner, optimizer: torch.optim.Optimizer, data, steps: int, *, check_zero: bool = False
) -> list[float]:
    """Drive a pruner from a hand-written loop, the way the callback does.

    With `check_zero`, fail as soon as an optimizer step moved a masked weight off zero (seen before the
    pruner re-masks the weights).
    """

    def no_weight_revived(step: int) -> None:
        moved = revived(pruner)
        assert not moved, f"step {step}: the optimizer step moved masked weights off zero: {moved}"

    pruner.on_fit_start(optimizer, [])
    check = no_weight_revived if check_zero else None
    return [float(plain_step(model, pruner, optimizer, data[s % len(data)], s, check)) for s in range(steps)]


def plain_step(
    model: nn.Module, pruner, optimizer: torch.optim.Optimizer, batch, step: int, check=None
) -> torch.Tensor:
    """One optimizer step driven the way the callback drives it; `check(step)` runs between the optimizer step
    and the pruner's re-mask. The loss stays a tensor (reading it is the caller's choice: a host sync on a GPU)."""
    x, y = batch
    pruner.before_forward(step)
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    pruner.before_optimizer_step(step, optimizer)
    optimizer.step()
    if check is not None:
        check(step)
    pruner.after_optimizer_step(step, optimizer)
    return loss.detach()


class Net(pl.LightningModule):
    """ResNetTiny (conv + BN + a residual add: coupled channels) on 8×8 inputs, with an example input."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ResNetTiny(in_chans=3, width=8)
        self.example_input_array = torch.zeros(1, 3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.net.fc.weight.dtype))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


class UserModule(pl.LightningModule):
    """What a user writes: a network attribute, a training step, an optimizer. No `example_input_array`."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.backbone(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loader() -> DataLoader:
    """32 learnable 3×8×8 images in 4 batches of 8 (an epoch of `Net` is 4 optimizer steps)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (32,), generator=g)
    x = torch.randn(32, 3, 8, 8, generator=g) + y.view(-1, 1, 1, 1) * 0.5
    return DataLoader(TensorDataset(x, y), batch_size=8)
