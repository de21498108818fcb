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

This module is the entry point (`export_network`, `export_run`, the command line); the jobs behind it have
their own modules: `export_prepare` (what is stored), `export_files` (file names, the format check, atomic
writes), `export_load` (`load_exported`) and `export_report` (storage bytes, the speedup note).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sparsetrain.checkpoint_files import LAST, RESULTS, resolve_checkpoint, run_config_path, run_dir_of
from sparsetrain.export_files import FORMAT, ONNX, SPEC, VERSION, WEIGHTS, export_onnx, read_spec, write_export
from sparsetrain.export_load import load_exported, state_mismatches
from sparsetrain.export_prepare import count, prepare_export
from sparsetrain.export_report import storage_report, summary

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sparsetrain.semi_structured import Target
    from sparsetrain.slim import ChannelRemoval


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
    net, state, spec = prepare_export(
        network,
        input_shape=input_shape,
        arch=arch,
        info=info,
        target=target,
        removed=removed,
        dense_counts=dense_counts,
    )
    return write_export(Path(directory), net, state, spec, onnx)


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
        dense = count(base.eval(), torch.zeros(1, *shape))[0::2]
    net, state, spec = prepare_export(
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
    spec = write_export(out, net, state, spec, onnx)
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
    "FORMAT",
    "ONNX",
    "SPEC",
    "VERSION",
    "WEIGHTS",
    "ExportConflict",
    "Exported",
    "export_differs",
    "export_network",
    "export_onnx",
    "export_run",
    "load_exported",
    "main",
    "read_spec",
    "state_mismatches",
    "storage_report",
]

if __name__ == "__main__":
    sys.exit(main())
