"""Build any timm, torchvision or built-in classifier with random weights for a given data shape."""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from sparsetrain.models import cifar_resnet, lenet, vgg  # noqa: F401  (registers the built-ins in timm)

BUILTIN_MODELS = ("resnet20", "resnet56", "cifar_vgg16_bn", "lenet5")
SOURCES = ("builtin", "timm", "torchvision")


def _unknown(source: str, name: str, choices: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"closest: none (see {source} model list)"
    return ValueError(f"unknown {source} model {name!r}; {hint}")


def _torchvision_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _with_optional(builder: Any, key: str, value: Any, **kwargs: Any) -> nn.Module:
    """Call `builder` with `key=value` when it accepts it (ViTs take an image size, CNNs do not)."""
    if key in kwargs:
        return builder(**kwargs)
    try:
        return builder(**kwargs, **{key: value})
    except TypeError as e:
        if key not in str(e):
            raise
        return builder(**kwargs)


def _adapt_in_chans(model: nn.Module, in_chans: int) -> None:
    """Replace the first 3-channel conv (stem or patch embedding) by one taking `in_chans` inputs."""
    if in_chans == 3:
        return
    for fqn, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            new = nn.Conv2d(
                in_chans, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups if module.groups == 1 else in_chans, module.bias is not None,
                module.padding_mode,
            )
            parent_name, _, child = fqn.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
            return
    raise ValueError(f"cannot adapt {type(model).__name__} to {in_chans} input channels: no 3-channel conv found")


def build_model(source: str, name: str, *, in_chans: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    """A classifier with random weights (never from a hub) for `in_chans`x`image_size`² inputs.

    Args:
        source: `builtin` (resnet20, resnet56, cifar_vgg16_bn, lenet5), `timm` or `torchvision`.
        name: Model name in that source.
        in_chans: Input channels (the stem is adapted for torchvision models).
        num_classes: Output classes.
        image_size: Input side length; passed as `img_size` to timm models / `image_size` to torchvision
            models that take one (ViTs), and used for a dry forward that checks the model accepts it.
        **kwargs: Passed to the model constructor.

    Raises:
        ValueError: unknown source or name (with the closest names), or inputs the model cannot take.
    """
    if source not in SOURCES:
        raise ValueError(f"model.source must be one of {', '.join(SOURCES)}; got {source!r}")
    if source == "builtin":
        if name not in BUILTIN_MODELS:
            raise _unknown("builtin", name, list(BUILTIN_MODELS))
        model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    elif source == "timm":
        if name not in timm.list_models():
            raise _unknown("timm", name, timm.list_models())
        kwargs.pop("pretrained", None)
        model = _with_optional(
            lambda **kw: timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kw),
            "img_size", image_size, **kwargs,
        )
    else:
        names = _torchvision_names()
        if name not in names:
            raise _unknown("torchvision", name, names)
        kwargs.pop("weights", None)
        model = _with_optional(
            lambda **kw: torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kw),
            "image_size", image_size, **kwargs,
        )
        _adapt_in_chans(model, in_chans)
    _check_forward(model, name, in_chans, num_classes, image_size)
    return model


def _check_forward(model: nn.Module, name: str, in_chans: int, num_classes: int, image_size: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_chans, image_size, image_size))
    except Exception as e:  # any failure here means the input shape does not fit the architecture
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        suggestion = _working_size(model, in_chans, image_size)
        raise ValueError(
            f"model {name!r} cannot take {in_chans}x{image_size}x{image_size} inputs ({reason}); "
            f"try data.image_size={suggestion}"
        ) from None
    finally:
        model.train(was_training)
    logits = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
    if tuple(logits.shape) != (2, num_classes):
        raise ValueError(f"model {name!r} returned shape {tuple(logits.shape)}, expected (2, {num_classes})")


def _working_size(model: nn.Module, in_chans: int, image_size: int) -> int:
    """The smallest common input size above `image_size` that the model accepts (224 if none is found)."""
    for size in (32, 64, 96, 128, 160, 224, 299):
        if size <= image_size:
            continue
        try:
            with torch.no_grad():
                model(torch.zeros(1, in_chans, size, size))
            return size
        except Exception:  # noqa: BLE001,S112 - probing; any failure means "not this size"
            continue
    return 224
