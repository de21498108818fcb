"""2:4 Linear weights as `torch.sparse` semi-structured tensors, where the hardware runs them.

`torch.sparse.to_sparse_semi_structured` covers 2-D weights of `nn.Linear` (its dispatch table has `linear`,
`mm`, `addmm`), on CUDA only, from compute capability 8.0, in float16/bfloat16 here (int8 and fp8 exist but
are quantized formats), with minimum and multiple-of shapes per backend. Two backends: cuSPARSELt (the
default in torch, sm80+) and CUTLASS (sm8x only: it fails on sm90). Everything else stays dense, and each
layer's choice is reported as `semi_structured (<backend>)` or `dense (<reason>)`.

The decision is a pure function of the layer, the target device's capability and the dtype
(`decide`), so it is tested without a GPU; `to_semi_structured` applies it.

Being faster is a separate question: on an H100, eager cuSPARSELt cost about 0.57 ms of host time per call
and lost to dense for ViT-size GEMMs in an earlier measurement; measure before claiming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsetrain.granularity import nm_group_view

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
# Rows, cols of the sparse weight must be >= and a multiple of these, per backend, for float16/bfloat16
# (`_DTYPE_SHAPE_CONSTRAINTS` in torch/sparse/semi_structured.py)
SHAPE_MULTIPLE = {"cusparselt": (16, 16), "cutlass": (32, 64)}


@dataclass(frozen=True)
class Target:
    """Where the model will run: device type, CUDA capability (None off CUDA), dtype, cuSPARSELt availability."""

    device: str
    capability: tuple[int, int] | None
    dtype: torch.dtype
    cusparselt: bool

    @classmethod
    def of(cls, device: str | torch.device, dtype: torch.dtype) -> Target:
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            return cls(device.type, None, dtype, False)
        capability = torch.cuda.get_device_capability(device)
        return cls("cuda", capability, dtype, bool(torch.backends.cusparselt.is_available()))


def is_2_4(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive entries along the input dimension holds at most 2 nonzeros."""
    if weight.ndim != 2 or weight.shape[1] % 4:
        return False
    return bool((nm_group_view(weight.detach().ne(0), 4).sum(dim=1) <= 2).all())


def backend(target: Target) -> str | None:
    """The semi-structured backend that runs on `target`, or None."""
    if target.device != "cuda" or target.capability is None or target.capability < (8, 0):
        return None
    if target.cusparselt:
        return "cusparselt"
    return "cutlass" if target.capability[0] == 8 else None


def decide(module: nn.Module, target: Target) -> str:
    """`semi_structured (<backend>)` or `dense (<reason>)` for one layer whose weight holds a 2:4 pattern."""
    if not isinstance(module, nn.Linear):
        return "dense (not a Linear: semi-structured kernels cover linear/mm only)"
    if not is_2_4(module.weight):
        return "dense (weight is not 2:4 sparse)"
    if target.device != "cuda":
        return f"dense (device {target.device}: semi-structured kernels are CUDA-only)"
    if target.capability is None:
        return "dense (no CUDA device available here)"
    sm = "{}.{}".format(*target.capability)
    if target.capability < (8, 0):
        return f"dense (compute capability {sm} < 8.0)"
    kind = backend(target)
    if kind is None:
        return f"dense (compute capability {sm}: CUTLASS runs on sm8x only and cuSPARSELt is unavailable)"
    if target.dtype not in SUPPORTED_DTYPES:
        return f"dense (dtype {str(target.dtype).removeprefix('torch.')}: needs float16 or bfloat16)"
    rows, cols = module.weight.shape
    r, c = SHAPE_MULTIPLE[kind]
    if rows < r or rows % r or cols < c or cols % c:
        return f"dense (shape {rows}x{cols}: {kind} needs multiples of {r}x{c})"
    return f"semi_structured ({kind})"


def plan(model: nn.Module, target: Target) -> dict[str, str]:
    """Decision for every Linear whose weight is 2:4 sparse, keyed by module FQN."""
    return {
        name: decide(m, target)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and is_2_4(m.weight) and bool(m.weight.ne(0).any())
    }


@torch.no_grad()
def to_semi_structured(model: nn.Module) -> dict[str, str]:
    """Convert, in place, every 2:4 Linear that its device and dtype run semi-structured; returns the decisions.

    The model must already be on its device and in its dtype (the conversion reads both from the weights).
    Converted weights are frozen (`requires_grad=False`): this is for inference.
    """
    decisions = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not is_2_4(module.weight) or not bool(module.weight.ne(0).any()):
            continue
        weight = module.weight
        decision = decide(module, Target.of(weight.device, weight.dtype))
        if decision.startswith("semi_structured"):
            kind = backend(Target.of(weight.device, weight.dtype))
            cls = (
                torch.sparse.SparseSemiStructuredTensorCUSPARSELT
                if kind == "cusparselt"
                else torch.sparse.SparseSemiStructuredTensorCUTLASS
            )
            module.weight = nn.Parameter(cls.from_dense(weight.detach().contiguous()), requires_grad=False)
        decisions[name] = decision
    return decisions


__all__ = ["Target", "backend", "decide", "is_2_4", "plan", "to_semi_structured"]
