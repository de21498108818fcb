"""Coupled channel groups from Torch-Pruning's dependency graph: one group holds every parameter slice that a
channel of a residual stream, a BN, a depthwise conv or a concatenation couples, so masking a group is exactly
equivalent to physically removing those channels."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def normalize_group_scores(scores: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
    """Channel scores divided by their group's mean over the alive channels, for one ranking across groups.

    Raw filter norms are not comparable across groups: layers with a larger fan-in get smaller weights at
    init, so a global ranking would empty the wide late stages first (down to one channel in the residual
    stream). Dividing by the group mean is Torch-Pruning's `normalizer="mean"` for global pruning.
    """
    live = scores if alive is None else scores[alive]
    if live.numel() == 0:
        return scores
    return scores / live.mean().clamp_min(torch.finfo(scores.dtype).tiny)


@dataclass(frozen=True)
class ParamSlice:
    """Entries of one parameter that belong to a group's channels.

    `index[i]` (along `dim`) belongs to group channel `root[i]`; one channel may own several entries (a
    Linear consuming a flattened conv output).
    """

    param: str
    dim: int
    index: torch.Tensor
    root: torch.Tensor
    producer: bool


@dataclass
class ChannelGroup:
    """Coupled output channels, named after their root module."""

    name: str
    size: int
    slices: list[ParamSlice] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)

    def group_params(self) -> set[str]:
        """FQNs of every parameter this group masks."""
        return {s.param for s in self.slices}

    def scores(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Squared L2 norm of each channel's producer filters (all coupled conv/linear output rows)."""
        out = torch.zeros(self.size, dtype=torch.float32)
        for s in self.slices:
            if not s.producer or not s.param.endswith("weight"):
                continue
            p = params[s.param].detach().float()
            rows = p.movedim(s.dim, 0)[s.index.to(p.device)].reshape(len(s.index), -1).pow(2).sum(1)
            out = out.to(p.device).index_add_(0, s.root.to(p.device), rows)
        return out

    def expand(self, keep: torch.Tensor, masks: dict[str, torch.Tensor]) -> None:
        """Zero, in `masks`, every entry of the channels not kept (`keep`: bool of shape (size,))."""
        for s in self.slices:
            mask = masks[s.param]
            drop = ~keep.to(mask.device)[s.root.to(mask.device)]
            index = s.index.to(mask.device)[drop]
            if index.numel():
                mask.index_fill_(s.dim, index, 0)


_NORMS = (nn.modules.batchnorm._BatchNorm,)


def build_channel_groups(model: nn.Module, example_input: torch.Tensor, targets: set[str]) -> list[ChannelGroup]:
    """Coupled channel groups whose every producer (a conv/linear whose outputs are pruned) is a target.

    Channels that no layer consumes (the classifier's outputs) never form a group. Consumers (layers whose
    inputs are coupled) are masked along their input dimension even when they are not targets (e.g. the
    classifier's columns), so that physical removal is exact. Groups that touch a layer kind whose channels
    cannot be masked exactly (LayerNorm/GroupNorm statistics, raw parameters such as position embeddings,
    grouped non-depthwise convs) are left out.
    """
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # the graph is traced through autograd (callers may run under no_grad)
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    except Exception as e:  # Torch-Pruning's tracer fails on some graphs (a channel shuffle's reshape)
        raise ValueError(untraceable_message(model, e, names)) from None
    finally:
        model.train(was_training)
    groups: list[ChannelGroup] = []
    for group in graph.get_all_groups(root_module_types=(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        root_module = group[0].dep.target.module
        built = _to_channel_group(group, graph, names, len(group[0].idxs), names.get(root_module, "?"))
        if built is None or not any(s.dim == 1 for s in built.slices):
            continue  # no consumer: these channels are the model's outputs (the classes), never pruned
        if built.producers and all(p in targets for p in built.producers):
            groups.append(built)
    return groups


def untraceable_message(model: nn.Module, error: Exception, names: dict) -> str:
    """One line for a model Torch-Pruning cannot trace: what failed, the layers next to it, what to do."""
    near: list[str] = []
    tb = error.__traceback__
    while tb is not None:  # the tracer's graph node being processed when it failed, if any
        node = tb.tb_frame.f_locals.get("node")
        for neighbour in [*getattr(node, "inputs", []), *getattr(node, "outputs", [])]:
            name = names.get(getattr(neighbour, "module", None))
            if name and name not in near:
                near.append(name)
        tb = tb.tb_next
    where = f" next to {', '.join(near[:4])}" if near else ""
    return (
        f"channel pruning cannot trace {type(model).__name__}: Torch-Pruning's dependency graph fails{where} "
        f"({type(error).__name__}: {str(error).splitlines()[0][:80] if str(error) else 'no message'}; typically a "
        "reshape that mixes channels, such as a channel shuffle); the whole network is traced, so no "
        "include/exclude avoids it: use granularity=unstructured or nm for this model"
    )


def _to_channel_group(group, graph, names: dict, size: int, root_name: str) -> ChannelGroup | None:
    out = ChannelGroup(name=root_name, size=size)
    seen: set[tuple[str, int]] = set()
    for item in group.items:
        module = item.dep.target.module
        if not isinstance(module, nn.Module):
            return None  # a raw nn.Parameter (pos_embed, cls_token): not maskable as a channel
        name = names.get(module)
        if name is None:  # Torch-Pruning's own graph ops (element-wise adds, concat, reshape): no parameters
            if any(True for _ in module.parameters(recurse=False)):
                return None
            continue
        idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
        roots = torch.as_tensor([-1 if r is None else r for r in item.root_idxs], dtype=torch.long)
        if (roots < 0).any():
            return None
        is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
        prefix = f"{name}." if name else ""
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            depthwise = (
                isinstance(module, nn.Conv2d)
                and module.groups == module.in_channels == module.out_channels
                and module.groups > 1
            )
            if not is_out and not depthwise and getattr(module, "groups", 1) > 1:
                return None
            dim = 0 if (is_out or depthwise) else 1
            entries = [("weight", dim)] + ([("bias", 0)] if module.bias is not None and dim == 0 else [])
            if (name, dim) in seen:
                continue
            seen.add((name, dim))
            for pname, d in entries:
                out.slices.append(ParamSlice(prefix + pname, d, idxs, roots, producer=dim == 0))
            if dim == 0 and name not in out.producers:
                out.producers.append(name)
        elif isinstance(module, _NORMS):
            if module.affine and (name, 0) not in seen:
                seen.add((name, 0))
                out.slices += [
                    ParamSlice(prefix + "weight", 0, idxs, roots, False),
                    ParamSlice(prefix + "bias", 0, idxs, roots, False),
                ]
        elif any(True for _ in module.parameters(recurse=False)):
            return None  # LayerNorm, GroupNorm, PReLU, embeddings...: not exactly maskable per channel
    return out
