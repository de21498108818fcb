"""A run's finalized network from its config and a Lightning checkpoint, without unpickling anything.

A checkpoint written during training holds the masked network (`*_mask` buffers, PDP's
`parametrizations.*.original` and soft-mask buffers) and the pruner's state under
`callbacks["SparsityCallback[<key>]"]`. Folding those by hand would re-implement each method's finalize (PDP
hardens its soft masks, folds them into the kept weights and removes its parametrizations), so this module replays
the real one: the pruner is rebuilt from the run's config, attached to a freshly built network (which recreates
exactly the buffers and parametrizations the checkpoint holds), and the pruner's `SparsityCallback` loads it along
the path a resumed fit takes (`SparsityCallback.restore`: the pruner's state, the weights with `strict=True`, the
recorded settings checked) and ends it as `trainer.fit` does (`SparsityCallback.end_fit`). Exporting a checkpoint
of a run's last step therefore gives, bit for bit, the network the run itself exported (checked for unstructured
runs and for GMP, PDP, LAPP and BiP channel runs); a `last.ckpt` written before the run's last step holds an
earlier network (`sparsetrain.export` says so when its step is not the `steps` of `results.json`).

The checkpoint is read with `torch.load(weights_only=True)` only: a file that needs arbitrary unpickling is
refused.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sparsetrain.callback import SparsityCallback, pruner_in_checkpoint
from sparsetrain.checkpoint_files import RUN_CONFIG as CONFIG
from sparsetrain.checkpoint_files import resolve_checkpoint, run_config_path, run_dir_of
from sparsetrain.models import build_from_arch


def load_run_config(run_dir: str | Path, config: str | Path | None = None) -> DictConfig:
    """The composed config of a run: `config`, else `RUN_DIR/.hydra/config.yaml` (written by Hydra)."""
    return OmegaConf.load(run_config_path(run_dir, config))


def run_arch(cfg: DictConfig, datamodule: Any = None) -> dict[str, Any]:
    """`build_model` arguments of a run; the data shape comes from its data module (constructed, never loaded)."""
    dm = datamodule if datamodule is not None else instantiate(cfg.data, seed=cfg.get("seed", 0))
    kwargs = cfg.model.get("kwargs")
    kwargs = OmegaConf.to_container(kwargs, resolve=True) if kwargs is not None else {}
    return {
        "source": str(cfg.model.source),
        "name": str(cfg.model.name),
        "in_chans": int(dm.in_chans),
        "num_classes": int(dm.num_classes),
        "image_size": int(dm.image_size),
        "kwargs": kwargs,
    }


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, weights-only (no arbitrary unpickling).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: It is another kind of file (`sparsetrain.checkpoint_files.describe`: an export's weights, a
            `results.json`, ...), holds pickled objects, or holds no `state_dict`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    resolve_checkpoint(path, what="")  # a wrong kind of file in one line, not torch's unpickling message
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{path} cannot be read weights-only (it holds pickled objects; refused): {first}") from None
    except RuntimeError as e:
        raise ValueError(f"{path} is not a readable checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def network_state(ckpt: dict[str, Any], network: nn.Module) -> dict[str, torch.Tensor]:
    """The network's entries of a LightningModule state_dict (the prefix of the module holding it removed)."""
    names = set(network.state_dict())
    state = ckpt["state_dict"]
    for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
        inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if names & set(inner):
            return inner
    raise ValueError("the checkpoint's state_dict holds no entry of the model its config builds")


def total_steps(cfg: DictConfig, ckpt: dict[str, Any]) -> int:
    """The run's optimizer-step budget as the pruner was attached with (best estimate from config + checkpoint).

    Finalizing does not depend on it for any built-in method; it only has to build the same schedule objects.
    """
    trainer = cfg.get("trainer") or {}
    if (trainer.get("max_steps") or -1) > 0:
        return int(trainer.max_steps)
    step, epoch = int(ckpt.get("global_step", 0)), int(ckpt.get("epoch", 0))
    if trainer.get("max_epochs") and step > 0:
        return max(step, step // (epoch + 1) * int(trainer.max_epochs))
    return max(1, step)


@dataclass
class Restored:
    """A checkpoint's finalized network and where it came from (`restore_checkpoint`)."""

    network: nn.Module
    arch: dict[str, Any]  # `build_model` arguments
    key: str | None  # the pruner's registry key; None: a dense run
    removed: list[dict[str, Any]] = field(default_factory=list)  # channel removals training applied (LAPP)
    global_step: int = 0  # optimizer steps the checkpoint had taken
    epoch: int = 0


def restore_checkpoint(ckpt_path: str | Path, cfg: DictConfig) -> Restored:
    """The finalized network a checkpoint holds, as the run's own end of fit would have finalized it.

    Raises:
        ValueError: The checkpoint needs unpickling, was written by another pruner than the config names, or
            does not fit the architecture.
    """
    ckpt = load_checkpoint(ckpt_path)
    arch = run_arch(cfg)
    network = build_from_arch(arch)
    key = pruner_in_checkpoint(ckpt)
    host = None
    if key is not None:
        if not cfg.get("pruner"):
            raise ValueError(f"{ckpt_path} was written with +pruner={key}, but the run's config has no pruner")
        pruner = instantiate(cfg.pruner)
        if pruner.key != key:
            raise ValueError(f"{ckpt_path} was written with +pruner={key}, but the run's config has {pruner.key}")
        host = SparsityCallback(pruner, log_layers=False)
        example = torch.zeros(1, arch["in_chans"], arch["image_size"], arch["image_size"])
        host.attach(network, total_steps(cfg, ckpt), example)

    def load_weights() -> None:
        try:
            network.load_state_dict(network_state(ckpt, network), strict=True)
        except RuntimeError as e:
            raise ValueError(f"{ckpt_path} does not fit the model its run config builds: {str(e)[:300]}") from None

    if host is None:
        load_weights()
        removed = []
    else:
        host.restore(ckpt, load_weights)  # the callback's own resume path, then its own end of fit
        host.end_fit()
        removed = [r.to_json() for r in host.pruner.removed_channels()]
    return Restored(
        network.eval(), arch, key, list(removed), int(ckpt.get("global_step", 0)), int(ckpt.get("epoch", 0))
    )


def finalized_network(
    ckpt_path: str | Path, cfg: DictConfig
) -> tuple[nn.Module, dict[str, Any], str | None, list[dict[str, Any]]]:
    """The finalized network a checkpoint holds, its `build_model` arguments, its pruner key (None: dense) and
    the channel removals training applied already (LAPP's slimming; `ChannelRemoval` records, else empty).

    Raises:
        ValueError: The checkpoint needs unpickling, was written by another pruner than the config names, or
            does not fit the architecture.
    """
    r = restore_checkpoint(ckpt_path, cfg)
    return r.network, r.arch, r.key, r.removed


__all__ = [
    "CONFIG",
    "Restored",
    "finalized_network",
    "load_checkpoint",
    "load_run_config",
    "restore_checkpoint",
    "run_arch",
    "run_dir_of",
    "total_steps",
]
