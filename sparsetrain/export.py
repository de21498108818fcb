"""Save a finalized network: weights as safetensors plus a small JSON describing how to rebuild it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from sparsetrain.masking import find_mask_buffers


def save_network(network: nn.Module, directory: str | Path, arch: dict[str, Any]) -> Path:
    """Write `model.safetensors` and `model.json` (the `build_model` arguments) into `directory`.

    Raises:
        ValueError: if the network still carries mask buffers (finalize it first).
    """
    if find_mask_buffers(network):
        raise ValueError("network still has mask buffers; finalize the pruner before exporting")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in network.state_dict().items()}
    path = directory / "model.safetensors"
    save_file(state, str(path))
    (directory / "model.json").write_text(json.dumps(arch, indent=2))
    return path
