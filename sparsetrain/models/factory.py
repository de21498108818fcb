"""Build any timm, torchvision or built-in classifier with random weights for a given data shape.

Weights are never downloaded (timm `pretrained=False`, torchvision `weights=None`): runs must not depend on hub
access. Every model gets a dry forward on the data's shape at build time, so a model that cannot take the
input size fails before training starts, with a one-line message suggesting a size that works.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from typing import Any

import timm
import torch
import torchvision
from torch import nn

import sparsetrain.models.cifar_resnet  # noqa: F401  (these register the built-ins in timm)
import sparsetrain.models.lenet  # noqa: F401
import sparsetrain.models.vgg  # noqa: F401

log = logging.getLogger(__name__)

BUILTIN_MODELS: tuple[str, ...] = ("resnet20", "resnet56", "cifar_vgg16_bn", "lenet5")
SOURCES: tuple[str, ...] = ("builtin", "timm", "torchvision")
# Sizes tried, in order, when suggesting a working `data.image_size`.
_PROBE_SIZES = (32, 64, 96, 128, 160, 224, 299)


def _unknown(source: str, name: str, choices: list[str], hint: str = "") -> ValueError:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    listed = ", ".join(close) if close else f"none (see the {source} model list)"
    return ValueError(f"unknown {source} model {name!r}; closest: {listed}{hint}")


def _torchvision_names() -> list[str]:
    """Classification models only (detection, segmentation, video and quantized builders are excluded)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _with_optional(builder: Callable[..., nn.Module], key: str, value: Any, kwargs: dict[str, Any]) -> nn.Module:
    """Call `builder` with `key=value` when its constructor accepts it, else without.

    Neither timm entrypoints nor torchvision builders expose the model class's signature (they forward
    `**kwargs`), so acceptance is found by trying: a constructor that does not take the key raises a TypeError
    naming it before building anything. A key the user set explicitly is passed as given.
    """
    if key in kwargs:
        return builder(**kwargs)
    try:
        return builder(**kwargs, **{key: value})
    except TypeError as e:
        if key not in str(e):
            raise
        log.debug("%s not accepted (%s); building without it", key, e)
        return builder(**kwargs)


def _adapt_in_chans(model: nn.Module, in_chans: int) -> None:
    """Replace the first 3-channel Conv2d (stem or patch embedding) by a randomly initialised `in_chans` one."""
    if in_chans == 3:
        return
    for fqn, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            depthwise = module.groups == module.in_channels and module.groups > 1
            groups = in_chans if depthwise and module.out_channels % in_chans == 0 else 1
            new = nn.Conv2d(
                in_chans,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=groups,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
                device=module.weight.device,
                dtype=module.weight.dtype,
            )
            parent, _, child = fqn.rpartition(".")
            setattr(model.get_submodule(parent), child, new)  # keeps the module's place in registration order
            log.debug("adapted %s to %d input channels", fqn, in_chans)
            return
    raise ValueError(f"cannot adapt {type(model).__name__} to {in_chans} input channels: no 3-channel Conv2d found")


def _no_weights(kwargs: dict[str, Any], key: str, allowed: object) -> None:
    """Drop a harmless `pretrained=False` / `weights=None`; refuse a request for downloaded weights."""
    if key in kwargs:
        if kwargs[key] not in (allowed, None):
            raise ValueError(
                f"model.kwargs.{key}={kwargs[key]!r} is not supported: sparsetrain builds random "
                "weights only (no hub access)"
            )
        del kwargs[key]


def build_model(
    source: str, name: str, *, in_chans: int, num_classes: int, image_size: int, **kwargs: Any
) -> nn.Module:
    """A classifier with random weights (never from a hub) for `in_chans` x `image_size` x `image_size` inputs.

    Args:
        source: `builtin` (resnet20, resnet56, cifar_vgg16_bn, lenet5), `timm` or `torchvision`.
        name: Model name in that source.
        in_chans: Input channels (torchvision stems are replaced when this is not 3).
        num_classes: Classifier outputs.
        image_size: Input side length; passed as `img_size` to timm models / `image_size` to torchvision
            models whose constructor takes it (ViTs, ...), and used for a dry forward checking the model fits.
        **kwargs: Passed to the model constructor.

    Returns:
        The model, in training mode.

    Raises:
        ValueError: Unknown source or name (with the closest names), a request for pretrained weights, or an
            input shape the model cannot take (with a size to try instead).
    """
    kwargs = dict(kwargs)
    if source not in SOURCES:
        raise ValueError(f"model.source must be one of {', '.join(SOURCES)}; got {source!r}")
    if source == "builtin":
        if name not in BUILTIN_MODELS:
            hint = " (for timm/torchvision models set model.source)" if timm.is_model(name) else ""
            raise _unknown("builtin", name, list(BUILTIN_MODELS), hint)
        model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    elif source == "timm":
        if not timm.is_model(name):  # accepts `arch.tag` names too; the built-ins are timm models as well
            raise _unknown("timm", name, [n for n in timm.list_models() if n not in BUILTIN_MODELS])
        _no_weights(kwargs, "pretrained", False)

        def timm_builder(**kw: Any) -> nn.Module:
            return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kw)

        model = _with_optional(timm_builder, "img_size", image_size, kwargs)
    else:
        names = _torchvision_names()
        if name not in names:
            raise _unknown("torchvision", name, names)
        _no_weights(kwargs, "weights", None)

        def tv_builder(**kw: Any) -> nn.Module:
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kw)

        model = _with_optional(tv_builder, "image_size", image_size, kwargs)
        _adapt_in_chans(model, in_chans)
    _check_forward(model, name, in_chans, num_classes, image_size)
    log.info("built %s model %s: %.2f M parameters", source, name, sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:160]


def _check_forward(model: nn.Module, name: str, in_chans: int, num_classes: int, image_size: int) -> None:
    """Dry forward on zeros in eval mode (BN statistics untouched); one-line ValueError if the shape does not fit."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_chans, image_size, image_size))
        logits = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
        shape = tuple(getattr(logits, "shape", ()))
    except Exception as e:  # any failure here means this input shape does not fit the architecture
        suggestion = _working_size(model, in_chans, image_size)
        raise ValueError(
            f"model {name!r} cannot take {in_chans}x{image_size}x{image_size} inputs ({_first_line(e)}); "
            f"try data.image_size={suggestion}"
        ) from None
    finally:
        model.train(was_training)
    if shape != (2, num_classes):
        raise ValueError(f"model {name!r} returned shape {shape} for 2 inputs, expected (2, {num_classes})")


def _working_size(model: nn.Module, in_chans: int, image_size: int) -> int:
    """The smallest probe size above `image_size` the model accepts (then the largest below; 224 if none)."""
    above = [s for s in _PROBE_SIZES if s > image_size]
    below = [s for s in reversed(_PROBE_SIZES) if s < image_size]
    for size in above + below:
        try:
            with torch.no_grad():
                model(torch.zeros(1, in_chans, size, size))
        except Exception:  # noqa: S112 - probing; any failure means "not this size"
            continue
        return size
    return 224


def build_from_arch(arch: dict[str, Any]) -> nn.Module:
    """`build_model` from its recorded arguments (`model.json`'s and `restore.run_arch`'s `arch`)."""
    return build_model(
        arch["source"],
        arch["name"],
        in_chans=arch["in_chans"],
        num_classes=arch["num_classes"],
        image_size=arch["image_size"],
        **arch.get("kwargs", {}),
    )
