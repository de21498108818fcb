"""The export's files on disk: their names, `model.json`'s format check, and writes that never leave half a file.

Kept apart from building and loading so the command line, `load_exported` and `init_from` agree on one format,
and so reading a `model.json` imports no torch.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger("sparsetrain")

FORMAT, VERSION = "sparsetrain-export", 1
WEIGHTS, SPEC, ONNX = "model.safetensors", "model.json", "model.onnx"


def write_export(
    directory: Path, net: nn.Module, state: dict[str, torch.Tensor], spec: dict[str, Any], onnx: bool
) -> dict[str, Any]:
    """Write the two files (and `model.onnx`); a `model.onnx` of an earlier export is removed when none is
    written, so it cannot describe another network than the one beside it."""
    import torch
    from safetensors.torch import save

    directory.mkdir(parents=True, exist_ok=True)
    _write_bytes(directory / WEIGHTS, save(state, metadata={"format": FORMAT, "version": str(VERSION)}))
    if onnx:
        spec["onnx"] = export_onnx(net, torch.zeros(1, *spec["input_shape"]), directory / ONNX)
    if spec.get("onnx") != ONNX and (directory / ONNX).is_file():
        (directory / ONNX).unlink()
        log.info("export: removed %s (it belonged to the export this one replaces)", directory / ONNX)
    _write_bytes(directory / SPEC, json.dumps(spec, indent=2).encode())
    return spec


def _write_bytes(path: Path, data: bytes) -> None:
    """Write under a temporary name, then rename into place: the permissions follow the umask (like any file
    `open` creates), and a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """`model.onnx` (dynamic batch) when `onnx` and `onnxscript` are installed; otherwise a note, nothing written."""
    import torch

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        return f"skipped: {' and '.join(missing)} not installed (pip install onnx onnxscript)"
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}},
        )
    except Exception as e:  # the exporter's many failure modes (unsupported ops, version skew) end in one note
        return f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    return path.name


def read_spec(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The export directory and its `model.json` (`path`: the directory or either of its two files)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    spec_path = directory / SPEC
    if not spec_path.is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory} is not an export: it needs {SPEC} and {WEIGHTS}")
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{spec_path} is not valid JSON ({e}); re-export the model") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else None
        raise ValueError(f"{spec_path} is not a sparsetrain export (format {found!r})")
    if spec.get("version") != VERSION:
        raise ValueError(f"{spec_path} has export version {spec.get('version')!r}; this sparsetrain reads {VERSION}")
    return directory, spec


__all__ = ["FORMAT", "ONNX", "SPEC", "VERSION", "WEIGHTS", "export_onnx", "read_spec", "write_export"]
