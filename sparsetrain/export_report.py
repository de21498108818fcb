"""What an export holds and saves: sparse-storage bytes, the speedup statement, a terminal summary.

Imports nothing heavy (torch only for type checking), so `python -m sparsetrain.export` can answer a wrong path
before torch is loaded.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from sparsetrain.slim import ChannelRemoval


def storage_report(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Bytes of the weights stored dense vs in two sparse formats (every tensor of 2+ dims, as a 2-D matrix).

    `csr`: values + int32 column indices + int32 row pointers. `bitmask`: values + one bit per entry. Tensors of
    one dimension (biases, norms) count as dense in every format.
    """
    dense = csr = bitmask = 0
    layers = {}
    for name, t in state.items():
        size = t.numel() * t.element_size()
        dense += size
        if t.ndim < 2 or not t.is_floating_point():
            csr += size
            bitmask += size
            continue
        nnz, rows = int(t.count_nonzero()), t.shape[0]
        c = nnz * (t.element_size() + 4) + (rows + 1) * 4
        b = nnz * t.element_size() + math.ceil(t.numel() / 8)
        csr, bitmask = csr + c, bitmask + b
        if nnz < t.numel():
            layers[name] = {"density": nnz / t.numel(), "dense_bytes": size, "csr_bytes": c, "bitmask_bytes": b}
    best = min(("csr", csr), ("bitmask", bitmask), key=lambda kv: kv[1])
    return {
        "dense_bytes": dense,
        "csr_bytes": csr,
        "bitmask_bytes": bitmask,
        "best_format": best[0] if best[1] < dense else "dense",
        "best_saving": max(0.0, 1.0 - best[1] / dense) if dense else 0.0,
        "sparse_tensors": layers,
    }


def speedup_note(removals: list[ChannelRemoval], semi: dict[str, str], flops: int, flops_dense: int) -> str:
    """What the export runs faster, and where nothing is claimed."""
    notes = []
    if removals:
        notes.append(
            f"channels removed: dense kernels on {flops / max(1, flops_dense):.3f} of the FLOPs "
            "(latency: measure on the target, see experiments/speedup)"
        )
    if any(d.startswith("semi_structured") for d in semi.values()):
        notes.append("2:4 Linear layers run semi-structured kernels on this target (faster only for large GEMMs)")
    elif semi:
        notes.append("2:4 weights stored dense here (see semi_structured.layers); no speedup on this target")
    return "; ".join(notes) or "none: zeros are stored and multiplied by dense kernels (see storage for the size)"


def summary(spec: dict[str, Any]) -> str:
    """A few lines for the terminal: size, FLOPs, what was removed or converted, storage."""
    s = spec["storage"]
    lines = [
        f"params {spec['params']:,} (dense {spec['params_dense']:,}, nonzero {spec['params_nonzero']:,}); "
        f"FLOPs {spec['flops']:,} (dense {spec['flops_dense']:,})",
        f"channel groups slimmed: {len(spec['removed_channels'])}; 2:4 layers: "
        f"{sum(d.startswith('semi_structured') for d in spec['semi_structured']['layers'].values())} semi-structured, "
        f"{sum(d.startswith('dense') for d in spec['semi_structured']['layers'].values())} dense",
        f"storage: dense {s['dense_bytes']:,} B, CSR {s['csr_bytes']:,} B, bitmask {s['bitmask_bytes']:,} B "
        f"(best {s['best_format']}, saves {s['best_saving']:.1%})",
        f"speedup: {spec['speedup']}",
    ]
    if "onnx" in spec:
        lines.append(f"onnx: {spec['onnx']}")
    return "\n".join(lines)


__all__ = ["speedup_note", "storage_report", "summary"]
