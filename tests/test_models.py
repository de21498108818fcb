"""Models: the built-ins (shapes, paper sizes, they learn), any timm/torchvision name, and one-line errors."""

import pytest
import timm
import torch
from torch import nn

from sparsetrain.models import BUILTIN_MODELS, build_model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def step_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    """Loss on one fixed batch before each of `steps` SGD steps, and after the last."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        losses.append(nn.functional.cross_entropy(model(x), y).item())
    return losses


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_forward_shapes_and_overfits_a_batch(name):
    for chans, size in ((1, 28), (3, 32)):
        model = build_model("builtin", name, in_chans=chans, num_classes=7, image_size=size)
        assert model(torch.randn(2, chans, size, size)).shape == (2, 7)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 7, (8,))
    losses = step_losses(model, x, y, 3)
    assert losses[-1] < losses[0], losses


def test_builtin_layout_and_paper_sizes():
    r20 = timm.create_model("resnet20", num_classes=10)  # registered in timm by importing sparsetrain.models
    r56 = timm.create_model("resnet56", num_classes=10, in_chans=3)
    assert 0.26e6 < n_params(r20) < 0.28e6  # He et al.: 0.27 M (option B adds 2.8 k)
    assert 0.84e6 < n_params(r56) < 0.87e6  # He et al.: 0.85 M
    assert [n for n, _ in r20.named_children()] == ["conv1", "bn1", "layer1", "layer2", "layer3", "fc"]
    assert [n for n, _ in r20.layer2[0].named_children()] == ["conv1", "bn1", "conv2", "bn2", "shortcut"]
    projection = r20.layer2[0].shortcut[0]  # option B: 1x1 conv + BN where the shape changes
    assert isinstance(projection, nn.Conv2d)
    assert projection.kernel_size == (1, 1)
    assert isinstance(r20.layer1[0].shortcut, nn.Identity)
    assert (len(r20.layer1), len(r56.layer3)) == (3, 9)
    vgg = timm.create_model("cifar_vgg16_bn", num_classes=10)
    assert vgg.classifier.in_features == 512
    assert vgg.get_classifier() is vgg.classifier
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 13
    lenet = timm.create_model("lenet5", num_classes=10, in_chans=1)
    assert [lenet.fc1.out_features, lenet.fc2.out_features, lenet.fc.out_features] == [120, 84, 10]
    for name in BUILTIN_MODELS:
        assert name in timm.list_models(name)
        with pytest.raises(ValueError, match="no pretrained weights"):
            timm.create_model(name, pretrained=True)


@pytest.mark.parametrize(
    ("name", "size", "kwargs"),
    [("resnet18", 28, {}), ("mobilenetv3_small_050", 28, {}), ("vit_tiny_patch16_224", 32, {})],
)
def test_timm_models_on_fashion_mnist_shape(name, size, kwargs):
    model = build_model("timm", name, in_chans=1, num_classes=10, image_size=size, **kwargs)
    out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if name.startswith("vit"):  # img_size reached the constructor: 2x2 patches + cls token
        assert model.pos_embed.shape[1] == (size // 16) ** 2 + 1


def test_timm_img_size_given_by_user_wins():
    model = build_model(
        "timm", "vit_tiny_patch16_224", in_chans=3, num_classes=10, image_size=32, img_size=64, dynamic_img_size=True
    )  # so the 32-px dry forward still fits
    assert model.pos_embed.shape[1] == (64 // 16) ** 2 + 1


@pytest.mark.parametrize(("name", "size"), [("resnet18", 32), ("mobilenet_v3_small", 32), ("vit_b_16", 32)])
def test_torchvision_models_with_adapted_stem(name, size):
    model = build_model("torchvision", name, in_chans=1, num_classes=10, image_size=size)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    assert not any(isinstance(m, nn.Conv2d) and m.in_channels == 3 and m.groups == 1 for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


@pytest.mark.parametrize(
    ("source", "name", "match"),
    [
        ("timm", "resnet5O", "unknown timm model 'resnet5O'; closest: resnet50"),
        ("torchvision", "resnet5O", "unknown torchvision model 'resnet5O'; closest: resnet50"),
        ("builtin", "resnet21", "unknown builtin model 'resnet21'; closest: resnet20"),
        ("timm", "convnext_atto", r"model 'convnext_atto' cannot take 1x28x28 inputs \(.+\); try data.image_size=32"),
        ("torchvision", "inception_v3", r"cannot take 1x28x28 inputs \(.+\); try data.image_size=\d+$"),
    ],
)
@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")  # torchvision inception
def test_unknown_or_unfit_models_fail_with_one_line(source, name, match):
    with pytest.raises(ValueError, match=match) as info:
        build_model(source, name, in_chans=1, num_classes=10, image_size=28)
    assert "\n" not in str(info.value)


def test_bad_source_and_pretrained_requests_are_refused():
    with pytest.raises(ValueError, match="builtin, timm, torchvision"):
        build_model("hub", "resnet18", in_chans=3, num_classes=10, image_size=32)
    with pytest.raises(ValueError, match="random weights only"):
        build_model("timm", "resnet18", in_chans=3, num_classes=10, image_size=32, pretrained=True)
    with pytest.raises(ValueError, match="random weights only"):
        build_model("torchvision", "resnet18", in_chans=3, num_classes=10, image_size=32, weights="DEFAULT")
