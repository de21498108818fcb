"""How many devices a trainer config asks for, and how many GPUs this machine has, answered without Lightning
(and without torch on a Linux machine with no GPU device node)."""

from __future__ import annotations

import glob
import sys
from typing import Any

from omegaconf import ListConfig

from sparsetrain.errors import ConfigError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def requested_devices(devices: Any) -> int | None:
    """How many devices `trainer.devices` asks for: None for `auto`/-1 (all there are).

    Raises:
        ConfigError: not an integer >= 1, -1, `auto`, a list of device ids or a string of them ("0,1").
    """
    if devices in ("auto", -1, "-1"):
        return None
    if isinstance(devices, str):
        parts = [p.strip() for p in devices.split(",") if p.strip()]
        if parts and all(p.isdigit() for p in parts):
            return int(parts[0]) if len(parts) == 1 and "," not in devices else len(parts)
    elif isinstance(devices, (list, ListConfig)):
        if len(devices) > 0 and all(_is_int(d) and d >= 0 for d in devices):
            return len(devices)
    elif _is_int(devices) and devices >= 1:
        return devices
    raise ConfigError(f"trainer.devices must be an integer >= 1, -1 or auto (or a list of device ids), got {devices!r}")


_GPU_NODES = ("/dev/nvidia*", "/dev/nvhost*", "/dev/nvmap", "/dev/dxg", "/dev/kfd", "/proc/driver/nvidia")


def gpu_count(kind: str = "gpu") -> int:
    """GPUs Lightning's accelerator `kind` (gpu: CUDA or Apple MPS; cuda; mps) can use on this machine.

    On Linux, a machine with no GPU device node at all (NVIDIA, Jetson, WSL, ROCm) has none, which is known
    without importing torch; otherwise torch is asked.
    """
    if sys.platform.startswith("linux") and not any(glob.glob(pattern) for pattern in _GPU_NODES):
        return 0
    import torch

    cuda = torch.cuda.device_count() if kind in ("gpu", "cuda", "auto") and torch.cuda.is_available() else 0
    mps = 1 if kind in ("gpu", "mps", "auto") and not cuda and torch.backends.mps.is_available() else 0
    return cuda or mps


__all__ = ["gpu_count", "requested_devices"]
