"""Comparing what two runs produced."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def assert_same_export(run_a: str | Path, run_b: str | Path, atol: float) -> None:
    """The two runs exported the same network: identical masks (zeros), weights within `atol`."""
    wa = load_file(str(Path(run_a) / "export" / "model.safetensors"))
    wb = load_file(str(Path(run_b) / "export" / "model.safetensors"))
    for k in wa:
        assert torch.equal(wa[k] == 0, wb[k] == 0), f"mask differs in {k}"
        assert torch.allclose(wa[k], wb[k], atol=atol), f"weights differ in {k}"
