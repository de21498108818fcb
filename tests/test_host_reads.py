"""Update events read a few numbers back to the host, not one or more per layer.

On a GPU every `.item()`, `float()`, `int()`, `bool()` or `.tolist()` of a CUDA tensor waits for the queued work;
with several trainings sharing one GPU each wait also covers the others' work. An event that read per layer (a
churn count, a "did this layer change" test, a per-layer keep count: 80-120 reads an event on ResNet-20) made the
methods with more events several times slower there. These tests count the reads on the CPU, where the same calls
are made, so a per-layer read fails them without a GPU (`tests/test_gpu.py` checks the steady steps on CUDA).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from sparsetrain.accounting import account, module_flops
from sparsetrain.models.cifar_resnet import resnet20
from tests.helpers.matrix import make
from tests.helpers.nets import plain_step

HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__")
# per pruner: an event every 5 steps (PDP: a threshold refresh; magnitude: its one prune; BiP: a top-k every step)
BUDGETS = {"magnitude": {"begin": 0.3}, "pdp": {"threshold_every": 5}, "bip": {}}


@contextmanager
def counting_host_reads() -> Iterator[Counter]:
    """Counts the tensor-to-host reads made inside the block, by kind."""
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted(name):
        def read(self, *args, **kwargs):
            counts[name] += 1
            return originals[name](self, *args, **kwargs)

        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@pytest.mark.parametrize("key", ["magnitude", "gmp", "granet", "rigl", "set", "pdp", "bip"])
def test_an_update_event_reads_a_few_numbers_back_not_one_per_layer(key):
    torch.manual_seed(0)
    model = resnet20(num_classes=10, in_chans=1)  # 20 targeted layers: a per-layer read is >= 20 an event
    pruner = make(key, "unstructured", sparsity=0.9, **BUDGETS.get(key, {"update_every": 5}))
    steps = 16
    pruner.attach(model, steps, torch.zeros(1, 1, 8, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.on_fit_start(optimizer, [])
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    reads = []
    for step in range(steps):
        with counting_host_reads() as counts:
            plain_step(model, pruner, optimizer, (x, y), step)
        reads.append(sum(counts.values()))
    assert pruner.global_sparsity() > 0.3  # events happened
    assert max(reads) <= 4, reads


def test_the_metrics_logged_at_an_event_read_the_masks_back_once():
    """What the callback logs at every event (`sparsity/global`, `sparsity/<layer>`, `flops/ratio` from
    `account`) reads the masks' counts back once each, not once per layer."""
    torch.manual_seed(0)
    model = resnet20(num_classes=10, in_chans=1)
    pruner = make("gmp", "unstructured", sparsity=0.9)
    pruner.attach(model, 10, torch.zeros(1, 1, 8, 8))
    pruner.prune_to(0.9)
    flops = module_flops(model, torch.zeros(1, 1, 8, 8))
    with counting_host_reads() as counts:
        layers = pruner.layer_sparsity()
        report = account(model, flops, pruner.mask_dict(), pruner.targets)
        total = 1.0 - pruner.masks.density(*pruner.weights)
    assert sum(counts.values()) <= 3, counts
    assert len(layers) == 20 and report["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert report["sparsity"] == pytest.approx(total, abs=1e-12)
    assert 0 < report["flops_sparse"] < report["flops_dense"]
