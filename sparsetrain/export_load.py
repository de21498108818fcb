"""Rebuild an exported model from `model.json` and `model.safetensors` alone: no pickle, strict loading.

The reading side of `sparsetrain.export`, on its own so that loading a model needs none of the export's
slimming and reporting.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sparsetrain.export_files import SPEC, WEIGHTS, read_spec

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger("sparsetrain")


def load_exported(
    path: str | Path,
    *,
    model: nn.Module | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    semi_structured: bool = True,
) -> nn.Module:
    """Rebuild an exported model from `model.json` and `model.safetensors` alone (no pickle), in eval mode.

    Example:
        >>> import sparsetrain
        >>> model = sparsetrain.load_exported("outputs/<run>/export")
        >>> logits = model(images)

    Args:
        path: The export directory (or its `model.json` / `model.safetensors`).
        model: The dense architecture to load into, for a network `build_model` cannot make (`arch` null).
        device: Where to put the model.
        dtype: Floating-point dtype to cast to (e.g. `torch.float16` on a GPU); None keeps float32.
        semi_structured: Convert 2:4 Linear weights to semi-structured tensors where `device`/`dtype` run them.

    Raises:
        FileNotFoundError: A file is missing.
        ValueError: `model.json` is invalid, `model.safetensors` is corrupted, or the weights do not fit the
            architecture `model.json` describes.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from sparsetrain.semi_structured import to_semi_structured
    from sparsetrain.slim import ChannelRemoval, remove_channels

    directory, spec = read_spec(path)
    if model is None:
        arch = spec.get("arch")
        if not arch:
            raise ValueError(f"{directory / SPEC} has no builder (a custom architecture): pass model=<dense network>")
        from sparsetrain.models import build_from_arch

        model = build_from_arch(arch)
    example = torch.zeros(1, *spec["input_shape"])
    remove_channels(model, example, [ChannelRemoval.from_json(r) for r in spec.get("removed_channels", [])])
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{directory / WEIGHTS} is corrupted or not safetensors ({e}); re-export the model") from None
    _check_fits(model, state, directory)
    model.load_state_dict(state, strict=True)
    model.eval().to(device=device, dtype=dtype)
    if semi_structured:
        for name, decision in to_semi_structured(model).items():
            log.info("load_exported: %s %s", name, decision)
    return model


def state_mismatches(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """What keeps `model.load_state_dict(state, strict=True)` from working: missing, unexpected, mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k} is {tuple(v.shape)}, expected {expected[k]}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    return problems


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    problems = state_mismatches(model, state)
    if problems:
        raise ValueError(
            f"{directory / WEIGHTS} does not match the architecture {SPEC} describes "
            f"({len(problems)} problems: {'; '.join(problems[:3])})"
        )


__all__ = ["load_exported", "state_mismatches"]
