"""Export a finalized network as the smallest model its sparsity allows: `model.safetensors` + `model.json`.

- Channel-pruned: removed channels are physically cut out (`sparsetrain.slim`, Torch-Pruning's dependency
  graph), so the exported model is a smaller dense network with the same outputs, and its parameters and
  FLOPs are the `params_nonzero` and `flops_sparse` of `results.json`.
- N:M 2:4: weights are stored dense with their zeros; `load_exported` converts each 2:4 Linear to a
  `torch.sparse` semi-structured tensor where the device runs one (`sparsetrain.semi_structured`), and
  `model.json` records the decision on the exporting machine per layer.
- Unstructured: weights are stored with their zeros; `model.json` reports what a sparse storage format
  would save. No speedup is claimed: dense kernels multiply the zeros.

`model.json` holds the `build_model` arguments and the channel removals, so `load_exported` rebuilds the
model from the two files alone: build the dense architecture, replay the removals, load the safetensors with
`strict=True`. Nothing is pickled, in either direction.

Command line (see `main`): `python -m sparsetrain.export RUN_DIR|CHECKPOINT [--out DIR] [--onnx]`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from sparsetrain.accounting import module_flops
from sparsetrain.export_report import speedup_note, storage_report, summary
from sparsetrain.masking import find_mask_buffers
from sparsetrain.semi_structured import Target, plan, to_semi_structured
from sparsetrain.slim import ChannelRemoval, remove_channels, slim

log = logging.getLogger("sparsetrain")

FORMAT, VERSION = "sparsetrain-export", 1
WEIGHTS, SPEC = "model.safetensors", "model.json"


def _count(model: nn.Module, example: torch.Tensor) -> tuple[int, int, int]:
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    return params, nonzero, module_flops(model, example)[0]


def _has_zero_row(model: nn.Module) -> bool:
    """Whether any Conv/Linear has an all-zero output filter (else no channel can be removable: skip tracing)."""
    for m in model.modules():
        w = getattr(m, "weight", None)
        layer = isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and isinstance(w, torch.Tensor)
        if layer and bool((w.detach().reshape(w.shape[0], -1).ne(0).sum(1) == 0).any()):
            return True
    return False


# ------------------------------------------------------------------------------------------------ export
def export_network(
    network: nn.Module,
    directory: str | Path,
    *,
    input_shape: tuple[int, ...],
    arch: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
    target: Target | None = None,
    onnx: bool = False,
    removed: list[ChannelRemoval] | None = None,
    dense_counts: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Write `model.safetensors` and `model.json` for a finalized network (the network itself is not changed).

    Args:
        network: The finalized network (no mask buffers, no parametrizations).
        directory: Where to write (created).
        input_shape: One input's shape, e.g. `(C, H, W)`: for tracing the channel coupling and counting FLOPs.
        arch: `build_model` arguments (`source`, `name`, `in_chans`, `num_classes`, `image_size`, `kwargs`);
            None for an architecture `build_model` cannot make (then `load_exported` needs `model=`).
        info: Extra entries for `model.json` (where it came from, the pruner's granularity, ...).
        target: Device/dtype for the reported 2:4 decisions (default: this machine's CPU, float32).
        onnx: Also write `model.onnx` when `onnx` and `onnxscript` are installed (skipped with a note otherwise).
        removed: Channels already removed from `network` during training (LAPP's slimming), recorded first so
            `load_exported` replays them onto the dense architecture.
        dense_counts: `(params, flops)` of the dense network when `removed` shrank it already.

    Returns:
        The content of `model.json`.

    Raises:
        ValueError: The network still carries masks or parametrizations (finalize it first).
    """
    if find_mask_buffers(network) or any(parametrize.is_parametrized(m) for m in network.modules()):
        raise ValueError("network still has mask buffers or parametrizations; finalize the pruner before exporting")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(network).cpu().eval()
    example = torch.zeros(1, *input_shape)
    params_dense, _, flops_dense = _count(net, example)
    if dense_counts is not None:
        params_dense, flops_dense = dense_counts
    removals, refused = list(removed or []), []
    if _has_zero_row(net):
        slimmed = slim(net, example)
        net, refused = slimmed.model.eval(), slimmed.refused
        removals += slimmed.removals
    params, nonzero, flops = _count(net, example)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": FORMAT, "version": str(VERSION)})
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
    if onnx:
        spec["onnx"] = export_onnx(net, example, directory / "model.onnx")
    (directory / SPEC).write_text(json.dumps(spec, indent=2))
    return spec


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """`model.onnx` (dynamic batch) when `onnx` and `onnxscript` are installed; otherwise a note, nothing written."""
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


# ------------------------------------------------------------------------------------------------ load
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


def load_exported(
    path: str | Path,
    *,
    model: nn.Module | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    semi_structured: bool = True,
) -> nn.Module:
    """Rebuild an exported model from `model.json` and `model.safetensors` alone (no pickle), in eval mode.

    Example:
        >>> import sparsetrain
        >>> model = sparsetrain.load_exported("outputs/<run>/export")
        >>> logits = model(images)

    Args:
        path: The export directory (or its `model.json` / `model.safetensors`).
        model: The dense architecture to load into, for a network `build_model` cannot make (`arch` null).
        device: Where to put the model.
        dtype: Floating-point dtype to cast to (e.g. `torch.float16` on a GPU); None keeps float32.
        semi_structured: Convert 2:4 Linear weights to semi-structured tensors where `device`/`dtype` run them.

    Raises:
        FileNotFoundError: A file is missing.
        ValueError: `model.json` is invalid, `model.safetensors` is corrupted, or the weights do not fit the
            architecture `model.json` describes.
    """
    directory, spec = read_spec(path)
    if model is None:
        arch = spec.get("arch")
        if not arch:
            raise ValueError(f"{directory / SPEC} has no builder (a custom architecture): pass model=<dense network>")
        from sparsetrain.models import build_from_arch

        model = build_from_arch(arch)
    example = torch.zeros(1, *spec["input_shape"])
    remove_channels(model, example, [ChannelRemoval.from_json(r) for r in spec.get("removed_channels", [])])
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{directory / WEIGHTS} is corrupted or not safetensors ({e}); re-export the model") from None
    _check_fits(model, state, directory)
    model.load_state_dict(state, strict=True)
    model.eval().to(device=device, dtype=dtype)
    if semi_structured:
        for name, decision in to_semi_structured(model).items():
            log.info("load_exported: %s %s", name, decision)
    return model


def state_mismatches(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """What keeps `model.load_state_dict(state, strict=True)` from working: missing, unexpected, mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k} is {tuple(v.shape)}, expected {expected[k]}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    return problems


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    problems = state_mismatches(model, state)
    if problems:
        raise ValueError(
            f"{directory / WEIGHTS} does not match the architecture {SPEC} describes "
            f"({len(problems)} problems: {'; '.join(problems[:3])})"
        )


# ------------------------------------------------------------------------------------------------ CLI
def export_run(
    source: str | Path, out: str | Path | None = None, config: str | Path | None = None, onnx: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Export a run directory (its `checkpoints/last.ckpt`) or a checkpoint, finalizing its masks.

    Returns:
        The export directory and the content of its `model.json`.
    """
    from sparsetrain.restore import finalized_network, load_run_config, run_dir_of

    source = Path(source)
    ckpt = source / "checkpoints" / "last.ckpt" if source.is_dir() else source
    run_dir = run_dir_of(source)
    cfg = load_run_config(run_dir, config)
    network, arch, key, removed = finalized_network(ckpt, cfg)
    pruner_cfg = cfg.get("pruner") or {}
    info = {
        "pruner": key,
        "granularity": pruner_cfg.get("granularity") if key else None,
        "checkpoint": str(ckpt),
    }
    out = Path(out) if out is not None else run_dir / "export"
    shape = (arch["in_chans"], arch["image_size"], arch["image_size"])
    dense = None
    if removed:  # the network was slimmed in training: count the dense architecture it came from
        from sparsetrain.models import build_from_arch

        base = build_from_arch(arch)
        dense = _count(base.eval(), torch.zeros(1, *shape))[0::2]
    return out, export_network(
        network,
        out,
        input_shape=shape,
        arch=arch,
        info=info,
        onnx=onnx,
        removed=[ChannelRemoval.from_json(r) for r in removed],
        dense_counts=dense,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparsetrain.export",
        description="Export a run (its checkpoints/last.ckpt) or a checkpoint as model.safetensors + model.json.",
    )
    parser.add_argument("source", help="a run directory, or a last.ckpt/best.ckpt inside one")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/export)")
    parser.add_argument("--config", help="the run's config (default: RUN_DIR/.hydra/config.yaml)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (needs the onnx package)")
    args = parser.parse_args(argv)
    try:
        out, spec = export_run(args.source, args.out, args.config, args.onnx)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"exported to {out}\n{summary(spec)}")
    return 0


__all__ = ["export_network", "export_run", "load_exported", "main", "read_spec", "storage_report"]

if __name__ == "__main__":
    sys.exit(main())
