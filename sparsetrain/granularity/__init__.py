"""Granularities: how decisions become masks. One file per granularity (`unstructured`, `nm`, `channel`), each a
`Granularity` subclass registered under its file's name, owning target selection, top-k at its grain under the
allocation, and what it reports; `make_granularity` builds one from the shared pruner keys.

All masks are chosen by index (`torch.topk`), never by a threshold, so counts are exact even with ties.
"""

from __future__ import annotations

from sparsetrain.granularity.base import (
    REGISTRY,
    Granularity,
    layer_list,
    left_dense_text,
    register_granularity,
    topk_mask,
)
from sparsetrain.granularity.channel import Channel
from sparsetrain.granularity.channel_groups import (
    ChannelGroup,
    ParamSlice,
    build_channel_groups,
    normalize_group_scores,
    untraceable_message,
)
from sparsetrain.granularity.nm import NM, nm_compatible, nm_group_view, nm_mask, nm_ungroup
from sparsetrain.granularity.unstructured import Unstructured


def make_granularity(name: str, allocation: str, n: int, m: int) -> Granularity:
    """The registered granularity `name`, built from the shared pruner keys."""
    if name not in REGISTRY:
        known = sorted(REGISTRY, key=lambda g: (g != "unstructured", g))
        raise ValueError(f"pruner.granularity must be one of {', '.join(known)}; got {name!r}")
    return REGISTRY[name].build(allocation, n, m)


__all__ = [
    "NM",
    "REGISTRY",
    "Channel",
    "ChannelGroup",
    "Granularity",
    "ParamSlice",
    "Unstructured",
    "build_channel_groups",
    "layer_list",
    "left_dense_text",
    "make_granularity",
    "nm_compatible",
    "nm_group_view",
    "nm_mask",
    "nm_ungroup",
    "normalize_group_scores",
    "register_granularity",
    "topk_mask",
    "untraceable_message",
]
