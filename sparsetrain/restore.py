"""A run's finalized network from its config and a Lightning checkpoint, without unpickling anything.

A checkpoint written during training holds the masked network (`*_mask` buffers, PDP's
`parametrizations.*.original` and soft-mask buffers) and the pruner's state under
`callbacks["SparsityCallback[<key>]"]`. Folding those by hand would re-implement each method's finalize (PDP
hardens its soft masks, folds them into the kept weights and removes its parametrizations), so this module
replays the real one: the pruner is rebuilt from the run's config, attached to a freshly built network (which
recreates exactly the buffers and parametrizations the checkpoint holds), loaded with `strict=True`, given its
saved state, then `on_fit_end()` and `finalize()` run as at the end of `trainer.fit`. Exporting `last.ckpt` of
a finished run therefore gives the network the run itself exported.

The checkpoint is read with `torch.load(weights_only=True)` only: a file that needs arbitrary unpickling is
refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sparsetrain.callback import STATE_PREFIX, pruner_in_checkpoint
from sparsetrain.models import build_from_arch

CONFIG = Path(".hydra") / "config.yaml"


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run directory or of a checkpoint in its `checkpoints/` folder."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def load_run_config(run_dir: str | Path, config: str | Path | None = None) -> DictConfig:
    """The composed config of a run: `config`, else `RUN_DIR/.hydra/config.yaml` (written by Hydra)."""
    path = Path(config) if config is not None else Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the run's config is needed to rebuild its model (Hydra writes .hydra/config.yaml "
            "in every run directory; for a run started outside Hydra pass --config)"
        )
    return OmegaConf.load(path)


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
    """A Lightning checkpoint, weights-only (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
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


def finalized_network(
    ckpt_path: str | Path, cfg: DictConfig
) -> tuple[nn.Module, dict[str, Any], str | None, list[dict[str, Any]]]:
    """The finalized network a checkpoint holds, its `build_model` arguments, its pruner key (None: dense) and
    the channel removals training applied already (LAPP's slimming; `ChannelRemoval` records, else empty).

    Raises:
        ValueError: The checkpoint needs unpickling, was written by another pruner than the config names, or
            does not fit the architecture.
    """
    ckpt = load_checkpoint(ckpt_path)
    arch = run_arch(cfg)
    network = build_from_arch(arch)
    key = pruner_in_checkpoint(ckpt)
    pruner = None
    if key is not None:
        if not cfg.get("pruner"):
            raise ValueError(f"{ckpt_path} was written with +pruner={key}, but the run's config has no pruner")
        pruner = instantiate(cfg.pruner)
        if pruner.key != key:
            raise ValueError(f"{ckpt_path} was written with +pruner={key}, but the run's config has {pruner.key}")
        example = torch.zeros(1, arch["in_chans"], arch["image_size"], arch["image_size"])
        pruner.attach(network, total_steps(cfg, ckpt), example)
    pruner_state = ckpt["callbacks"][f"{STATE_PREFIX}{key}]"]["pruner"] if pruner is not None else None
    if pruner is not None:
        pruner.before_model_load(pruner_state)  # a method that changed the architecture rebuilds it first
    state = network_state(ckpt, network)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{ckpt_path} does not fit the model its run config builds: {str(e)[:300]}") from None
    if pruner is not None:
        pruner.load_state_dict(pruner_state)
        pruner.on_fit_end()
        pruner.finalize()
    removed = pruner.report().get("removed_channels", []) if pruner is not None else []
    return network.eval(), arch, key, removed


__all__ = ["finalized_network", "load_checkpoint", "load_run_config", "run_arch", "run_dir_of", "total_steps"]
