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

Command line (see `main`): `python -m sparsetrain.export RUN_DIR|CHECKPOINT [--out DIR] [--onnx] [--force]`.
An existing export in the target folder is never replaced by a different network without `--force`; one with
identical weights is left as it is. Torch is imported only once the source and the run's config are found, so a
wrong path is answered at once (`sparsetrain.checkpoint_files`).

Files are written under a temporary name and renamed into place, with the permissions the umask gives.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sparsetrain.checkpoint_files import LAST, RESULTS, resolve_checkpoint, run_config_path, run_dir_of
from sparsetrain.export_report import speedup_note, storage_report, summary

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sparsetrain.semi_structured import Target
    from sparsetrain.slim import ChannelRemoval

log = logging.getLogger("sparsetrain")

FORMAT, VERSION = "sparsetrain-export", 1
WEIGHTS, SPEC, ONNX = "model.safetensors", "model.json", "model.onnx"


def _count(model: nn.Module, example: torch.Tensor) -> tuple[int, int, int]:
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
        directory: Where to write (created). Files already there are replaced (`export_run`, the command
            line, compares with them first).
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
    net, state, spec = _prepare(
        network,
        input_shape=input_shape,
        arch=arch,
        info=info,
        target=target,
        removed=removed,
        dense_counts=dense_counts,
    )
    return _write(Path(directory), net, state, spec, onnx)


def _prepare(
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


def _write(
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
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from sparsetrain.semi_structured import to_semi_structured
    from sparsetrain.slim import ChannelRemoval, remove_channels

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
class ExportConflict(ValueError):
    """The target folder holds an export of a different network (`export_run` without `force`)."""

    def __init__(self, directory: Path, reason: str) -> None:
        self.directory, self.reason = directory, reason
        super().__init__(
            f"{directory} already holds an export of a different network ({reason}); force=True replaces it"
        )


class Exported(NamedTuple):
    """What `export_run` did."""

    directory: Path
    spec: dict[str, Any]  # the content of model.json (the existing one when `status` is "unchanged")
    status: str  # "written" (nothing was there), "replaced" (force) or "unchanged" (identical export there)
    checkpoint: Path  # the checkpoint the source resolved to
    global_step: int  # its optimizer step
    note: str | None  # e.g. a last.ckpt older than the run's end


def export_differs(directory: str | Path, state: dict[str, torch.Tensor], spec: dict[str, Any]) -> str | None:
    """None when `directory` holds this export already: the same architecture (`arch`, `input_shape`, removed
    channels) and identical tensors. Otherwise why not, in a few words."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        _, old = read_spec(directory)
    except (FileNotFoundError, ValueError) as e:
        return str(e).splitlines()[0]
    for key in ("arch", "input_shape", "removed_channels"):
        if old.get(key) != json.loads(json.dumps(spec.get(key))):
            return f"its {SPEC} has another {key}"
    try:
        stored = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as e:
        return f"its {WEIGHTS} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if stored.keys() != state.keys():
        return f"its {WEIGHTS} holds other tensors"
    differ = [
        k
        for k, v in state.items()
        if stored[k].shape != v.shape or stored[k].dtype != v.dtype or not torch.equal(stored[k], v)
    ]
    if differ:
        return f"{len(differ)} of {len(state)} tensors differ, first {differ[0]}"
    return None


def _stale_note(ckpt: Path, run_dir: Path, step: int) -> str | None:
    """A run's `last.ckpt` written before the run ended (its step is not the `steps` of `results.json`)."""
    results = run_dir / RESULTS
    if ckpt.name != LAST or ckpt.parent != run_dir / "checkpoints" or not results.is_file():
        return None
    try:
        steps = json.loads(results.read_text()).get("steps")
    except (ValueError, OSError, AttributeError):
        return None
    if not isinstance(steps, int) or steps == step:
        return None
    return f"{ckpt} is at step {step} but the run ended at step {steps} ({RESULTS}): not the run's final network"


def export_run(
    source: str | Path,
    out: str | Path | None = None,
    config: str | Path | None = None,
    onnx: bool = False,
    force: bool = False,
) -> Exported:
    """Export a run directory (its `checkpoints/last.ckpt`) or a checkpoint, finalizing its masks.

    The source and the run's config are checked before torch is imported. An export already in `out`
    (default `RUN_DIR/export`) is compared first: identical weights and architecture leave it as it is
    (`status` "unchanged"); a different network is refused unless `force`.

    Raises:
        FileNotFoundError: The source, its `last.ckpt` or the run's config does not exist.
        ValueError: The source is not a checkpoint (`sparsetrain.checkpoint_files.resolve_checkpoint`), or it
            does not fit its config.
        ExportConflict: `out` holds an export of a different network and `force` is False.
    """
    ckpt = resolve_checkpoint(source, what="")
    run_dir = run_dir_of(ckpt)
    config_path = run_config_path(run_dir, config)
    out = Path(out) if out is not None else run_dir / "export"
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: the export is written into a directory")

    import torch
    from omegaconf import OmegaConf

    from sparsetrain.restore import restore_checkpoint
    from sparsetrain.slim import ChannelRemoval

    cfg = OmegaConf.load(config_path)
    restored = restore_checkpoint(ckpt, cfg)
    cfg_pruner = cfg.get("pruner") or {}
    arch, key = restored.arch, restored.key
    info = {
        "pruner": key,
        "granularity": cfg_pruner.get("granularity") if key else None,
        "checkpoint": str(ckpt),
    }
    shape = (arch["in_chans"], arch["image_size"], arch["image_size"])
    dense = None
    if restored.removed:  # the network was slimmed in training: count the dense architecture it came from
        from sparsetrain.models import build_from_arch

        base = build_from_arch(arch)
        dense = _count(base.eval(), torch.zeros(1, *shape))[0::2]
    net, state, spec = _prepare(
        restored.network,
        input_shape=shape,
        arch=arch,
        info=info,
        target=None,
        removed=[ChannelRemoval.from_json(r) for r in restored.removed],
        dense_counts=dense,
    )
    note = _stale_note(ckpt, run_dir, restored.global_step)
    status = "written"
    if (out / WEIGHTS).exists() or (out / SPEC).exists():
        reason = export_differs(out, state, spec)
        if reason is None and not force:
            return Exported(out, read_spec(out)[1], "unchanged", ckpt, restored.global_step, note)
        if reason is not None and not force:
            raise ExportConflict(out, f"{reason}; {note}" if note else reason)
        status = "replaced"
    spec = _write(out, net, state, spec, onnx)
    return Exported(out, spec, status, ckpt, restored.global_step, note)


def main(argv: list[str] | None = None) -> int:
    """`python -m sparsetrain.export`: 0 when the export is written or already there, 2 with one `error:` line."""
    parser = argparse.ArgumentParser(
        prog="python -m sparsetrain.export",
        description="Export a run (its checkpoints/last.ckpt) or a checkpoint as model.safetensors + model.json.",
    )
    parser.add_argument("source", help="a run directory, or a checkpoint (.ckpt) of a run")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/export)")
    parser.add_argument("--config", help="the run's config (default: RUN_DIR/.hydra/config.yaml)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (needs the onnx package)")
    parser.add_argument(
        "--force", action="store_true", help="replace an export of a different network already in the output directory"
    )
    args = parser.parse_args(argv)
    try:
        done = export_run(args.source, args.out, args.config, args.onnx, force=args.force)
    except ExportConflict as e:
        print(
            f"error: {e.directory} already holds an export of a different network ({e.reason}); "
            "pass --force to replace it",
            file=sys.stderr,
        )
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if done.note:
        print(f"note: {done.note}", file=sys.stderr)
    source = f"{done.checkpoint} (step {done.global_step})"
    if done.status == "unchanged":
        print(f"{done.directory} already holds this export of {source}: identical weights, left as it is")
        return 0
    verb = "replaced the export in" if done.status == "replaced" else "exported to"
    print(f"{verb} {done.directory} from {source}\n{summary(done.spec)}")
    return 0


__all__ = [
    "ExportConflict",
    "Exported",
    "export_differs",
    "export_network",
    "export_run",
    "load_exported",
    "main",
    "read_spec",
    "storage_report",
]

if __name__ == "__main__":
    sys.exit(main())
