"""timm and torchvision models a user picks, at channel and 2:4 granularity; a model Torch-Pruning cannot trace
(ShuffleNetV2's channel shuffle) is one clear line, not a traceback from inside the tracer."""

from __future__ import annotations

import pytest
import torch

from sparsetrain.models import build_model
from sparsetrain.pruners import Magnitude
from tests.helpers.nets import batches, train_plain

ZOO = [  # (source, name, input size, kwargs)
    ("timm", "resnet18", 32, {}),
    ("timm", "resnet18d", 32, {}),
    ("timm", "mobilenetv3_small_050", 32, {}),
    ("timm", "efficientnet_b0", 32, {}),
    ("timm", "convnext_atto", 32, {}),
    ("timm", "regnetx_002", 32, {}),
    ("timm", "deit_tiny_patch16_224", 32, {"patch_size": 4}),
    ("torchvision", "resnet18", 32, {}),
    ("torchvision", "mobilenet_v3_small", 32, {}),
    ("torchvision", "efficientnet_b0", 32, {}),
    ("torchvision", "mnasnet0_5", 32, {}),
    ("torchvision", "squeezenet1_0", 64, {}),
]


def attach(source: str, name: str, size: int, kwargs: dict, granularity: str) -> Magnitude:
    torch.manual_seed(0)
    model = build_model(source, name, in_chans=3, num_classes=10, image_size=size, **kwargs)
    pruner = Magnitude(sparsity=None if granularity == "nm" else 0.5, granularity=granularity, begin=0.0)
    pruner.attach(model, 1, torch.zeros(1, 3, size, size))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train_plain(model, pruner, optimizer, batches(1, (3, size, size), classes=10, batch=2), 1)
    return pruner


@pytest.mark.slow  # twelve models traced and stepped: about a minute on 2 cores
@pytest.mark.parametrize("granularity", ["channel", "nm"])
@pytest.mark.parametrize(("source", "name", "size", "kwargs"), ZOO, ids=[f"{s}-{n}" for s, n, *_ in ZOO])
def test_model_zoo_at_channel_and_2_4(source, name, size, kwargs, granularity):
    pruner = attach(source, name, size, kwargs, granularity)
    if granularity == "nm":
        assert pruner.global_sparsity() == pytest.approx(0.5)
    else:
        assert pruner.granularity_strategy.channel_sparsity(pruner.masks) > 0.3


def test_a_model_torch_pruning_cannot_trace_is_one_clear_line():
    with pytest.raises(ValueError, match="channel pruning cannot trace") as err:
        attach("torchvision", "shufflenet_v2_x0_5", 32, {}, "channel")
    message = str(err.value)
    assert "\n" not in message and "ShuffleNetV2" in message and "granularity=unstructured or nm" in message
    pruner = attach("torchvision", "shufflenet_v2_x0_5", 32, {}, "nm")  # its other granularities still work
    assert pruner.global_sparsity() == pytest.approx(0.5)
