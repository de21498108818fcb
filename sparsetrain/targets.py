"""Which layers a pruner may sparsify.

Conv and Linear weights are the targets; norm layers and biases never are. The first conv (the stem, which
sees raw pixels and has few weights) and the classifier (whose rows are the classes) stay dense by default,
as in RigL, GraNet and most of the literature. Users refine the choice with regular expressions on module
names (FQNs such as `layer1.0.conv1`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _compile(patterns: Sequence[str] | None, key: str) -> list[re.Pattern]:
    compiled = []
    for p in patterns or ():
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"pruner.{key} has an invalid regular expression {p!r}: {e}") from None
    return compiled


def candidate_layers(model: nn.Module) -> dict[str, nn.Module]:
    """All Conv/Linear modules with a weight, keyed by FQN, in registration order."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, PRUNABLE_TYPES)
        and getattr(m, "weight", None) is not None
        and isinstance(m.weight, nn.Parameter)
    }


def first_and_last(candidates: dict[str, nn.Module]) -> set[str]:
    """The stem conv (first candidate) and the classifier (last Linear, else last candidate)."""
    if not candidates:
        return set()
    names = list(candidates)
    linears = [n for n in names if isinstance(candidates[n], nn.Linear)]
    return {names[0], linears[-1] if linears else names[-1]}


def select_targets(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    keep_first_last: bool = True,
) -> dict[str, nn.Module]:
    """Select prunable layers.

    Args:
        model: The network.
        include: Regexes; when given, only modules whose FQN matches one (`re.search`) are targeted.
        exclude: Regexes; modules whose FQN matches one are never targeted.
        keep_first_last: Keep the first conv and the classifier dense. An explicit `include` match overrides it.

    Returns:
        Targeted modules keyed by FQN, in model order.

    Raises:
        ValueError: On an invalid pattern, or when nothing is left to prune.
    """
    inc, exc = _compile(include, "include"), _compile(exclude, "exclude")
    candidates = candidate_layers(model)
    kept_dense = first_and_last(candidates) if keep_first_last else set()
    targets = {}
    for name, module in candidates.items():
        if any(p.search(name) for p in exc):
            continue
        if inc:
            if any(p.search(name) for p in inc):
                targets[name] = module
            continue
        if name not in kept_dense:
            targets[name] = module
    if not targets:
        raise ValueError(
            f"no prunable layer selected among {len(candidates)} Conv/Linear layers "
            f"(include={list(include or [])}, exclude={list(exclude or [])}, keep_first_last={keep_first_last})"
        )
    return targets
