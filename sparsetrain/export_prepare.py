"""A finalized network made ready to store: its slimmed CPU copy, its tensors and the content of `model.json`.

Everything the export decides about a network (which channels it cuts out, what it counts, which 2:4 layers
would run semi-structured) is here; `sparsetrain.export_files` only writes the result.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from sparsetrain.export_files import FORMAT, VERSION
from sparsetrain.export_report import speedup_note, storage_report

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sparsetrain.semi_structured import Target
    from sparsetrain.slim import ChannelRemoval


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int, int]:
    """Parameters, nonzero parameters and FLOPs of one forward of `example`."""
    from sparsetrain.accounting import module_flops

    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    return params, nonzero, module_flops(model, example)[0]


def _has_zero_row(model: nn.Module) -> bool:
    """Whether any Conv/Linear has an all-zero output filter (else no channel can be removable: skip tracing)."""
    import torch
    from torch import nn

    for m in model.modules():
        w = getattr(m, "weight", None)
        layer = isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and isinstance(w, torch.Tensor)
        if layer and bool((w.detach().reshape(w.shape[0], -1).ne(0).sum(1) == 0).any()):
            return True
    return False


def prepare_export(
    network: nn.Module,
    *,
    input_shape: tuple[int, ...],
    arch: dict[str, Any] | None,
    info: dict[str, Any] | None,
    target: Target | None,
    removed: list[ChannelRemoval] | None,
    dense_counts: tuple[int, int] | None,
) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """The network as it is stored (a slimmed CPU copy), its tensors, and `model.json` (without `onnx`)."""
    import torch
    from torch.nn.utils import parametrize

    from sparsetrain.masking import find_mask_buffers
    from sparsetrain.semi_structured import Target, plan
    from sparsetrain.slim import slim

    if find_mask_buffers(network) or any(parametrize.is_parametrized(m) for m in network.modules()):
        raise ValueError("network still has mask buffers or parametrizations; finalize the pruner before exporting")
    net = copy.deepcopy(network).cpu().eval()
    example = torch.zeros(1, *input_shape)
    params_dense, _, flops_dense = count(net, example)
    if dense_counts is not None:
        params_dense, flops_dense = dense_counts
    removals, refused = list(removed or []), []
    if _has_zero_row(net):
        slimmed = slim(net, example)
        net, refused = slimmed.model.eval(), slimmed.refused
        removals += slimmed.removals
    params, nonzero, flops = count(net, example)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    target = target or Target.of("cpu", torch.float32)
    semi = plan(net, target)
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "input_shape": list(input_shape),
        **(info or {}),
        "params": params,
        "params_nonzero": nonzero,
        "flops": flops,
        "params_dense": params_dense,
        "flops_dense": flops_dense,
        "removed_channels": [r.to_json() for r in removals],
        "kept_zero_channels": refused,
        "semi_structured": {
            "target": {"device": target.device, "capability": target.capability, "dtype": str(target.dtype)},
            "layers": semi,
        },
        "storage": storage_report(state),
        "speedup": speedup_note(removals, semi, flops, flops_dense),
    }
    return net, state, spec


__all__ = ["count", "prepare_export"]
