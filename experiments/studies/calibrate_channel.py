"""Channel sparsity at which channel GMP (uniform allocation) meets a FLOPs budget on ResNet-20/Fashion-MNIST.

Uniform allocation prunes the same fraction of every coupled group, so the FLOPs of the final masks depend on
the sparsity only, not on which channels the training keeps: counted here on a freshly built network.

    .venv/bin/python -m experiments.studies.calibrate_channel
"""

from __future__ import annotations

import torch

from sparsetrain.accounting import account, module_flops
from sparsetrain.models import build_model
from sparsetrain.pruners import list_pruners


def flops_ratio(sparsity: float) -> float:
    net = build_model("builtin", "resnet20", in_chans=1, num_classes=10, image_size=28)
    x = torch.zeros(1, 1, 28, 28)
    pruner = list_pruners()["gmp"](sparsity=sparsity, granularity="channel", allocation="uniform")
    pruner.attach(net, 10, x)
    pruner.prune_to(sparsity)
    acc = account(net, module_flops(net, x), pruner.mask_dict(), pruner.targets)
    return acc["flops_sparse"] / acc["flops_dense"]


if __name__ == "__main__":
    print("| channel sparsity | FLOPs / dense |\n|---|---|")
    for s in (0.30, 0.35, 0.36, 0.37, 0.40, 0.45, 0.46, 0.47):
        print(f"| {s:.2f} | {flops_ratio(s):.4f} |")
