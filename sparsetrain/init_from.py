"""Start a run from another run's weights (`init_from=`), before any pruner touches the network.

The papers prune a trained network: BiP's bi-level phase, one-shot magnitude and IMP all start from dense
weights. `init_from` loads them into the freshly built model before the pruner attaches (attaching
reparametrizes the weights, after which a plain state dict no longer fits), so `pruner.warmup=0` prunes the
loaded network from the first step. It also continues a finished sparse run: the source's zeros are loaded
as weights, and the new run's pruner decides its own masks from them.

Sources, read without unpickling anything:
- a checkpoint (`.ckpt`) of a run: its finalized network, exactly what that run would export
  (`sparsetrain.restore.finalized_network`);
- an export directory (`model.json` + `model.safetensors`), or a run directory holding one in `export/`;
- a run directory without an export: its `checkpoints/last.ckpt`.

A channel-slimmed source (LAPP, or an export with channels removed) no longer fits the dense architecture
and is refused in one line. A load is logged in one line: the path, what it was read as, the tensors loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from sparsetrain.checkpoint_files import init_source as source_of
from sparsetrain.export import load_exported, read_spec, state_mismatches
from sparsetrain.restore import finalized_network, load_run_config, run_dir_of

log = logging.getLogger("sparsetrain")


def source_kind(path: str | Path, source: Path) -> str:
    """What `init_from=path` was read as, in words: `source` is `source_of(path)`."""
    path = Path(path)
    if path.is_dir() and source != path:
        return f"run directory: its {source.relative_to(path)}" + ("/" if source.is_dir() else "")
    return "checkpoint, its finalized network" if source.suffix == ".ckpt" else "export"


def initial_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The plain (dense-architecture) state dict of the network `init_from=path` names.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: Not a run, export or checkpoint; or a channel-slimmed network.
    """
    source = source_of(path)
    if source.suffix == ".ckpt":
        network, _, _, removed = finalized_network(source, load_run_config(run_dir_of(source)))
    else:
        removed = read_spec(source)[1].get("removed_channels", [])
        network = None if removed else load_exported(source, semi_structured=False)
    if removed:
        raise ValueError(
            f"init_from={path} is a channel-slimmed network ({len(removed)} channel removals): its weights no "
            "longer fit the dense architecture; start from the run's dense parent instead"
        )
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def load_initial_weights(network: nn.Module, path: str | Path, model_name: str = "the model") -> None:
    """Load `init_from=path` into `network` (strict: every key, every shape), or fail in one line."""
    state = initial_state(path)
    problems = state_mismatches(network, state)
    if problems:
        raise ValueError(
            f"init_from={path} does not fit {model_name} ({len(problems)} problems: {'; '.join(problems[:3])}); "
            "use the same model and data (channels, classes) as the source run"
        )
    network.load_state_dict(state, strict=True)
    values = sum(t.numel() for t in state.values())
    log.info(
        "init_from: loaded %d tensors (%d values) from %s (%s)",
        len(state),
        values,
        path,
        source_kind(path, source_of(path)),
    )
