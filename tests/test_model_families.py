"""Every model family through the pipeline and under every granularity (built-in, timm incl. a ViT and a
depthwise net, torchvision)."""

import json
from pathlib import Path

import pytest
import torch

from sparsetrain.app import run
from sparsetrain.models import build_model
from sparsetrain.pruners import Magnitude
from tests.helpers.nets import batches, train_plain

FIT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.num_samples=64",
    "data.batch_size=8",
]
CASES = [
    ("builtin", "resnet20", 1, 28, {}),
    ("builtin", "resnet56", 1, 28, {}),
    ("builtin", "cifar_vgg16_bn", 3, 32, {}),
    ("builtin", "lenet5", 1, 28, {}),
    ("timm", "resnet18", 1, 28, {}),
    ("timm", "mobilenetv3_small_050", 1, 28, {}),  # depthwise convs
    ("timm", "vit_tiny_patch16_224", 3, 32, {"patch_size": 4}),  # a ViT at 32 px
    ("torchvision", "resnet18", 1, 28, {}),
    ("torchvision", "mobilenet_v3_small", 3, 32, {}),
]


@pytest.mark.parametrize(("source", "name", "chans", "size", "kwargs"), CASES, ids=[c[1] + "@" + c[0] for c in CASES])
def test_few_step_fit_through_the_pipeline(compose, source, name, chans, size, kwargs):
    model = [f"model={source}"] if source != "builtin" else [f"model={name}"]
    if source != "builtin":
        model.append(f"model.name={name}")
    model += [f"+model.kwargs.{k}={v}" for k, v in kwargs.items()]
    cfg = compose(
        *FIT,
        *model,
        f"data.in_chans={chans}",
        f"data.image_size={size}",
        "+pruner=magnitude",
        "pruner.sparsity=0.5",
        "pruner.begin=0.0",
    )
    run(cfg)
    r = json.loads((Path(cfg.output_dir) / "results.json").read_text())
    assert r["steps"] == 3 and r["model"] == name
    assert r["sparsity"] == pytest.approx(0.5, abs=1e-3) and r["flops_sparse"] < r["flops_dense"]


GRANULARITY_MODELS = [
    c
    for c in CASES
    if c[1] in ("resnet20", "resnet18", "mobilenetv3_small_050", "vit_tiny_patch16_224", "mobilenet_v3_small")
]


@pytest.mark.parametrize("granularity", ["unstructured", "nm", "channel"])
@pytest.mark.parametrize(
    ("source", "name", "chans", "size", "kwargs"),
    GRANULARITY_MODELS,
    ids=[c[1] + "@" + c[0] for c in GRANULARITY_MODELS],
)
def test_each_granularity_on_each_model_family(source, name, chans, size, kwargs, granularity):
    torch.manual_seed(0)
    model = build_model(source, name, in_chans=chans, num_classes=10, image_size=size, **kwargs)
    sparsity = None if granularity == "nm" else 0.5
    pruner = Magnitude(sparsity=sparsity, granularity=granularity, begin=0.0)
    pruner.attach(model, 2, torch.zeros(1, chans, size, size))
    train_plain(
        model,
        pruner,
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        batches(2, (chans, size, size), classes=10, batch=4),
        2,
    )
    if granularity == "nm":
        assert pruner.global_sparsity() == pytest.approx(0.5)
    elif granularity == "unstructured":
        assert pruner.global_sparsity() == pytest.approx(0.5, abs=1e-4)
    else:
        assert 0.3 < pruner.global_sparsity() < 0.9  # 50 % of channels: in- and out-channels both go
        alive = [int(pruner.granularity_strategy.alive(pruner.masks, g).sum()) for g in pruner.groups]
        keep = round(0.5 * sum(g.size for g in pruner.groups))
        assert min(alive) >= 1  # one global ranking, but no group is cut off completely
        assert keep <= sum(alive) <= keep + alive.count(1)


def test_granularity_that_cannot_apply_is_a_clear_error():
    model = build_model("builtin", "resnet20", in_chans=1, num_classes=10, image_size=28)
    with pytest.raises(ValueError, match="N:M 2:3 applies to no targeted layer"):
        Magnitude(granularity="nm", n=2, m=3).attach(model, 10, torch.zeros(1, 1, 28, 28))
    lenet = build_model("builtin", "lenet5", in_chans=1, num_classes=10, image_size=28)
    with pytest.raises(ValueError, match="no prunable channel group"):  # the classifier's outputs are the classes
        Magnitude(sparsity=0.5, granularity="channel", include=["^fc$"]).attach(lenet, 10, torch.zeros(1, 1, 28, 28))
