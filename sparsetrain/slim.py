"""Physical channel removal: a channel-pruned network becomes a smaller dense network computing the same function.

A channel can be removed exactly when every entry that a coupled channel group holds for it is zero: its
producer filters and biases, its BatchNorm weight and bias (so the BN outputs 0 whatever its running
statistics) and its consumers' input columns. That is what sparsetrain's channel masks zero, so after
`finalize` the removable channels are found from the weights alone, with no mask and no pruner. The removal
itself is Torch-Pruning's: one `DependencyGraph` traced on an example input, then for each coupled group
`get_pruning_group(root, prune_out_channels, indices).prune()`, which shrinks every coupled layer (convs,
linears, BN and its running statistics, depthwise convs, residual adds, concatenations) consistently.

A removal is recorded as the group's root module and the removed indices of the root's output channels, in
the order applied, so `remove_channels` replays it onto a freshly built dense architecture (how
`sparsetrain.load_exported` rebuilds the slim model without pickling it).

Example:
    >>> result = slim(net, torch.zeros(1, 3, 32, 32))   # a smaller copy of net with the same outputs
    >>> result.model, result.removals
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from sparsetrain.granularity import ChannelGroup, build_channel_groups
from sparsetrain.targets import candidate_layers


@dataclass
class ChannelRemoval:
    """Output channels of one coupled group removed, named by the group's root module.

    Args:
        root: FQN of the Conv/Linear whose output channels index the group.
        indices: Removed output-channel indices of `root` (in the dense architecture), sorted.
        layers: Parameters the removal shrinks, as `name (dim d)`; informational only.
    """

    root: str
    indices: list[int]
    layers: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChannelRemoval:
        try:
            return cls(str(data["root"]), [int(i) for i in data["indices"]], list(data.get("layers", [])))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"invalid channel removal record {data!r}: {e}") from None


def _zero_channels(group: ChannelGroup, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Bool (size,): channels whose every coupled entry is exactly zero."""
    nonzero = torch.zeros(group.size, dtype=torch.long)
    for s in group.slices:
        p = params[s.param].detach()
        rows = p.movedim(s.dim, 0)[s.index.to(p.device)].reshape(len(s.index), -1)
        nonzero.index_add_(0, s.root, rows.ne(0).any(dim=1).long().cpu())
    return nonzero == 0


def find_removable_channels(model: nn.Module, example_input: torch.Tensor) -> list[ChannelRemoval]:
    """Coupled channel groups with channels whose every coupled weight is zero (each group keeps one channel).

    Args:
        model: A finalized network (no mask buffers needed; zeros are read from the weights).
        example_input: One input batch, for tracing the channel coupling.

    Returns:
        One `ChannelRemoval` per group that loses channels, in graph order.
    """
    groups = build_channel_groups(model, example_input, set(candidate_layers(model)))
    params = dict(model.named_parameters())
    out = []
    for group in groups:
        dead = _zero_channels(group, params)
        if bool(dead.all()):
            dead[0] = False  # a group keeps one (all-zero) channel: the architecture stays connected, outputs equal
        if dead.any():
            layers = sorted({f"{s.param} (dim {s.dim})" for s in group.slices})
            out.append(ChannelRemoval(group.name, dead.nonzero().flatten().tolist(), layers))
    return out


def remove_channels(model: nn.Module, example_input: torch.Tensor, removals: list[ChannelRemoval]) -> nn.Module:
    """Physically remove the recorded channels from `model` (in place) with Torch-Pruning's dependency graph.

    Args:
        model: The dense architecture the removals were found on (its weights may be anything).
        example_input: One input batch of the shape the model takes.
        removals: From `find_removable_channels` (or an export's `model.json`), applied in order.

    Returns:
        `model`, smaller.

    Raises:
        ValueError: A removal names a module the model lacks, or indices beyond its channels.
    """
    if not removals:
        return model
    import torch_pruning as tp

    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # the graph is traced through autograd (callers may run under no_grad)
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
        for r in removals:
            module = modules.get(r.root)
            pruner = graph.get_pruner_of_module(module) if module is not None else None
            if pruner is None or module not in graph.module2node:
                raise ValueError(f"channel removal names {r.root!r}, which is not a prunable layer of this model")
            channels = pruner.get_out_channels(module)
            if not r.indices or min(r.indices) < 0 or max(r.indices) >= channels or len(r.indices) >= channels:
                raise ValueError(
                    f"channel removal of {r.root!r} lists indices {r.indices[:8]}... that do not fit its "
                    f"{channels} output channels"
                )
            graph.get_pruning_group(module, pruner.prune_out_channels, list(r.indices)).prune()
    finally:
        model.train(was_training)
    return model


@dataclass
class Slimmed:
    """Result of `slim`: the smaller model, the removals applied and those refused (with the reason)."""

    model: nn.Module
    removals: list[ChannelRemoval]
    refused: list[dict[str, str]]


@torch.no_grad()
def _same_function(a: nn.Module, b: nn.Module, x: torch.Tensor) -> str | None:
    """None when `b` computes `a`'s outputs on `x` (float tolerance), else why not."""
    try:
        out = b(x)
    except Exception as e:  # a removal the graph allowed but the forward rejects (e.g. a reshape into heads)
        return f"the slim model fails: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    ref = a(x)
    ref, out = (t[0] if isinstance(t, (tuple, list)) else t for t in (ref, out))
    if ref.shape != out.shape or not torch.allclose(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()) + 1e-7):
        return "the slim model computes different outputs"
    return None


def slim(model: nn.Module, example_input: torch.Tensor) -> Slimmed:
    """A copy of `model` with every removable channel physically removed, checked to compute the same outputs.

    Torch-Pruning's graph can shrink a group whose channels a later reshape needs whole (attention's qkv
    split into heads): such a removal is refused (reported, weights kept with their zeros), never exported
    broken. All removals are tried at once first; only when the result differs is each group tried in turn.

    Args:
        model: A finalized network (left unchanged).
        example_input: One input batch of the shape the model takes.
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(2, *example_input.shape[1:], generator=torch.Generator().manual_seed(0))
        found = find_removable_channels(model, example_input)
        trial = remove_channels(copy.deepcopy(model), example_input, found)
        if not found or _same_function(model, trial, x) is None:
            return Slimmed(trial.train(was_training), found, [])
        accepted, refused = [], []
        for r in found:
            trial = remove_channels(copy.deepcopy(model), example_input, [*accepted, r])
            why = _same_function(model, trial, x)
            if why is None:
                accepted.append(r)
            else:
                refused.append({"root": r.root, "channels": str(len(r.indices)), "reason": why})
        return Slimmed(
            remove_channels(copy.deepcopy(model), example_input, accepted).train(was_training), accepted, refused
        )
    finally:
        model.train(was_training)


__all__ = ["ChannelRemoval", "Slimmed", "find_removable_channels", "remove_channels", "slim"]
